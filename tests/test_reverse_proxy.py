"""The reverse proxy of deploy/nginx, run for real: Debian's nginx on loopback, with a throwaway
self-signed certificate, in front of two `serve` processes on one PostgreSQL database, as
deploy/compose.yaml and the systemd units run them. Over https through it: a signed webhook is
taken and captured, a merchant signs in with `klarna-capture admin-link` and gets a `Secure`
cookie, links and redirects name the public https URL, the limits refuse what the docs say they
refuse, and both serve processes get requests.

nginx connects to serve from 127.0.0.2, and serve trusts that address only
(KLARNA_CAPTURE_TRUSTED_PROXIES), as a deployment trusts its proxy's address and nobody else."""

import concurrent.futures
import datetime
import ipaddress
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import anyio.from_thread
import httpx2
import msgspec
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from plugin.sandbox.klarna import KlarnaSandbox
from plugin.webhooks import MAX_BODY_BYTES
from tests.helpers import (
    TOMATOES,
    Server,
    Storefront,
    cli_shop,
    free_port,
    run_cli,
    shipment,
    wait_until,
)
from tests.postgres_cluster import fresh_database
from tests.test_deploy import exec_form, final_stage
from tests.web.support import COOKIE, Browser, csrf_token, forms

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "deploy" / "nginx" / "klarna-capture.conf.template"
NGINX = Path("/usr/sbin/nginx")
NAME = "localhost"  # the certificate's and the server_name: the client sends it as SNI and Host
PROXY_ADDRESS = "127.0.0.2"  # where nginx connects to serve from
HEADER_LINE_LIMIT = 8 * 1024  # large_client_header_buffers 4 8k (docs/operations/deployment.md)
HEAD_LIMIT = 4 * HEADER_LINE_LIMIT

# The test's own nginx main configuration around the deployment's http-context file: its files in
# one folder, and the address nginx connects to serve from.
MAIN_CONF = """\
daemon off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log notice;
events {{
    worker_connections 256;
}}
http {{
    client_body_temp_path {folder}/client_body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    proxy_bind {proxy_address};
    include {folder}/klarna-capture.conf;
}}
"""


def render(template: str, values: dict[str, str]) -> str:
    """The template with its ${NAME}s filled in, as envsubst does (every one must be given)."""
    named = set(re.findall(r"\$\{(\w+)\}", template))
    assert named == set(values), f"the template names {sorted(named)}"
    for name, value in values.items():
        template = template.replace("${" + name + "}", value)
    return template


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for NAME (and 127.0.0.1), valid for a day, with its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(NAME), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        # Its own trust anchor: the extensions a strict verifier asks of one.
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "certificate.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


@dataclass
class Deployment:
    public_url: str  # https, through nginx
    http_url: str  # nginx's plain http port
    env: dict[str, str]  # what the serve processes and the operator's CLI run with
    shop: dict[str, str]  # a Standard Webhooks shop: shop_id, webhook_path, webhook_secret
    serves: list[Server]
    access_log: Path
    client: httpx2.Client  # trusts the throwaway certificate, follows no redirect

    def upstreams(self) -> list[str]:
        """The serve address of each request in nginx's access log, in order."""
        return re.findall(r" upstream=(\S+) ", self.access_log.read_text())


@pytest.fixture(scope="module")
def deployment(postgres_url: str, klarna_server: tuple[KlarnaSandbox, str]) -> Iterator[Deployment]:
    if not NGINX.exists():
        pytest.fail(
            f"nginx is not installed ({NGINX}): scripts/test installs Debian's nginx",
            pytrace=False,
        )
    # nginx's workers drop root for nobody: the folder must let them in (pytest's does not).
    folder = Path(tempfile.mkdtemp(prefix="klarna-capture-nginx-"))
    folder.chmod(0o755)
    https_port, http_port = free_port(), free_port()
    public_url = f"https://{NAME}:{https_port}"
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(fresh_database(postgres_url)) as database_url,
    ):
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KLARNA_CAPTURE_")},
            "KLARNA_CAPTURE_DATA_DIR": str(folder / "data"),
            "KLARNA_CAPTURE_DATABASE_URL": database_url,
            "KLARNA_CAPTURE_SECRET_KEY": "reverse-proxy-test-secret-key-0123456789",
            "KLARNA_CAPTURE_KLARNA_URL": klarna_server[1],
            "KLARNA_CAPTURE_PUBLIC_URL": public_url,
            "KLARNA_CAPTURE_TRUSTED_PROXIES": PROXY_ADDRESS,
            "KLARNA_CAPTURE_WORKERS": "1",
            "KLARNA_CAPTURE_METRICS_ADDRESS": "off",
            "KLARNA_CAPTURE_LOG_LEVEL": "WARNING",
        }
        serves: list[Server] = []
        nginx: subprocess.Popen[bytes] | None = None
        try:
            # Started side by side, each waiting for its own /readyz; one that started is
            # stopped at the end even when the other did not.
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                starting = [pool.submit(Server, env) for _ in range(2)]
            serves += [future.result() for future in starting if future.exception() is None]
            for future in starting:
                future.result()
            certificate, key = self_signed(folder)
            access_log = folder / "access.log"
            site = render(
                TEMPLATE.read_text(),
                {
                    "PROXY_SERVER_NAME": NAME,
                    "PROXY_PUBLIC_URL": public_url,
                    "PROXY_HTTPS_LISTEN": f"127.0.0.1:{https_port}",
                    "PROXY_HTTP_LISTEN": f"127.0.0.1:{http_port}",
                    "PROXY_SERVE_1": f"127.0.0.1:{serves[0].port}",
                    "PROXY_SERVE_2": f"127.0.0.1:{serves[1].port}",
                    "PROXY_CERTIFICATE": str(certificate),
                    "PROXY_CERTIFICATE_KEY": str(key),
                    "PROXY_ACCESS_LOG": str(access_log),
                },
            )
            (folder / "klarna-capture.conf").write_text(site)
            (folder / "nginx.conf").write_text(
                MAIN_CONF.format(folder=folder, proxy_address=PROXY_ADDRESS)
            )
            with (folder / "nginx.stderr").open("wb") as stderr:
                nginx = subprocess.Popen(
                    [str(NGINX), "-p", str(folder), "-c", str(folder / "nginx.conf")],
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                )
            context = ssl.create_default_context(cafile=str(certificate))
            with httpx2.Client(verify=context, timeout=30, follow_redirects=False) as client:

                def up() -> bool:
                    assert nginx is not None
                    if nginx.poll() is not None:
                        pytest.fail((folder / "nginx.stderr").read_text(), pytrace=False)
                    try:
                        return client.get(f"{public_url}/healthz").status_code == 200
                    except httpx2.TransportError:
                        return False

                wait_until(up, timeout=30, what="for nginx to answer")
                yield Deployment(
                    public_url,
                    f"http://{NAME}:{http_port}",
                    env,
                    cli_shop(env),
                    serves,
                    access_log,
                    client,
                )
        finally:
            if nginx is not None:
                nginx.send_signal(signal.SIGQUIT)  # graceful: lets requests finish
                nginx.wait(timeout=30)
            for serve in serves:
                serve.stop()
            shutil.rmtree(folder, ignore_errors=True)


def test_a_signed_webhook_through_the_proxy_is_taken_once_and_captured(
    deployment: Deployment, klarna_sandbox: KlarnaSandbox
) -> None:
    shop = deployment.shop
    order = klarna_sandbox.create_order(order_amount=6000, order_lines=[TOMATOES])
    storefront = Storefront(deployment.public_url, shop["shop_id"], shop["webhook_secret"])
    body = msgspec.json.encode(shipment(order.order_id))
    headers = storefront.signed(body)
    answers = [
        deployment.client.post(storefront.url, content=body, headers=headers) for _ in range(2)
    ]
    assert [a.status_code for a in answers] == [200, 200]
    assert [msgspec.json.decode(a.content)["status"] for a in answers] == [
        "accepted",
        "duplicate",
    ]
    wait_until(lambda: len(order.captures) > 0, timeout=30, what="for the capture")
    assert [capture.captured_amount for capture in order.captures] == [6000]


def test_sign_in_through_the_proxy_is_a_secure_session_on_the_public_https_url(
    deployment: Deployment,
) -> None:
    public_url = deployment.public_url
    shop_id = deployment.shop["shop_id"]
    link = run_cli(deployment.env, "admin-link", shop_id).stdout.strip()
    assert link.startswith(f"{public_url}/admin/login?token=")
    # The link opens a page whose Sign in button posts it back, from the public origin.
    opened = deployment.client.get(link)
    assert opened.status_code == 200, opened.text
    answer = deployment.client.post(
        f"{public_url}/admin/login",
        data={"token": link.partition("?token=")[2], "csrf_token": csrf_token(opened.text)},
        headers={"origin": public_url},
    )
    assert answer.status_code == 303, answer.text
    assert urljoin(link, answer.headers["location"]) == f"{public_url}/admin/{shop_id}/settings"
    cookie = answer.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"secure", "httponly"} <= attributes
    # The browser sends it back over https only; here, by hand.
    match = re.match(rf"{COOKIE}=([^;]+)", cookie)
    assert match
    browser = Browser(deployment.client, shop_id, match.group(1))  # type: ignore[arg-type]
    page = browser.get(f"{public_url}/admin/{shop_id}/settings")
    assert page.status_code == 200
    assert f"{public_url}/webhooks/standard/{shop_id}" in page.text
    # A form posted from the public origin passes the same-origin check behind the proxy.
    path = f"/admin/{shop_id}/settings"
    fields = forms(page.text)[path]
    saved = browser.post(
        f"{public_url}{path}", fields, token=fields.pop("csrf_token"), origin=public_url
    )
    assert saved.status_code == 303, saved.text
    assert urljoin(link, saved.headers["location"]) == f"{public_url}{path}?notice=saved"


def test_what_serve_builds_from_a_request_names_the_public_https_url(
    deployment: Deployment,
) -> None:
    # Starlette's redirect of a trailing slash is built from the request: https, since nginx
    # says so from the trusted address, with the name and port the client used.
    redirects = len(re.findall(r" 307 ", deployment.access_log.read_text()))
    answer = deployment.client.get(f"{deployment.public_url}/healthz/")
    assert answer.status_code == 307
    assert answer.headers["location"] == f"{deployment.public_url}/healthz"
    # nginx logs a request after answering it: the count below starts once this one is in.
    wait_until(
        lambda: len(re.findall(r" 307 ", deployment.access_log.read_text())) > redirects,
        timeout=30,
        what="for nginx to log the redirect",
    )
    # A request for another name never reaches serve: only the public one does.
    before = len(deployment.upstreams())
    other = deployment.client.get(
        f"{deployment.public_url}/healthz", headers={"host": "other.example"}
    )
    assert other.status_code == 421
    wait_until(
        lambda: len(re.findall(r" 421 ", deployment.access_log.read_text())) > 0,
        timeout=30,
        what="for nginx to log the refusal",
    )
    assert deployment.upstreams()[before:] == ["-"]
    # Plain http goes to the public https URL, path and query kept.
    answer = deployment.client.get(f"{deployment.http_url}/admin/login?token=x")
    assert answer.status_code == 301
    assert answer.headers["location"] == f"{deployment.public_url}/admin/login?token=x"


def from_nginx(answer: httpx2.Response) -> bool:
    """nginx's own error pages are HTML; everything serve answers on these paths is JSON."""
    return answer.headers.get("content-type", "").startswith("text/html")


def test_the_proxy_refuses_a_body_over_1_mib_with_413(deployment: Deployment) -> None:
    url = f"{deployment.public_url}/webhooks/standard/shop_000000000000"
    at_limit = deployment.client.post(url, content=b" " * MAX_BODY_BYTES)
    assert not from_nginx(at_limit)  # serve's answer (no such shop), the body let through
    over = deployment.client.post(url, content=b" " * (MAX_BODY_BYTES + 1))
    assert over.status_code == 413
    assert from_nginx(over)


def test_the_proxy_refuses_a_header_line_over_8_kib_and_a_head_over_32_kib(
    deployment: Deployment,
) -> None:
    url = f"{deployment.public_url}/healthz"
    below = "a" * (HEADER_LINE_LIMIT - 200)
    assert deployment.client.get(url, headers={"x-padding": below}).status_code == 200
    long_line = deployment.client.get(url, headers={"x-padding": "a" * HEADER_LINE_LIMIT})
    assert long_line.status_code == 400
    assert from_nginx(long_line)
    # Four lines just under the limit fill the four buffers: the whole head is too much.
    many = {f"x-padding-{n}": below for n in range(HEAD_LIMIT // len(below) + 1)}
    assert len("".join(many.values())) > HEAD_LIMIT
    too_many = deployment.client.get(url, headers=many)
    assert too_many.status_code == 400
    assert from_nginx(too_many)
    fewer = dict(list(many.items())[:2])
    assert deployment.client.get(url, headers=fewer).status_code == 200


def test_both_serve_processes_get_requests_and_no_token_is_logged(deployment: Deployment) -> None:
    before = len(deployment.upstreams())
    for _ in range(4):
        assert deployment.client.get(f"{deployment.public_url}/readyz").status_code == 200
    secret = "not-a-real-token-but-logged-if-queries-were"
    assert deployment.client.get(f"{deployment.public_url}/admin/login?token={secret}").is_error
    wait_until(
        lambda: len(deployment.upstreams()) >= before + 5,
        timeout=30,
        what="for nginx to log the requests",
    )
    expected = {f"127.0.0.1:{serve.port}" for serve in deployment.serves}
    assert set(deployment.upstreams()[before:]) == expected
    # The access log has each request's path, never its query: no sign-in token in it.
    logged = deployment.access_log.read_text()
    assert "/admin/login " in logged
    assert secret not in logged


def test_the_image_s_healthcheck_passes_on_a_ready_serve_only(deployment: Deployment) -> None:
    [healthcheck] = [a for name, a in final_stage() if name == "HEALTHCHECK"]
    probe = exec_form(healthcheck.partition(" CMD ")[2])
    assert probe[0] == "python"

    def run(port: int) -> int:
        code = probe[-1].replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        command = [sys.executable, *probe[1:-1], code]
        return subprocess.run(command, capture_output=True, timeout=30).returncode

    assert run(deployment.serves[0].port) == 0
    assert run(free_port()) != 0  # nothing listens there

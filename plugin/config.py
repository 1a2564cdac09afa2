"""Settings from the environment, typed and validated at start-up with one-line errors.

Every variable is `KLARNA_CAPTURE_<NAME>`; an empty value counts as unset. Each storefront app's
settings are a group of their own (`settings.shopify`, `settings.bigcommerce`). A secret is held
as a `Secret` (or `Secrets`, `SecretKeys`, a `DatabaseUrl` for its password): used as the string
it is, never shown by repr, so that neither Settings nor a log line or traceback that prints them
can leak one.
"""

import difflib
import ipaddress
import os
import re
import stat
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal, cast
from urllib.parse import parse_qs, unquote, urlsplit

from plugin import emails
from plugin.errors import PluginError
from plugin.vault import MIN_KEY_LENGTH, generate_key

SHOPIFY_API_VERSION = "2026-07"  # the manifest's [webhooks] api_version; a test keeps them equal
SHOPIFY_ADMIN_URL = "https://{shop}"
BIGCOMMERCE_API_URL = "https://api.bigcommerce.com"
BIGCOMMERCE_LOGIN_URL = "https://login.bigcommerce.com"
METRICS_ADDRESS = ("127.0.0.1", 9464)
# The reverse proxies whose X-Forwarded-Proto and X-Forwarded-For `serve` believes: one on the
# same machine, by default.
TRUSTED_PROXIES = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128"))
DEFAULT_PUBLIC_URL = "http://127.0.0.1:8000"  # where `serve` listens by default
# Where `serve` writes the URL it listens on, in the data directory, for the other commands of
# a deployment without KLARNA_CAPTURE_PUBLIC_URL (admin-link, shop add) to print.
SERVE_URL_FILE_NAME = "serve-url"
# KLARNA_CAPTURE_* variables that are not the service's settings: the test suite's server.
OTHER_VARIABLES = ("TEST_POSTGRES_URL",)

PREFIX = "KLARNA_CAPTURE_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
KEY_FILE_NAME = "secret-key"
_SQLITE = "sqlite:///"
_POSTGRES_SCHEMES = ("postgresql", "postgres")
# A job's deadline: 5 minutes by default; at least a minute, twice a Klarna call's retry budget.
JOB_DEADLINE_SECONDS = 300
MIN_JOB_DEADLINE_SECONDS = 60
# How long a call waits for the database before it counts as away (a 503, a worker waiting): a
# storefront gives up on an answer after about 5 s (Shopify), so waiting longer gains nothing.
DATABASE_TIMEOUT_SECONDS = 5
# A worker's heartbeat: every 2 s, so that a dead one's jobs wait at most 6 s (three beats).
HEARTBEAT_SECONDS = 2
# How often the orders whose Klarna authorization runs out soon are looked for (the keep-alive).
KEEP_ALIVE_INTERVAL_SECONDS = 3600
# Retention (plugin/retention.py; docs/operations/retention.md says why each figure): days
# webhook bodies are kept (longer while their shipment is not settled), days a delivery id
# outlives its body (at least the longest redelivery schedule of any storefront, Standard
# Webhooks' example: 3.15 days), days finished jobs and sent callbacks are kept, days the capture
# ledger and audit trail are kept.
RETAIN_BODIES_DAYS = 3
RETAIN_DELIVERY_IDS_DAYS = 7
MIN_RETAIN_DELIVERY_IDS_DAYS = 4
RETAIN_JOBS_DAYS = 30
RETAIN_LEDGER_DAYS = 1095
PRUNE_INTERVAL_SECONDS = 3600


class ConfigError(PluginError):
    """A setting that cannot be used; the message names the variable and what is wrong."""


class Secret(str):
    """A secret setting: the string it is wherever it is used; its repr only says it is set."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<set>"


class Secrets(tuple[str, ...]):
    """Secret settings of one kind (the current one first): the tuple they are wherever they are
    used; its repr only says how many."""

    __slots__ = ()
    noun: ClassVar[str] = "secrets"

    def __repr__(self) -> str:
        return f"<{len(self)} {self.noun}>"


class SecretKeys(Secrets):
    """The keys that seal the stored credentials and sign sessions (the first seals)."""

    __slots__ = ()
    noun = "keys"


class DatabaseUrl(str):
    """The database URL, which may hold a password: its repr shows it without the password."""

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(_without_password(str(self)))


@dataclass(frozen=True, slots=True)
class ShopifySettings:
    """The Shopify app: its client id and secrets (current first, then the previous one while a
    rotation is under way), the Admin API version, and where the Admin API of a shop lives."""

    client_id: str | None = None
    client_secrets: Secrets = field(default_factory=Secrets)
    api_version: str = SHOPIFY_API_VERSION
    admin_url: str = SHOPIFY_ADMIN_URL

    @property
    def enabled(self) -> bool:
        return self.client_id is not None and bool(self.client_secrets)


@dataclass(frozen=True, slots=True)
class BigCommerceSettings:
    """The BigCommerce app: its client id and secret, and the hosts of the store API and of the
    OAuth token endpoint (loopback in tests and demos)."""

    client_id: str | None = None
    client_secret: Secret | None = None
    api_url: str = BIGCOMMERCE_API_URL
    login_url: str = BIGCOMMERCE_LOGIN_URL

    @property
    def enabled(self) -> bool:
        return self.client_id is not None and bool(self.client_secret)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    """The database: its URL, and how a process uses it."""

    url: DatabaseUrl
    # PostgreSQL only: connections per process (asyncpg pool), at most.
    pool_size: int = 20
    # How long a call waits for the database before it counts as away (PostgreSQL: to connect,
    # for a pool connection, for a statement's answer; SQLite: for another process's lock on the
    # file): a request then answers 503, a worker waits and tries again.
    timeout_seconds: int = DATABASE_TIMEOUT_SECONDS


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """The workers that run the jobs: how many, and how they share the jobs and the shops."""

    # Loops that capture, in each process that runs workers (0: a `serve` beside `worker`s).
    workers: int = 4
    # Processes that run workers against this database, on all machines: each keeps this share
    # of every merchant's Klarna rate limit.
    worker_processes: int = 1
    lease_seconds: int = 60
    poll_ms: int = 1000
    # How long one run of a job may take before it is stopped and retried (longer than a Klarna
    # call's 30 s of retries, with the steps around it).
    job_deadline_seconds: int = JOB_DEADLINE_SECONDS
    # Loops that send status callbacks and storefront write-backs, beside the `workers` that
    # capture (None: max(2, workers // 4)), so that a shop whose endpoints hang holds these only.
    # Two at least, so that one shop's callbacks (capped at half of them) leave one for the others.
    callback_workers: int | None = None
    # Jobs of one kind a shop may have running at once, across all processes (None: half of all
    # the workers, at least 1), so that one shop's backlog never holds every worker.
    shop_concurrency: int | None = None
    # How often a process that runs workers tells the database it lives; after three missed
    # beats its running jobs are claimed by others at once, without waiting for their lease.
    heartbeat_seconds: int = HEARTBEAT_SECONDS
    # How often a process that runs workers queues the orders whose authorization runs out within
    # their shop's `keep_alive_days` (0: never; the extension itself is a shop option).
    keep_alive_interval_seconds: int = KEEP_ALIVE_INTERVAL_SECONDS

    @property
    def capture_loops(self) -> int:
        return self.workers

    @property
    def callback_loops(self) -> int:
        """0 in a process without workers (a `serve` beside `worker` processes)."""
        return self._callback_loops_each if self.workers else 0

    @property
    def _callback_loops_each(self) -> int:
        """The callback loops of a process that works."""
        return self.callback_workers or max(2, self.workers // 4)

    @property
    def shop_limit(self) -> int:
        return self.shop_concurrency or max(1, self.workers * self.worker_processes // 2)

    @property
    def callback_shop_limit(self) -> int:
        """A shop's callbacks running at once: half the callback loops of all processes (and no
        more than `shop_limit`), so that one shop's hanging status URL or storefront leaves
        callback loops free for every other shop."""
        loops = self._callback_loops_each * self.worker_processes
        return min(self.shop_limit, max(1, loops // 2))


@dataclass(frozen=True, slots=True)
class KlarnaSettings:
    """Klarna's Order management API: None, the region's own address; else this one (a
    sandbox's, in tests and demos) for every region."""

    url: str | None = None


@dataclass(frozen=True, slots=True)
class WebSettings:
    """What faces the network: the address storefronts and merchants reach the service at, who
    is believed about a request, which webhooks are fresh, and which addresses merchant-entered
    URLs may lead to."""

    public_url: str = DEFAULT_PUBLIC_URL
    # Whether KLARNA_CAPTURE_PUBLIC_URL was set; when not, `public_url` follows where `serve`
    # listens (see with_serve_url).
    public_url_configured: bool = True
    webhook_tolerance_seconds: int = 300
    # The addresses of the reverse proxies in front of `serve`: only a request from one of them
    # is taken to have come over https (X-Forwarded-Proto) from the client it names
    # (X-Forwarded-For); anyone else sending those headers is not believed.
    trusted_proxies: tuple[Network, ...] = TRUSTED_PROXIES
    # Networks outside the public internet that merchant-entered URLs (status URL, WooCommerce
    # site) may still reach: an intranet deployment's, the demo's and the tests' loopback.
    allowed_private_networks: tuple[Network, ...] = ()


# How a mail server is spoken to: TLS from the first byte (smtps://), or STARTTLS required, used
# when the server offers it, or never (smtp://, its `starttls` parameter).
MailSecurity = Literal["tls", "require", "auto", "off"]
SMTP_PORTS = {"smtps": 465, "smtp": 587}


@dataclass(frozen=True, slots=True)
class MailSettings:
    """Where mail goes out (sign-in links, failure alerts): the SMTP server of
    KLARNA_CAPTURE_SMTP_URL, its login (the password a Secret) and who the mail is from. No host:
    no mail is sent, and the sign-in page sends merchants to the operator."""

    host: str | None = None
    port: int = SMTP_PORTS["smtp"]
    security: MailSecurity = "auto"
    username: str | None = None
    password: Secret | None = None
    mail_from: str | None = None

    @property
    def enabled(self) -> bool:
        return self.host is not None and self.mail_from is not None


@dataclass(frozen=True, slots=True)
class RetentionSettings:
    """How many days each kind of row is kept (None: the ledger is never pruned), and how often a
    process that runs workers prunes (0: only `klarna-capture prune`)."""

    bodies_days: int = RETAIN_BODIES_DAYS
    delivery_ids_days: int = RETAIN_DELIVERY_IDS_DAYS
    jobs_days: int = RETAIN_JOBS_DAYS
    ledger_days: int | None = RETAIN_LEDGER_DAYS
    prune_interval_seconds: int = PRUNE_INTERVAL_SECONDS


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting: those of the process itself, then one group per concern and per
    storefront app."""

    data_dir: Path
    secret_keys: SecretKeys
    database: DatabaseSettings
    log_level: str = "INFO"
    # Where this process serves its Prometheus metrics (host, port); None: nowhere.
    metrics_address: tuple[str, int] | None = METRICS_ADDRESS
    queue: QueueSettings = QueueSettings()
    klarna: KlarnaSettings = KlarnaSettings()
    web: WebSettings = WebSettings()
    retention: RetentionSettings = RetentionSettings()
    mail: MailSettings = MailSettings()
    shopify: ShopifySettings = ShopifySettings()
    bigcommerce: BigCommerceSettings = BigCommerceSettings()


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and check every setting; touches nothing on disk."""
    return _load(os.environ if environ is None else environ, set())


def _load(env: Mapping[str, str], read: set[str]) -> Settings:
    """The settings in `env`; adds the name of every variable it reads to `read`."""

    def get(name: str) -> str | None:
        read.add(name)
        value = env.get(PREFIX + name, "").strip()
        return value or None

    # Read in the order of the one-line errors: the first bad variable is the one named.
    data_dir = Path(get("DATA_DIR") or "./var").expanduser().resolve()
    database_url = _database_url(get("DATABASE_URL"), data_dir)
    klarna_url = get("KLARNA_URL")
    secret_keys = _secret_keys(get("SECRET_KEY"))
    klarna = KlarnaSettings(url=None if klarna_url is None else _http_url("KLARNA_URL", klarna_url))
    public_url = _http_url("PUBLIC_URL", get("PUBLIC_URL") or DEFAULT_PUBLIC_URL)
    workers = _whole_number("WORKERS", get("WORKERS"), default=4, low=0, high=256)
    webhook_tolerance_seconds = _whole_number(
        "WEBHOOK_TOLERANCE", get("WEBHOOK_TOLERANCE"), default=300, low=1, high=86400
    )
    log_level = _log_level(get("LOG_LEVEL"))
    lease_seconds = _whole_number(
        "LEASE_SECONDS", get("LEASE_SECONDS"), default=60, low=1, high=3600
    )
    poll_ms = _whole_number("POLL_MS", get("POLL_MS"), default=1000, low=10, high=60000)
    database_pool_size = _whole_number(
        "DATABASE_POOL_SIZE", get("DATABASE_POOL_SIZE"), default=20, low=2, high=1000
    )
    worker_processes = _whole_number(
        "WORKER_PROCESSES", get("WORKER_PROCESSES"), default=1, low=1, high=1000
    )
    shopify = _shopify(get)
    bigcommerce = _bigcommerce(get)
    allowed_private_networks = _networks(
        "ALLOWED_PRIVATE_NETWORKS", get("ALLOWED_PRIVATE_NETWORKS")
    )
    metrics_address = _metrics_address(get("METRICS_ADDRESS"))
    queue = _queue(get)
    trusted_proxies = _networks("TRUSTED_PROXIES", get("TRUSTED_PROXIES")) or TRUSTED_PROXIES
    database_timeout_seconds = _whole_number(
        "DATABASE_TIMEOUT_SECONDS",
        get("DATABASE_TIMEOUT_SECONDS"),
        default=DATABASE_TIMEOUT_SECONDS,
        low=1,
        high=300,
    )
    heartbeat_seconds = _whole_number(
        "HEARTBEAT_SECONDS", get("HEARTBEAT_SECONDS"), default=HEARTBEAT_SECONDS, low=1, high=60
    )
    keep_alive_interval_seconds = _whole_number(
        "KEEP_ALIVE_INTERVAL_SECONDS",
        get("KEEP_ALIVE_INTERVAL_SECONDS"),
        default=KEEP_ALIVE_INTERVAL_SECONDS,
        low=0,
        high=86_400,
    )
    return Settings(
        data_dir=data_dir,
        secret_keys=secret_keys,
        database=DatabaseSettings(
            url=DatabaseUrl(database_url),
            pool_size=database_pool_size,
            timeout_seconds=database_timeout_seconds,
        ),
        log_level=log_level,
        metrics_address=metrics_address,
        queue=QueueSettings(
            workers=workers,
            worker_processes=worker_processes,
            lease_seconds=lease_seconds,
            poll_ms=poll_ms,
            heartbeat_seconds=heartbeat_seconds,
            keep_alive_interval_seconds=keep_alive_interval_seconds,
            **queue,
        ),
        klarna=klarna,
        web=WebSettings(
            public_url=public_url,
            public_url_configured=get("PUBLIC_URL") is not None,
            webhook_tolerance_seconds=webhook_tolerance_seconds,
            trusted_proxies=trusted_proxies,
            allowed_private_networks=allowed_private_networks,
        ),
        retention=_retention(get),
        mail=_mail(get),
        shopify=shopify,
        bigcommerce=bigcommerce,
    )


def _shopify(get: Callable[[str], str | None]) -> ShopifySettings:
    client_id = get("SHOPIFY_CLIENT_ID")
    secret = get("SHOPIFY_CLIENT_SECRET")
    previous = get("SHOPIFY_PREVIOUS_CLIENT_SECRET")
    if (client_id is None) != (secret is None):
        raise ConfigError(
            f"{PREFIX}SHOPIFY_CLIENT_ID and {PREFIX}SHOPIFY_CLIENT_SECRET go together: "
            "set both (the Shopify app's client credentials) or neither"
        )
    if previous is not None and secret is None:
        raise ConfigError(
            f"{PREFIX}SHOPIFY_PREVIOUS_CLIENT_SECRET is for a rotation: set "
            f"{PREFIX}SHOPIFY_CLIENT_SECRET to the new secret too"
        )
    version = get("SHOPIFY_API_VERSION") or SHOPIFY_API_VERSION
    if not re.fullmatch(r"[0-9]{4}-(01|04|07|10)|unstable", version):
        raise ConfigError(
            f"{PREFIX}SHOPIFY_API_VERSION must be a Shopify API version such as "
            f"{SHOPIFY_API_VERSION}, not {_shown(version)}"
        )
    admin_url = get("SHOPIFY_ADMIN_URL") or SHOPIFY_ADMIN_URL
    if admin_url.count("{shop}") != 1:
        raise ConfigError(
            f"{PREFIX}SHOPIFY_ADMIN_URL must hold {{shop}} once, where the shop's "
            f"myshopify.com domain goes (default {SHOPIFY_ADMIN_URL}), not {_shown(admin_url)}"
        )
    _http_url("SHOPIFY_ADMIN_URL", admin_url.replace("{shop}", "shop.myshopify.com"))
    return ShopifySettings(
        client_id=client_id,
        client_secrets=Secrets(s for s in (secret, previous) if s is not None),
        api_version=version,
        admin_url=admin_url.rstrip("/"),
    )


def _bigcommerce(get: Callable[[str], str | None]) -> BigCommerceSettings:
    client_id = get("BIGCOMMERCE_CLIENT_ID")
    secret = get("BIGCOMMERCE_CLIENT_SECRET")
    if (client_id is None) != (secret is None):
        raise ConfigError(
            f"{PREFIX}BIGCOMMERCE_CLIENT_ID and {PREFIX}BIGCOMMERCE_CLIENT_SECRET go together: "
            "set both (the BigCommerce app's client credentials) or neither"
        )
    return BigCommerceSettings(
        client_id=client_id,
        client_secret=None if secret is None else Secret(secret),
        api_url=_http_url("BIGCOMMERCE_API_URL", get("BIGCOMMERCE_API_URL") or BIGCOMMERCE_API_URL),
        login_url=_http_url(
            "BIGCOMMERCE_LOGIN_URL", get("BIGCOMMERCE_LOGIN_URL") or BIGCOMMERCE_LOGIN_URL
        ),
    )


def _mail(get: Callable[[str], str | None]) -> MailSettings:
    url, sender = get("SMTP_URL"), get("MAIL_FROM")
    if url is None and sender is None:
        return MailSettings()
    if url is None or sender is None:
        raise ConfigError(
            f"{PREFIX}SMTP_URL and {PREFIX}MAIL_FROM go together: set both (the mail server and "
            "the address mail is sent from) or neither"
        )
    mail_from = emails.normalise(sender)
    if mail_from is None:
        raise ConfigError(
            f"{PREFIX}MAIL_FROM must be one plain address such as capture@example.com, not "
            f"{_shown(sender)}"
        )
    return replace(_smtp_url(url), mail_from=mail_from)


def _smtp_url(value: str) -> MailSettings:
    """smtp://[user[:password]@]host[:port][?starttls=require|auto|off] or smtps://...; the
    password is never quoted in an error."""
    name = PREFIX + "SMTP_URL"
    shown = _shown(_without_password(value))
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    if scheme not in SMTP_PORTS or not parts.hostname:
        raise ConfigError(f"{name} must be smtp://host[:port] or smtps://host[:port], not {shown}")
    try:
        port = parts.port or SMTP_PORTS[scheme]
    except ValueError:
        raise ConfigError(f"{name} has a port that is not a number from 1 to 65535") from None
    if parts.path not in ("", "/") or parts.fragment:
        raise ConfigError(f"{name} must have no path or fragment, not {shown}")
    query = parse_qs(parts.query, keep_blank_values=True)
    starttls = query.pop("starttls", [])
    # Sign-in links are as good as a password for 15 minutes: over a network they travel only
    # encrypted unless the operator says otherwise; a mail server on this machine is spoken to
    # as it offers.
    loopback = (parts.hostname or "").lower() in ("localhost", "::1") or (
        parts.hostname or ""
    ).startswith("127.")
    security: MailSecurity = "tls" if scheme == "smtps" else ("auto" if loopback else "require")
    if query or len(starttls) > 1 or (starttls and scheme == "smtps"):
        raise ConfigError(
            f"{name} knows one parameter, starttls=require|auto|off, on smtp:// only; not {shown}"
        )
    if starttls:
        if starttls[0] not in ("require", "auto", "off"):
            raise ConfigError(f"{name}: starttls must be require, auto or off, not {shown}")
        security = cast(MailSecurity, starttls[0])
    password = None if parts.password is None else Secret(unquote(parts.password))
    if password is not None and security in ("auto", "off"):
        # A password goes to the server only over TLS: auto would send it in clear to a server
        # (or to whoever stands between) that does not offer STARTTLS.
        raise ConfigError(
            f"{name} has a password: use smtps:// or smtp://...?starttls=require, so that it is "
            "never sent in clear"
        )
    return MailSettings(
        host=parts.hostname,
        port=port,
        security=security,
        username=None if parts.username is None else unquote(parts.username),
        password=password,
    )


def _metrics_address(value: str | None) -> tuple[str, int] | None:
    """`host:port` (an IPv6 host in brackets), or `off`."""
    if value is None:
        return METRICS_ADDRESS
    if value.lower() == "off":
        return None
    host, _, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        well_formed = re.fullmatch(r"[0-9A-Fa-f:.]+", host) is not None
    else:
        well_formed = re.fullmatch(r"[A-Za-z0-9.-]+", host) is not None
    if well_formed and re.fullmatch(r"[0-9]{1,5}", port) and 1 <= int(port) <= 65535:
        return host, int(port)
    raise ConfigError(
        f"{PREFIX}METRICS_ADDRESS must be host:port (such as 127.0.0.1:9464 or [::1]:9464) or "
        f"off, not {_shown(value)}"
    )


def _queue(get: Callable[[str], str | None]) -> dict[str, Any]:
    callback = get("CALLBACK_WORKERS")
    shop = get("SHOP_CONCURRENCY")
    return {
        "job_deadline_seconds": _whole_number(
            "JOB_DEADLINE_SECONDS",
            get("JOB_DEADLINE_SECONDS"),
            default=JOB_DEADLINE_SECONDS,
            low=MIN_JOB_DEADLINE_SECONDS,
            high=86400,
        ),
        "callback_workers": None
        if callback is None
        else _whole_number("CALLBACK_WORKERS", callback, default=1, low=1, high=256),
        "shop_concurrency": None
        if shop is None
        else _whole_number("SHOP_CONCURRENCY", shop, default=1, low=1, high=100_000),
    }


def _retention(get: Callable[[str], str | None]) -> RetentionSettings:
    ledger = get("RETAIN_LEDGER_DAYS")
    ledger_days: int | None = RETAIN_LEDGER_DAYS
    if ledger is not None and ledger.lower() == "never":
        ledger_days = None
    elif ledger is not None:
        if not (re.fullmatch(r"[0-9]+", ledger) and 1 <= int(ledger) <= 36_500):
            raise ConfigError(
                f"{PREFIX}RETAIN_LEDGER_DAYS must be a whole number of days from 1 to 36500, "
                f"or never, not {_shown(ledger)}"
            )
        ledger_days = int(ledger)
    windows: dict[str, Any] = {
        "bodies_days": _whole_number(
            "RETAIN_BODIES_DAYS",
            get("RETAIN_BODIES_DAYS"),
            default=RETAIN_BODIES_DAYS,
            low=0,
            high=3650,
        ),
        # Fewer days than a storefront goes on redelivering would let a late duplicate through
        # as a new delivery (the ledger still captures it once, but it runs again).
        "delivery_ids_days": _whole_number(
            "RETAIN_DELIVERY_IDS_DAYS",
            get("RETAIN_DELIVERY_IDS_DAYS"),
            default=RETAIN_DELIVERY_IDS_DAYS,
            low=MIN_RETAIN_DELIVERY_IDS_DAYS,
            high=3650,
        ),
        "jobs_days": _whole_number(
            "RETAIN_JOBS_DAYS",
            get("RETAIN_JOBS_DAYS"),
            default=RETAIN_JOBS_DAYS,
            low=1,
            high=3650,
        ),
        "ledger_days": ledger_days,
        "prune_interval_seconds": _whole_number(
            "PRUNE_INTERVAL_SECONDS",
            get("PRUNE_INTERVAL_SECONDS"),
            default=PRUNE_INTERVAL_SECONDS,
            low=0,
            high=86_400,
        ),
    }
    # The ledger is what says a shipment was captured once its delivery rows are gone: it
    # outlives them (a body's days and its id's after it), and a job's days.
    bodies, ids, jobs = (
        windows[name] or 0 for name in ("bodies_days", "delivery_ids_days", "jobs_days")
    )
    floor = max(bodies + ids, jobs)
    if ledger_days is not None and ledger_days < floor:
        raise ConfigError(
            f"{PREFIX}RETAIN_LEDGER_DAYS must be at least {floor} with these windows (the "
            "bodies' and delivery ids' days together, and the jobs' days), not "
            f"{ledger_days}"
        )
    return RetentionSettings(**windows)


def sqlite_path(settings: Settings) -> Path | None:
    """The database file of a SQLite URL (absolute), None for PostgreSQL."""
    if not settings.database.url.startswith(_SQLITE):
        return None
    return Path(settings.database.url.removeprefix(_SQLITE))


def ensure_secret_keys(settings: Settings) -> tuple[Settings, str | None]:
    """Settings with a secret key: the configured ones, else `<data_dir>/secret-key`, made once.

    Returns the message to show the operator when a key file was created, else None.
    """
    if settings.secret_keys:
        return settings, None
    path = settings.data_dir / KEY_FILE_NAME
    created = False
    if not path.exists():
        try:
            created = _create_key_file(path)
        except OSError as exc:
            raise ConfigError(f"cannot create the secret key file {path}: {exc.strerror}") from None
    key = _read_key_file(path)
    settings = replace(settings, secret_keys=SecretKeys((key,)))
    if not created:
        return settings, None
    return settings, (
        f"klarna-capture: created a secret key in {path}. It encrypts the stored Klarna and "
        "storefront credentials: back it up, since they cannot be read without it. In production "
        f"set {PREFIX}SECRET_KEY to it instead of relying on the file."
    )


def secure_data_dir(settings: Settings) -> list[str]:
    """Make the data directory 0700 and the files that hold customers' data or the key 0600:
    created so, or tightened if they are more open (returning a line for the operator about
    each). The SQLite file is made here, empty and 0600, before SQLite opens it: SQLite gives
    its -wal and -shm files the database file's mode. Whatever the key's source, since stored
    webhook bodies hold customers' names and addresses."""
    notes: list[str] = []
    database = sqlite_path(settings)
    needed = not settings.secret_keys or (
        database is not None and database.is_relative_to(settings.data_dir)
    )
    try:
        if needed or settings.data_dir.exists():
            settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            _restrict(settings.data_dir, 0o700, notes)
        files = [settings.data_dir / KEY_FILE_NAME]
        if database is not None:
            database.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.close(os.open(database, os.O_WRONLY | os.O_CREAT, 0o600))
            files += [Path(f"{database}{suffix}") for suffix in ("", "-wal", "-shm", "-journal")]
        for path in files:
            if path.exists():
                _restrict(path, 0o600, notes)
    except OSError as exc:
        raise ConfigError(
            f"cannot make the data directory {settings.data_dir} private "
            f"({PREFIX}DATA_DIR): {exc.strerror} on {exc.filename}"
        ) from None
    return notes


def _restrict(path: Path, mode: int, notes: list[str]) -> None:
    """Take away the permissions beyond `mode`, and say so."""
    current = stat.S_IMODE(path.stat().st_mode)
    if current & ~mode:
        path.chmod(current & mode)
        notes.append(
            f"klarna-capture: {path} was open to others (mode {current:04o}); now "
            f"{current & mode:04o}, since it holds customers' data or the secret key"
        )


def _create_key_file(path: Path) -> bool:
    """Write a new key to `path` unless another process got there first; True if this one did."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Written aside and hard-linked into place so that a serve and a worker starting together
    # agree on one key, and nobody ever reads a half-written file.
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".secret-key-")
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(generate_key() + "\n")
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(temporary)


def _read_key_file(path: Path) -> str:
    try:
        key = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the secret key file {path}: {exc.strerror}") from None
    if len(key) < MIN_KEY_LENGTH:
        raise ConfigError(
            f"the secret key file {path} must hold a key of at least {MIN_KEY_LENGTH} characters"
        )
    return key


def _database_url(value: str | None, data_dir: Path) -> str:
    name = PREFIX + "DATABASE_URL"
    if value is None:
        return _SQLITE + str(data_dir / "klarna-capture.db")
    scheme = value.partition(":")[0].lower()
    if scheme in _POSTGRES_SCHEMES and value[len(scheme) :].startswith("://"):
        return value
    if scheme != "sqlite":
        # Only the scheme is quoted: the rest of a database URL may hold a password.
        # (After a colon, in any spelling: postgresql:/user:password@host is no URL either.)
        shown = f"a {scheme!r} URL" if ":" in value else _shown(value)
        raise ConfigError(
            f"{name} must be sqlite:///<path>, postgresql://... or postgres://..., not {shown}"
        )
    path = value.removeprefix(_SQLITE) if value.startswith(_SQLITE) else ""
    if not path or path == ":memory:" or "?" in path or path.endswith("/"):
        raise ConfigError(
            f"{name} must name a database file after three slashes: sqlite:///var/capture.db "
            f"(relative) or sqlite:////srv/capture.db (absolute), not {_shown(value)}"
        )
    # Fixed against today's directory, as data_dir is, so that a later chdir does not move it.
    return _SQLITE + str(Path(path).expanduser().resolve())


def _secret_keys(value: str | None) -> SecretKeys:
    if value is None:
        return SecretKeys()
    keys = tuple(key.strip() for key in value.split(",") if key.strip())
    for position, key in enumerate(keys, start=1):
        if len(key) < MIN_KEY_LENGTH:
            raise ConfigError(
                f"{PREFIX}SECRET_KEY must hold keys of at least {MIN_KEY_LENGTH} characters "
                f"each, but key {position} of {len(keys)} has {len(key)}"
            )
    return SecretKeys(keys)


def _http_url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{PREFIX}{name} must not carry a user name or password")
    problem: str | None = None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        problem = "must be an http:// or https:// URL with a host"
    elif parts.query or parts.fragment:
        problem = "must not have a query or a fragment"
    else:
        try:
            parts.port  # noqa: B018 (raises on a port that is not a number)
        except ValueError:
            problem = "has a port that is not a number from 0 to 65535"
    if problem is not None:
        raise ConfigError(f"{PREFIX}{name} {problem}, not {_shown(value)}")
    return value.rstrip("/")


def _whole_number(name: str, value: str | None, *, default: int, low: int, high: int) -> int:
    if value is None:
        return default
    if re.fullmatch(r"[0-9]+", value) and low <= int(value) <= high:
        return int(value)
    raise ConfigError(
        f"{PREFIX}{name} must be a whole number from {low} to {high}, not {_shown(value)}"
    )


def _log_level(value: str | None) -> str:
    if value is None:
        return "INFO"
    if value.upper() in LOG_LEVELS:
        return value.upper()
    raise ConfigError(
        f"{PREFIX}LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, not {_shown(value)}"
    )


def _shown(value: str, limit: int = 60) -> str:
    """A value as quoted in an error: repr keeps it on one line, the cut keeps it short."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username}:***@{netloc}").geturl()


def _networks(
    name: str, value: str | None
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Comma-separated CIDRs (a bare address is its own /32 or /128)."""
    if value is None:
        return ()
    networks = []
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=True))
        except ValueError:
            raise ConfigError(
                f"{PREFIX}{name} must be comma-separated networks such as 10.0.0.0/8 or "
                f"fd00::/8 (no host bits set), not {_shown(part)}"
            ) from None
    return tuple(networks)


def variable_names() -> frozenset[str]:
    """Every KLARNA_CAPTURE_* variable there is: those load_settings reads, found by letting
    it read an empty environment (so that no second list has to be kept in step with it), and
    OTHER_VARIABLES."""
    read: set[str] = set()
    _load({}, read)
    return frozenset(PREFIX + name for name in (*read, *OTHER_VARIABLES))


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """A warning for each KLARNA_CAPTURE_* variable that is no setting (a typo, or one that
    was renamed or removed), naming the closest known one."""
    env = os.environ if environ is None else environ
    known = variable_names()
    # Compared without the prefix they all share, which would make any two look alike.
    suffixes = sorted(name.removeprefix(PREFIX) for name in known)
    warnings = []
    for name in sorted(n for n in env if n.startswith(PREFIX) and n not in known):
        closest = difflib.get_close_matches(name.removeprefix(PREFIX), suffixes, n=1)
        hint = f"; did you mean {PREFIX}{closest[0]}?" if closest else ""
        warnings.append(f"klarna-capture: {_shown(name)} is not a setting and is ignored{hint}")
    return warnings


def with_serve_url(settings: Settings) -> Settings:
    """Settings whose public URL, when KLARNA_CAPTURE_PUBLIC_URL is unset, is the one the last
    `serve` with this data directory listened on (written by record_serve_url); the default
    before any did."""
    if settings.web.public_url_configured:
        return settings
    try:
        recorded = (settings.data_dir / SERVE_URL_FILE_NAME).read_text(encoding="ascii").strip()
        public_url = _http_url("PUBLIC_URL", recorded)
        return replace(settings, web=replace(settings.web, public_url=public_url))
    except (OSError, UnicodeError, ConfigError):  # none yet, or not one we wrote: the default
        return settings


def record_serve_url(settings: Settings, url: str) -> Settings:
    """`serve`'s settings, listening on `url`: unless KLARNA_CAPTURE_PUBLIC_URL is set, that is
    the public URL, kept in the data directory for the deployment's other commands."""
    if settings.web.public_url_configured:
        return settings
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = settings.data_dir / SERVE_URL_FILE_NAME
    # Written aside and renamed, so that a command reading it never sees half a URL.
    descriptor, temporary = tempfile.mkstemp(dir=settings.data_dir, prefix=".serve-url-")
    try:
        with os.fdopen(descriptor, "w", encoding="ascii") as file:
            file.write(url + "\n")
        os.replace(temporary, path)
    except OSError as exc:
        os.unlink(temporary)
        raise ConfigError(f"cannot write {path} ({PREFIX}DATA_DIR): {exc.strerror}") from None
    return replace(settings, web=replace(settings.web, public_url=url))

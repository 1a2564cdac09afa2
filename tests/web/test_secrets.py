"""Secrets entered or made through the pages are sealed at rest, and `klarna-capture rotate-keys`
re-seals them under a new key."""

import base64
import re
from pathlib import Path

import anyio

from plugin import signatures
from plugin.config import Settings
from plugin.service import open_service
from plugin.vault import VaultError
from tests.helpers import KLARNA_ORDER_ID, run_cli, shipment
from tests.web.support import SECRET_KEY, cli_env, page_settings, running

NEW_KEY = "a-brand-new-secret-key-0123456789"
PASSWORD = "Kl4rna-api-pa55word-from-the-page"


def raw_database(settings: Settings) -> bytes:
    """The database file's bytes and its write-ahead log's, as a thief of the disk reads them."""
    path = settings.data_dir / "klarna-capture.db"
    wal = Path(f"{path}-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def secret_forms(secret: str) -> list[bytes]:
    """A webhook secret as text, its base64 part, and its key bytes."""
    key = signatures.parse_secret(secret)
    return [secret.encode(), secret.removeprefix("whsec_").encode(), key]


def assert_sealed(raw: bytes, secrets: list[str]) -> None:
    assert PASSWORD.encode() not in raw
    assert base64.b64encode(PASSWORD.encode()) not in raw
    assert b"whsec_" not in raw
    for secret in secrets:
        for form in secret_forms(secret):
            assert form not in raw


def test_secrets_from_the_pages_are_sealed_and_rotate_keys_reseals_them(
    tmp_path: Path, klarna_url: str
) -> None:
    settings = page_settings(tmp_path, klarna_url)
    with running(settings) as site:
        shop, first_secret = site.create_shop()
        browser = site.sign_in(shop.id)
        assert browser.save_settings(klarna_password=PASSWORD).status_code == 303
        rotated = browser.post(f"{browser.base}/settings/rotate-secret")
        [new_secret] = re.findall(r"whsec_[A-Za-z0-9+/=]+", rotated.text)
        for secret in (first_secret, new_secret):
            assert site.deliver(shop.id, secret, shipment(KLARNA_ORDER_ID)).status_code == 200
        assert site.service.shops.klarna_password(site.shop(shop.id)) == PASSWORD
        assert_sealed(raw_database(settings), [first_secret, new_secret])
    assert_sealed(raw_database(settings), [first_secret, new_secret])

    rotation = cli_env(settings, KLARNA_CAPTURE_SECRET_KEY=f"{NEW_KEY},{SECRET_KEY}")
    done = run_cli(rotation, "rotate-keys")
    assert done.stdout.strip() == "re-encrypted 3 of 3 stored secrets with the first key"
    again = run_cli(rotation, "rotate-keys")
    assert again.stdout.strip() == "re-encrypted 0 of 3 stored secrets with the first key"
    assert_sealed(raw_database(settings), [first_secret, new_secret])

    async def open_with(key: str) -> tuple[str | VaultError, set[bytes] | VaultError]:
        """The shop's Klarna password and webhook keys as a service with only `key` reads them."""
        async with open_service(page_settings(tmp_path, klarna_url, secret_key=key)) as service:
            stored = await service.store.get_shop(shop.id)
            assert stored is not None
            password: str | VaultError
            keys: set[bytes] | VaultError
            try:
                password = service.shops.klarna_password(stored)
            except VaultError as error:
                password = error
            try:
                loaded = await service.shops.get(shop.id)
                assert loaded is not None
                keys = set(loaded.webhook_keys)
            except VaultError as error:
                keys = error
            return password, keys

    password, keys = anyio.run(open_with, NEW_KEY)
    assert password == PASSWORD
    assert keys == {signatures.parse_secret(first_secret), signatures.parse_secret(new_secret)}
    old_password, old_keys = anyio.run(open_with, SECRET_KEY)
    assert isinstance(old_password, VaultError)
    assert isinstance(old_keys, VaultError)

    # the service under the new key alone takes deliveries signed with either secret
    with running(page_settings(tmp_path, klarna_url, secret_key=NEW_KEY, workers=0)) as site:
        for index, secret in enumerate((first_secret, new_secret)):
            answer = site.deliver(shop.id, secret, shipment(KLARNA_ORDER_ID, f"F{index + 2}"))
            assert answer.status_code == 200
            assert answer.json()["status"] == "accepted"

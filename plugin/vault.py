"""Secrets at rest: Klarna passwords, storefront tokens and webhook secrets, sealed with AES-GCM.

A blob is `version (1) | key id (8) | nonce (12) | ciphertext and tag`. The first vault key
encrypts, every key decrypts: keys rotate by putting the new one first and calling `reencrypt`.
"""

import hashlib
import secrets
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from plugin.errors import PluginError

MIN_KEY_LENGTH = 16
_VERSION = b"\x01"
_KEY_ID_LENGTH = 8
_NONCE_LENGTH = 12
_TAG_LENGTH = 16
_HEADER_LENGTH = len(_VERSION) + _KEY_ID_LENGTH + _NONCE_LENGTH
_HKDF_SALT = b"klarna-capture vault salt"
_HKDF_INFO = b"klarna-capture secrets v1"


class VaultError(PluginError):
    """A stored secret that cannot be decrypted with the keys at hand."""


def generate_key() -> str:
    return secrets.token_urlsafe(32)


def _derive(key: str) -> bytes:
    if len(key) < MIN_KEY_LENGTH:
        raise ValueError(f"a vault key must be at least {MIN_KEY_LENGTH} characters long")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=_HKDF_SALT, info=_HKDF_INFO)
    return hkdf.derive(key.encode())


class Vault:
    def __init__(self, keys: Sequence[str]) -> None:
        if isinstance(keys, str):
            raise TypeError("Vault takes a list of keys; use Vault.from_env_value for one string")
        if not keys:
            raise ValueError("a vault needs at least one key (KLARNA_CAPTURE_SECRET_KEY)")
        self._ciphers: dict[bytes, AESGCM] = {}
        for key in keys:
            derived = _derive(key)
            self._ciphers.setdefault(
                hashlib.sha256(derived).digest()[:_KEY_ID_LENGTH], AESGCM(derived)
            )
        self._current_key_id = next(iter(self._ciphers))

    @classmethod
    def from_env_value(cls, value: str) -> "Vault":
        """A vault from a comma-separated key list, newest first."""
        return cls([key.strip() for key in value.split(",") if key.strip()])

    def __repr__(self) -> str:
        return f"Vault(<{len(self._ciphers)} keys>)"

    def encrypt(self, plaintext: str, *, context: str) -> bytes:
        """Seal `plaintext` for one place (`context`, e.g. "shop:abc:klarna_password")."""
        nonce = secrets.token_bytes(_NONCE_LENGTH)
        sealed = self._ciphers[self._current_key_id].encrypt(
            nonce, plaintext.encode(), context.encode()
        )
        return _VERSION + self._current_key_id + nonce + sealed

    def decrypt(self, blob: bytes, *, context: str) -> str:
        key_id = _key_id(blob, f"secret for {context!r}")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise VaultError(f"secret for {context!r} was encrypted with a key this vault lacks")
        nonce = blob[len(_VERSION) + _KEY_ID_LENGTH : _HEADER_LENGTH]
        try:
            plaintext = cipher.decrypt(nonce, blob[_HEADER_LENGTH:], context.encode())
        except InvalidTag:
            raise VaultError(
                f"secret for {context!r} failed authentication (tampered, or another context's)"
            ) from None
        return plaintext.decode()

    def needs_rotation(self, blob: bytes) -> bool:
        """Whether `blob` is sealed with a key other than the current (first) one."""
        return _key_id(blob, "blob") != self._current_key_id

    def reencrypt(self, blob: bytes, *, context: str) -> bytes:
        return self.encrypt(self.decrypt(blob, context=context), context=context)


def _key_id(blob: bytes, what: str) -> bytes:
    if len(blob) < _HEADER_LENGTH + _TAG_LENGTH or blob[:1] != _VERSION:
        raise VaultError(f"{what} is not a version-1 vault blob")
    return blob[len(_VERSION) : len(_VERSION) + _KEY_ID_LENGTH]

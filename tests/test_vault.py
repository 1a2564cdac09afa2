import pytest

from plugin.vault import Vault, VaultError, generate_key

KEY = "current-key-0123456789"
OLD_KEY = "older-key-9876543210"
CONTEXT = "shop:abc:klarna_password"
PASSWORD = "klarna-api-password-s3cr3t"


def test_round_trip() -> None:
    vault = Vault([KEY])
    assert vault.decrypt(vault.encrypt(PASSWORD, context=CONTEXT), context=CONTEXT) == PASSWORD


@pytest.mark.parametrize("plaintext", ["", "ü€😀 unicode", "x" * 10_000])
def test_round_trip_of_any_text(plaintext: str) -> None:
    vault = Vault([KEY])
    assert vault.decrypt(vault.encrypt(plaintext, context=CONTEXT), context=CONTEXT) == plaintext


def test_a_vault_built_again_from_the_same_key_decrypts() -> None:
    blob = Vault([KEY]).encrypt(PASSWORD, context=CONTEXT)
    assert Vault([KEY]).decrypt(blob, context=CONTEXT) == PASSWORD


def test_the_blob_layout_is_version_key_id_nonce_ciphertext_tag() -> None:
    blob = Vault([KEY]).encrypt(PASSWORD, context=CONTEXT)
    assert blob[0] == 1
    assert len(blob) == 1 + 8 + 12 + len(PASSWORD.encode()) + 16


def test_each_encryption_uses_a_fresh_nonce() -> None:
    vault = Vault([KEY])
    first = vault.encrypt(PASSWORD, context=CONTEXT)
    second = vault.encrypt(PASSWORD, context=CONTEXT)
    assert first != second
    assert first[9:21] != second[9:21]


def test_the_ciphertext_does_not_contain_the_plaintext() -> None:
    blob = Vault([KEY]).encrypt(PASSWORD, context=CONTEXT)
    assert PASSWORD.encode() not in blob
    assert KEY.encode() not in blob


def test_a_blob_moved_to_another_context_fails() -> None:
    vault = Vault([KEY])
    blob = vault.encrypt(PASSWORD, context=CONTEXT)
    with pytest.raises(VaultError, match="shop:xyz:klarna_password") as caught:
        vault.decrypt(blob, context="shop:xyz:klarna_password")
    assert PASSWORD not in str(caught.value)
    assert caught.value.__cause__ is None


@pytest.mark.parametrize("position", [0, 1, 8, 9, 20, 21, -17, -1])
def test_any_tampered_byte_fails(position: int) -> None:
    vault = Vault([KEY])
    tampered = bytearray(vault.encrypt(PASSWORD, context=CONTEXT))
    tampered[position] ^= 0x01
    with pytest.raises(VaultError, match=CONTEXT):
        vault.decrypt(bytes(tampered), context=CONTEXT)


@pytest.mark.parametrize(
    "blob",
    [b"", b"\x01", b"\x01" + bytes(35), b"plaintext password of some length"],
    ids=["empty", "version-only", "one-byte-short", "not-a-blob"],
)
def test_a_blob_too_short_or_of_another_format_fails(blob: bytes) -> None:
    vault = Vault([KEY])
    with pytest.raises(VaultError, match="not a version-1 vault blob"):
        vault.decrypt(blob, context=CONTEXT)
    with pytest.raises(VaultError):
        vault.needs_rotation(blob)


def test_rotation_decrypts_with_an_older_key_until_reencrypted() -> None:
    blob = Vault([OLD_KEY]).encrypt(PASSWORD, context=CONTEXT)
    rotated = Vault([KEY, OLD_KEY])

    assert rotated.decrypt(blob, context=CONTEXT) == PASSWORD
    assert rotated.needs_rotation(blob)

    reencrypted = rotated.reencrypt(blob, context=CONTEXT)
    assert not rotated.needs_rotation(reencrypted)
    assert Vault([KEY]).decrypt(reencrypted, context=CONTEXT) == PASSWORD


def test_a_blob_of_the_current_key_needs_no_rotation() -> None:
    vault = Vault([KEY, OLD_KEY])
    assert not vault.needs_rotation(vault.encrypt(PASSWORD, context=CONTEXT))


def test_a_vault_without_the_key_fails() -> None:
    blob = Vault([OLD_KEY]).encrypt(PASSWORD, context=CONTEXT)
    with pytest.raises(VaultError, match="key this vault lacks") as caught:
        Vault([KEY]).decrypt(blob, context=CONTEXT)
    assert OLD_KEY not in str(caught.value)
    assert KEY not in str(caught.value)


def test_a_short_key_is_refused() -> None:
    short = "fifteen-chars!!"
    with pytest.raises(ValueError, match="at least 16 characters") as caught:
        Vault([KEY, short])
    assert short not in str(caught.value)


def test_an_empty_key_list_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one key"):
        Vault([])


def test_a_single_string_is_not_mistaken_for_a_key_list() -> None:
    with pytest.raises(TypeError):
        Vault(KEY)


def test_from_env_value_splits_on_commas_newest_first() -> None:
    blob = Vault([OLD_KEY]).encrypt(PASSWORD, context=CONTEXT)
    vault = Vault.from_env_value(f" {KEY} , ,{OLD_KEY},")
    assert vault.decrypt(blob, context=CONTEXT) == PASSWORD
    assert vault.needs_rotation(blob)
    assert repr(vault) == "Vault(<2 keys>)"


def test_from_env_value_with_no_keys_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one key"):
        Vault.from_env_value(" , ")


def test_repr_shows_only_the_key_count() -> None:
    vault = Vault([KEY, OLD_KEY])
    assert repr(vault) == "Vault(<2 keys>)"
    assert str(vault) == "Vault(<2 keys>)"


def test_generate_key_makes_distinct_usable_keys() -> None:
    first, second = generate_key(), generate_key()
    assert first != second
    assert len(first) >= 32
    vault = Vault([first])
    assert vault.decrypt(vault.encrypt(PASSWORD, context=CONTEXT), context=CONTEXT) == PASSWORD

"""A WooCommerce REST API key: its type, how it is sealed as the shop's platform token, and the
checks on a key pair as a merchant enters it."""

import msgspec


class ApiKey(msgspec.Struct, kw_only=True, frozen=True):
    """A WooCommerce REST API key (WooCommerce → Settings → Advanced → REST API), stored sealed
    as the shop's platform token."""

    consumer_key: str
    consumer_secret: str

    def __repr__(self) -> str:
        return f"ApiKey(consumer_key='...{self.consumer_key[-4:]}')"


def encode_api_key(key: ApiKey) -> str:
    return msgspec.json.encode(key).decode()


def decode_api_key(token: str) -> ApiKey:
    return msgspec.json.decode(token, type=ApiKey)


def api_key_problem(consumer_key: str, consumer_secret: str) -> tuple[str, str] | None:
    """(field, what is wrong) for a key pair as entered; None when it looks like WooCommerce's."""
    for value, field, prefix, what in (
        (consumer_key, "consumer_key", "ck_", "consumer key"),
        (consumer_secret, "consumer_secret", "cs_", "consumer secret"),
    ):
        if not value:
            return field, f"Enter the {what}."
        if any(c.isspace() for c in value):
            return field, f"A WooCommerce {what} has no spaces."
        if not value.startswith(prefix) or len(value) > 255 or not value.isprintable():
            return field, f"A WooCommerce {what} starts with {prefix}, as WooCommerce shows it."
    return None

"""BigCommerce's store hash: what one looks like, where a context, producer or claim names it,
and the store's control panel it stands for."""

import re

_STORE_HASH = re.compile(r"[a-z0-9]{1,64}")
_CONTEXT = re.compile(r"stores/([a-z0-9]{1,64})")


def is_store_hash(value: str) -> bool:
    """Whether `value` is a store hash as BigCommerce writes them (lowercase letters, digits)."""
    return _STORE_HASH.fullmatch(value) is not None


def store_hash_of(context: str) -> str | None:
    """The store hash in a `stores/{hash}` context, producer or `sub` claim; None otherwise."""
    found = _CONTEXT.fullmatch(context)
    return found.group(1) if found else None


def control_panel_origin(store_hash: str) -> str:
    """The store's control panel, which frames the app's pages."""
    return f"https://store-{store_hash}.mybigcommerce.com"

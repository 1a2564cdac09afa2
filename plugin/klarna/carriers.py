"""Storefront carrier names to the shipping_company codes of Klarna's carrier partner list."""

import functools
import re

# Keys are carrier names as storefronts spell them, folded by `_fold`; values are Klarna's codes.
_CODES: dict[str, str] = {
    "dhl": "dhl",
    "dhl express": "dhl",
    "dhl ecommerce": "dhl",
    "dhl parcel": "dhl",
    "dhl paket": "dhl",
    "dhl ecommerce asia": "dhl",
    "deutsche post dhl": "dhl",
    "ups": "ups",
    "united parcel service": "ups",
    "fedex": "fedex",
    "fed ex": "fedex",
    "federal express": "fedex",
    "usps": "usps",
    "united states postal service": "usps",
    "postnord": "postnord",
    "bring": "bring",
    "posten norge": "bring",
    "royal mail": "royal-mail",
    "dpd": "dpd",
    "dpd local": "dpd",
    "dpd uk": "dpd",
    "gls": "gls",
    "hermes": "hermes",
    "evri": "evri",
    "tnt": "tnt",
    "postnl": "postnl",
    "bpost": "bpost",
    "bpost international": "bpost",
    "colissimo": "colissimo",
    "chronopost": "chronopost",
    "correos": "correos",
    "posti": "posti",
    "budbee": "budbee",
    "instabox": "instabox",
    "db schenker": "db-schenker",
    "schenker": "db-schenker",
    "canada post": "canada-post",
    "australia post": "australia-post",
    "new zealand post": "new-zealand-post",
    "swiss post": "swiss-post",
    "austrian post": "austrian-post",
}


def _fold(name: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", name.lower()).split())


@functools.lru_cache(maxsize=1024)
def klarna_carrier(name: str) -> str:
    """Klarna's code for a known carrier ("Royal Mail" -> "royal-mail"); other names unchanged."""
    return _CODES.get(_fold(name), name.strip())

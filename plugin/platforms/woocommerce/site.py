"""A WooCommerce site's address: normalised as stored, and compared with the one a webhook names."""

from urllib.parse import urlsplit

_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
_DEFAULT_PORTS = {"https": 443, "http": 80}


def normalize_site_url(url: str) -> str:
    """A WooCommerce site URL as stored: lowercase scheme and host, no default port, no trailing
    slash; the path (a WordPress in a subdirectory) kept. Raises ValueError saying what is wrong.

    https only: WooCommerce takes REST API keys over plain http only with OAuth 1.0a signatures;
    http is allowed for a test site on this machine (localhost, 127.0.0.1).
    """
    canonical = _canonical(url)
    if canonical.startswith("http://") and urlsplit(canonical).hostname not in _LOOPBACK:
        raise ValueError(
            "Use the site's https:// address: WooCommerce accepts API keys over https only "
            "(http works only for a test site on this machine)."
        )
    return canonical


def same_site(source: str | None, site_url: str | None) -> bool:
    """Whether an `X-WC-Webhook-Source` (WordPress's `home_url('/')`) names the shop's site."""
    if not source or not site_url:
        return False
    try:
        return _canonical(source) == _canonical(site_url)
    except ValueError:
        return False


def _canonical(url: str) -> str:
    text = url.strip()
    if not text or any(c.isspace() for c in text) or not text.isprintable():
        raise ValueError("Enter the site's address, as in https://shop.example.")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError("A site URL starts with https://.")
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise ValueError("A site URL has no user name, query or fragment.")
    host = (parts.hostname or "").lower()
    if not host:
        raise ValueError("A site URL names its host, as in https://shop.example.")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("The port of the site URL is not a number.") from None
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        netloc += f":{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"

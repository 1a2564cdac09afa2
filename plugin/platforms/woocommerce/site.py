"""A WooCommerce site's address: normalised as stored, and compared with the one a webhook names;
and the time zone its WordPress is set to, as its REST API's index says it."""

import asyncio
import logging
from urllib.parse import urlsplit

import httpx2
import msgspec

from plugin import outbound
from plugin.web.forms import time_zone_problem

# WordPress's REST API index (`/wp-json/`), asked for its time zone alone: the whole index lists
# every route of every plugin. It answers without the REST API key, which is not sent to it.
INDEX_PATH = "/wp-json/"
INDEX_QUERY = {"_fields": "timezone_string,gmt_offset"}
# The index is asked once, while `shop add` waits: a short wait in all (connect, a slow answer
# trickling in), then UTC.
INDEX_SECONDS = 5.0

log = logging.getLogger("plugin.platforms.woocommerce.site")


class _Index(msgspec.Struct):
    """What is read of the index: WordPress's Settings → General → Timezone. A city chosen
    there is `timezone_string`'s IANA name; an offset chosen instead (UTC+1) leaves it empty and
    sets only `gmt_offset`, which names no zone (UTC+1 is Paris's in winter and London's in
    summer) and is not read."""

    timezone_string: str | None = None


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


async def site_time_zone(http: httpx2.AsyncClient, site_url: str) -> str | None:
    """The IANA time zone the site's WordPress names, for a new shop to start in; None when it
    names none (an offset chosen, or no index: a site that turned it off or moved it), or one
    this machine does not know, or the site did not answer as WordPress does. Logged, without
    the site's answer, either way; never raised: the shop is added in UTC then."""
    try:
        async with asyncio.timeout(INDEX_SECONDS):
            response = await http.get(
                site_url.rstrip("/") + INDEX_PATH,
                params=INDEX_QUERY,
                headers={"Accept": "application/json"},
            )
    except httpx2.HTTPError as exc:
        log.warning(
            "woocommerce time zone not read",
            extra={"site_url": site_url, "error": outbound.describe(exc)},
        )
        return None
    except TimeoutError:
        log.warning(
            "woocommerce time zone not read",
            extra={"site_url": site_url, "error": f"no answer within {INDEX_SECONDS:g} s"},
        )
        return None
    if not response.is_success:
        log.warning(
            "woocommerce time zone not read",
            extra={"site_url": site_url, "error": f"HTTP {response.status_code}"},
        )
        return None
    try:
        zone = _index(response.content).timezone_string or ""
    except msgspec.MsgspecError:
        log.warning(
            "woocommerce time zone not read",
            extra={"site_url": site_url, "error": "not a WordPress REST API index"},
        )
        return None
    if not zone or time_zone_problem(zone):
        log.info("woocommerce site names no time zone known here", extra={"site_url": site_url})
        return None
    return zone


_index = msgspec.json.Decoder(_Index).decode

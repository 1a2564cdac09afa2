"""The HTTP clients for calls to merchant-bound endpoints (status URLs, storefront APIs, OAuth token
endpoints), all built by `make_client`, with two bounds and one guard:

- a total deadline per request: connecting, the headers and the whole body, not per read, so an
  endpoint that drips its answer a byte at a time cannot hold a worker;
- a size cap on the answer, read in chunks: a success body larger than the cap fails the call, an
  error body is cut at a few KB (only its start is ever looked at);
- for the URLs a merchant enters (the status URL, the WooCommerce site), an address guard in the
  transport's connect: the host is resolved once, every address it resolves to is checked, and
  the connection goes to a checked address (no second resolution, so DNS rebinding cannot slip in
  between); TLS still verifies and sends the host name. Loopback, private, link-local, CGNAT,
  multicast, reserved and documentation ranges are refused, in any spelling (IPv4-mapped,
  -compatible, 6to4, Teredo or NAT64 forms included), unless the operator allows the network
  (KLARNA_CAPTURE_ALLOWED_PRIVATE_NETWORKS).

Operator-set URLs (the Shopify and BigCommerce API hosts) get the bounds, not the guard. Klarna,
not merchant-controlled, keeps its own client (plugin/klarna: connect 5 s, read 20 s, the retry
policy's 30 s). Redirects are never followed.
"""

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpcore2
import httpx2

from plugin.errors import PluginError
from plugin.klarna import tls_context

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Answers bigger than any the APIs give (an order with its notes, a page of 250 shipments).
MAX_BODY = 4 * 1024 * 1024
# Of an error answer only the start is read: enough for the JSON error fields we parse.
MAX_ERROR_BODY = 4 * 1024
# How long the settings page and the CLI wait for a host name to resolve.
RESOLVE_SECONDS = 3.0

# Outside the public internet, whatever the stdlib version's `is_global` tables say.
_FORBIDDEN = tuple(
    ipaddress.ip_network(cidr)
    for cidr in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",
        "100.64.0.0/10",  # CGNAT
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation
        "203.0.113.0/24",  # documentation
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, broadcast
        "::/96",  # unspecified, loopback, IPv4-compatible
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard
        "2001::/23",  # IETF protocol assignments, Teredo among them
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
        "5f00::/16",  # segment routing
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class DeadlineExceeded(httpx2.TimeoutException, PluginError):
    """No complete answer (connect, headers and body) within the request's deadline."""


class ResponseTooLarge(httpx2.RemoteProtocolError, PluginError):
    """A success answer larger than the client's cap; nothing past the cap was read."""


class AddressRefused(httpx2.ConnectError, PluginError):
    """The host resolves to an address outside the public internet that is not allowed."""


class _Refused(httpcore2.ConnectError, PluginError):
    """Raised in the network backend; surfaces as AddressRefused."""


@dataclass(frozen=True, slots=True)
class Bounds:
    """What one client's requests may take: seconds in all, seconds to connect, body bytes."""

    deadline: float
    connect: float = 5.0
    max_body: int = MAX_BODY
    max_error_body: int = MAX_ERROR_BODY


class AddressGuard:
    """Which addresses merchant-entered URLs may reach: public ones, and the allowed networks."""

    def __init__(self, allowed: Iterable[IPNetwork] = ()) -> None:
        self.allowed = tuple(allowed)

    def refuses(self, address: IPAddress) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # ::ffff:a.b.c.d is a.b.c.d to the kernel
        if address in _NAT64:
            # An IPv6-only network's way to IPv4 hosts (DNS64): the IPv4 host is the target.
            return self.refuses(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if any(address in network for network in self.allowed):
            return False
        if _outside_internet(address):
            return True
        # An IPv6 address that carries an IPv4 one reaches that one through a translator.
        return any(self.refuses(inner) for inner in _embedded(address))


def _outside_internet(address: IPAddress) -> bool:
    return (
        not address.is_global
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or any(address in network for network in _FORBIDDEN)
    )


def _embedded(address: IPAddress) -> list[ipaddress.IPv4Address]:
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    found = []
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    return found


def literal_address(host: str) -> IPAddress | None:
    """The address a URL's host spells, in any form the resolver accepts (127.1, 2130706433,
    0x7f.0.0.1, 0177.0.0.1, [::ffff:127.0.0.1]); None for a name."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefxABCDEFX." for c in host) and host[0].isdigit():
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (a literal: itself), for TCP."""
    literal = literal_address(host)
    if literal is not None:
        return [literal]
    answers = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for _family, _kind, _proto, _name, sockaddr in answers:
        address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


async def url_problem(url: str, guard: AddressGuard) -> str | None:
    """Why a merchant-entered URL may not be called (its host is or resolves to a refused
    address), None when it may. A name that does not resolve within RESOLVE_SECONDS passes:
    every call checks again where it connects."""
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        return "Enter a URL with a host name."
    if parts.username is not None or parts.password is not None:
        return "Leave the user name and password out of the URL."
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return "The port must be a number from 0 to 65535."
    try:
        with anyio.fail_after(RESOLVE_SECONDS):
            addresses = await resolve(host, port)
    except (OSError, TimeoutError, UnicodeError, ValueError):
        return None
    if any(guard.refuses(address) for address in addresses):
        return (
            f"{host} is not a public internet address (it is, or resolves to, a loopback, "
            "private, link-local or reserved one): enter the public address."
        )
    return None


class GuardedBackend(httpcore2.AsyncNetworkBackend):
    """Connects only to checked addresses: resolves the host once, refuses it when any address
    it resolves to is refused, and connects to those very addresses."""

    def __init__(self, guard: AddressGuard, inner: httpcore2.AsyncNetworkBackend | None = None):
        self._guard = guard
        self._inner = inner if inner is not None else httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        try:
            with anyio.fail_after(timeout):
                addresses = await resolve(host, port)
        except TimeoutError:
            raise httpcore2.ConnectTimeout(f"resolving {host} took too long") from None
        except (OSError, UnicodeError) as error:
            raise httpcore2.ConnectError(f"cannot resolve {host}: {error}") from None
        if not addresses or any(self._guard.refuses(address) for address in addresses):
            # The addresses stay out of the message: it reaches the merchant.
            raise _Refused(f"{host} resolves to an address outside the public internet")
        failure: httpcore2.ConnectError | httpcore2.ConnectTimeout | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as error:
                failure = error
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        raise _Refused("no unix sockets for merchant-bound calls")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx2.AsyncHTTPTransport):
    """httpx2's transport over a connection pool whose connects go through GuardedBackend."""

    def __init__(self, guard: AddressGuard, *, limits: httpx2.Limits | None = None) -> None:
        limits = limits or httpx2.Limits()
        super().__init__(verify=tls_context(), trust_env=False, limits=limits)
        # httpx2 takes no network backend: the pool is made here as it makes it, with ours.
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=tls_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(guard),
        )


class BoundedTransport(httpx2.AsyncBaseTransport):
    """Wraps a transport: the whole request within the deadline, the body read up to the cap
    (decoded, so a compressed answer is capped as it unpacks) and handed on as bytes. Made per
    request; the client closes the transport inside."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, bounds: Bounds) -> None:
        self._inner = inner
        self._bounds = bounds

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        try:
            with anyio.fail_after(self._bounds.deadline):
                response = await self._inner.handle_async_request(request)
                try:
                    body = await self._read(request, response)
                finally:
                    await response.aclose()
        except TimeoutError:
            raise DeadlineExceeded(
                f"no complete answer within {self._bounds.deadline:g} s", request=request
            ) from None
        except httpx2.ConnectError as error:
            if isinstance(error.__cause__, _Refused):
                raise AddressRefused(str(error.__cause__), request=request) from None
            raise
        headers = [
            (name, value)
            for name, value in response.headers.multi_items()
            if name.lower() not in ("content-encoding", "content-length", "transfer-encoding")
        ]
        return httpx2.Response(
            response.status_code,
            headers=headers,
            content=body,
            request=request,
            extensions={k: v for k, v in response.extensions.items() if k != "network_stream"},
        )

    async def _read(self, request: httpx2.Request, response: httpx2.Response) -> bytes:
        success = 200 <= response.status_code < 300
        cap = self._bounds.max_body if success else self._bounds.max_error_body
        declared = response.headers.get("Content-Length", "")
        if success and declared.isdigit() and int(declared) > cap:
            raise ResponseTooLarge(
                f"the answer says it has {declared} bytes, more than {cap}", request=request
            )
        response.request = request
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size > cap:
                if success:
                    raise ResponseTooLarge(f"the answer has more than {cap} bytes", request=request)
                break  # an error answer: its start is all we look at
        return b"".join(chunks)[:cap]


class _BoundedClient(httpx2.AsyncClient):
    """An httpx2 client whose every transport, whichever it picks for a URL (its own, a test's,
    a proxy from the environment's HTTPS_PROXY and NO_PROXY), runs inside the bounds."""

    def __init__(self, bounds: Bounds, **options: Any) -> None:
        super().__init__(**options)
        self._bounds = bounds

    def _transport_for_url(self, url: httpx2.URL) -> httpx2.AsyncBaseTransport:
        return BoundedTransport(super()._transport_for_url(url), self._bounds)


def make_client(
    bounds: Bounds,
    *,
    guard: AddressGuard | None,
    transport: httpx2.AsyncBaseTransport | None = None,
) -> httpx2.AsyncClient:
    """A client for merchant-bound calls: bounded always; address-guarded when `guard` is given,
    and then without the environment's proxies (a proxy would reach what the guard refuses).
    `transport` (tests) replaces the network below the bounds."""
    if transport is None and guard is not None:
        transport = GuardedTransport(guard)
    return _BoundedClient(
        bounds,
        transport=transport,
        verify=tls_context(),
        # Per-read timeouts too, as a second line under the deadline.
        timeout=httpx2.Timeout(bounds.deadline, connect=bounds.connect),
        follow_redirects=False,
        trust_env=guard is None,
        # Uncompressed answers, so the cap counts what we hold.
        headers={"Accept-Encoding": "identity"},
    )


def describe(error: BaseException) -> str:
    """A short account of a failed call for the activity page: our words, never the remote's."""
    if isinstance(error, AddressRefused):
        return "the address is refused: it is not on the public internet"
    if isinstance(error, DeadlineExceeded):
        return str(error)
    if isinstance(error, ResponseTooLarge):
        return "the answer is too large"
    return type(error).__name__

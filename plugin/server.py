"""The HTTP server `serve` runs: uvicorn with httptools, and the limits uvicorn leaves out.

uvicorn with httptools bounds neither the size of a request's head (its line and headers: the
parser gathers a header line whole, so one 100 MB line costs 100 MB) nor the time to send it:
its only timer is keep-alive, the idle time between requests. A new connection that sends
nothing, or a byte a second, stays open for as long as its client likes. `LimitedHttpTools`
adds both, and a deadline for the body once the head is in:

- the head (request line and headers) is at most `MAX_HEAD_BYTES`; past it the answer is 431
  and the connection closes, the parser having held at most that plus one read;
- the head must be complete within `HEAD_SECONDS` of the connection opening, or of the first
  byte of the next request on a kept-alive connection; and the body within `BODY_SECONDS` of
  the head. A late client's connection is closed (the app sees a disconnect).

A reverse proxy in front (nginx, a cloud load balancer) is the first line with limits of its own;
these hold when it is missing or lets more through.
"""

import asyncio
import errno
import ipaddress
import socket
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from plugin.config import TRUSTED_PROXIES
from plugin.errors import PluginError

MAX_HEAD_BYTES = 32 * 1024
# Equal, so that a request's new deadline is never before the timer already set (no new timer).
HEAD_SECONDS = 15.0
BODY_SECONDS = 15.0
KEEP_ALIVE_SECONDS = 5
LINGER_SECONDS = 1.0  # after a refusal, for the answer to reach a client still sending


class HeadTooLarge(PluginError):
    """Raised in a parser callback: stops the parser at once."""


class LimitedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bound on the size of a request's head and deadlines
    for its head and body."""

    max_head_bytes = MAX_HEAD_BYTES
    head_seconds = HEAD_SECONDS
    body_seconds = BODY_SECONDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # between requests, or reading one's line and headers
        self._head_bytes = 0  # bytes fed to the parser since this head began
        self._head_length = 0  # of the line and headers parsed so far
        # The current deadline (loop time) and the one timer that checks it: a request only
        # moves the deadline, and the timer, when it fires early, sets itself for the rest.
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._discarding = False  # refused: what comes is read and dropped until the close

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._set_deadline(self.head_seconds)

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        self._unset_keepalive_if_required()
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, HeadTooLarge):
                self._refuse_head()
                return
            self._parser_error()
            return
        except httptools.HttpParserError:
            self._parser_error()
            return
        except httptools.HttpParserUpgrade:
            # As uvicorn does (no WebSocket routes here: it warns and carries on).
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        # A head still incomplete after all it was fed is that long, whatever the callbacks saw.
        if self._in_head and self._head_bytes > self.max_head_bytes:
            self._refuse_head()

    def _parser_error(self) -> None:
        message = "Invalid HTTP request received."
        self.logger.warning(message)
        self.send_400_response(message)

    def _refuse_head(self) -> None:
        self._set_deadline(None)
        message = f"Request line and headers over {self.max_head_bytes} bytes."
        self.logger.debug(message)  # at DEBUG: anyone can send these, a line each
        content = [
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: " + str(len(message)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
            message.encode(),
        ]
        self.transport.write(b"".join(content))
        # Closed with the rest of the head unread, the socket would be reset, the answer lost
        # with it: end our side, discard what still comes, and close shortly after.
        self._discarding = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)

    # Parser callbacks: the head's bytes are counted as they come, so that a head that fits in
    # one read is refused too, before the app sees it.

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_length = 0
        if self._deadline is None:  # the first byte of a request on a kept-alive connection
            self._set_deadline(self.head_seconds)

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def _count(self, length: int) -> None:
        self._head_length += length
        if self._head_length > self.max_head_bytes:
            raise HeadTooLarge

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._set_deadline(self.body_seconds)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._set_deadline(None)
        self._in_head = True
        self._head_bytes = 0
        super().on_message_complete()

    def _set_deadline(self, seconds: float | None) -> None:
        if seconds is None:
            self._deadline = None
            return
        self._deadline = self.loop.time() + seconds
        if self._timer is not None and self._timer.when() <= self._deadline:
            return  # it will find the new deadline when it fires
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(self._deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        if self._deadline is None:
            return
        if self.loop.time() < self._deadline:  # moved since the timer was set
            self._timer = self.loop.call_at(self._deadline, self._check_deadline)
            return
        self._deadline = None
        self._late()

    def _late(self) -> None:
        """A head or body not in by its deadline: the connection closes, unless a response is
        under way (a pipelined request waits for it unread), which then ends the connection."""
        if self.cycle is not None and not self.cycle.response_complete and self._in_head:
            self.cycle.keep_alive = False
            return
        if not self.transport.is_closing():
            self.logger.debug("Request not received in time: connection closed.")
            self.transport.close()


def config(
    app: Any,
    *,
    host: str,
    port: int,
    protocol: type[LimitedHttpTools] = LimitedHttpTools,
    trusted_proxies: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network] = TRUSTED_PROXIES,
    **options: Any,
) -> uvicorn.Config:
    """How `serve` runs `app`: uvicorn with the limited httptools protocol (tests shorten its
    deadlines in a subclass), its logs left to ours, and no access log.

    X-Forwarded-Proto and X-Forwarded-For are believed from `trusted_proxies` only (the
    reverse proxy's addresses, `KLARNA_CAPTURE_TRUSTED_PROXIES`): behind a proxy that ends TLS,
    a request it forwards is an https one, and what the app builds from the request (Starlette's
    redirect of a path with a trailing slash) names https. Given here, always, so that uvicorn's
    own FORWARDED_ALLOW_IPS variable is never a second, unchecked source."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        log_config=None,
        access_log=False,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        proxy_headers=True,
        forwarded_allow_ips=[str(network) for network in trusted_proxies],
        **options,
    )


class CannotListen(PluginError):
    """`serve` cannot listen where it was asked to; the message says why and what to do."""


# What to do about the reasons a listening socket is refused most often.
_LISTEN_HINTS = {
    errno.EADDRINUSE: "the port is already in use (another serve, or another program): stop "
    "it, or choose another port with --port",
    errno.EACCES: "permission denied: ports below 1024 need root; choose one from 1024 with "
    "--port (behind a reverse proxy on 80 and 443)",
    errno.EADDRNOTAVAIL: "that is no address of this machine: give --host one of its addresses, "
    "or 0.0.0.0 for all",
}


def listen(host: str, port: int) -> list[socket.socket]:
    """Sockets bound to every address `host` names (a name may have an IPv4 and an IPv6 one),
    on `port` (0: a free port, the same on each), not yet listening: uvicorn listens on them
    once the app has started. Bound here rather than by uvicorn, so that a refusal is one line
    before anything starts, and so that `serve` knows where it really listens."""
    try:
        addresses = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise CannotListen(f"cannot listen on {host!r} (--host): {exc.strerror}") from None
    sockets: list[socket.socket] = []
    seen = set()
    try:
        for family, kind, proto, _, address in addresses:
            if address[0] in seen:
                continue
            seen.add(address[0])
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((address[0], port, *address[2:]))
            except OSError as exc:
                reason = _LISTEN_HINTS.get(exc.errno or 0, exc.strerror)
                where = f"[{address[0]}]" if family == socket.AF_INET6 else address[0]
                raise CannotListen(f"cannot listen on {where}:{port}: {reason}") from None
            port = port or sock.getsockname()[1]
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    for sock in sockets:
        sock.set_inheritable(True)
    return sockets


def url_of(sock: socket.socket) -> str:
    """The http URL a bound socket answers on."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"


class Server(uvicorn.Server):
    """uvicorn's server, which calls `announce` once it listens and the app has started, and
    `on_exit` in its event loop as soon as a signal asks it to stop: uvicorn tells the app only
    once the open requests are answered (up to its graceful timeout), and the workers should stop
    claiming before that."""

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        announce: Callable[[], None] | None = None,
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self._announce = announce
        self._on_exit = on_exit

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self._announce is not None:
            self._announce()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self._on_exit is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not serving yet, or any more: nothing runs to be told
            return
        # A signal handler interrupts the loop wherever it is: the call waits for its turn.
        loop.call_soon_threadsafe(self._on_exit)

"""What the sandboxes (Klarna, Shopify, WooCommerce, BigCommerce) share: a clock tests move by
hand, a complete HTTP answer, the state every sandbox keeps (a lock, the requests it answered,
the faults still to inject) and the POST/DELETE /sandbox/faults endpoint that sets them. Each
sandbox adds the requests' and faults' fields of its own API."""

import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Generic, Literal, TypeVar

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response

# What a proxy in front of an API answers when the API behind it is down.
BAD_GATEWAY_HTML = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n"
)


class ManualClock:
    """A clock that only moves when told to: `sandbox.clock = ManualClock(start)`."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> datetime:
        self.now += delta
        return self.now


@dataclass(frozen=True)
class Answer:
    """A complete HTTP answer, kept as is so an idempotent replay is byte-identical."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    media_type: str | None = None

    def response(self) -> Response:
        return Response(self.body, self.status, dict(self.headers), self.media_type)


def json_answer(
    status: int,
    payload: object,
    headers: Mapping[str, str] | None = None,
    *,
    encode: Callable[[Any], bytes] = msgspec.json.encode,
) -> Answer:
    return Answer(
        status,
        encode(payload),
        headers=tuple((headers or {}).items()),
        media_type="application/json",
    )


@dataclass(frozen=True, kw_only=True)
class LoggedRequest:
    """One request a sandbox answered; `status` is what was answered. Each sandbox's entries add
    whose request it was and what of its API it asked."""

    method: str
    path: str
    status: int


class FaultSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of POST /sandbox/faults; omitted fields keep their current value. The next
    `fail_next` calls fail with `fail_status`; each sandbox adds the faults of its own API."""

    fail_next: Annotated[int, Meta(ge=0)] | None = None
    fail_status: Literal[500, 502, 503] | None = None


@dataclass
class Faults:
    """The faults still to inject, as FaultSettings set them (its fields of the same names)."""

    fail_next: int = 0
    fail_status: int = 503

    def update(self, settings: FaultSettings) -> None:
        for name in self._names():
            value = getattr(settings, name, None)
            if value is not None:
                setattr(self, name, value)

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._names()}

    def take_failure(self) -> int | None:
        """The status the next call fails with, counted; None when no failure is due."""
        if self.fail_next <= 0:
            return None
        self.fail_next -= 1
        return self.fail_status

    def _names(self) -> list[str]:
        # A field the settings cannot set (a random generator) is state, not a setting.
        return [field.name for field in fields(self) if field.init]


R = TypeVar("R", bound=LoggedRequest)
F = TypeVar("F", bound=Faults)


class Sandbox(Generic[R, F]):
    """What every sandbox holds: its clock (a ManualClock in tests), a lock (tests inspect the
    state while a server runs), the requests it answered, in order, and the faults still to
    inject (made by `new_faults`)."""

    def __init__(
        self, new_faults: Callable[[], F], clock: Callable[[], datetime] | None = None
    ) -> None:
        self.clock: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))
        self.lock = threading.RLock()
        self.requests: list[R] = []
        self._new_faults = new_faults
        self.faults = new_faults()

    def log(self, entry: R) -> None:
        with self.lock:
            self.requests.append(entry)

    def set_faults(self, settings: FaultSettings) -> F:
        with self.lock:
            self.faults.update(settings)
            return self.faults

    def clear_faults(self) -> None:
        with self.lock:
            self.faults = self._new_faults()


async def token_request_params(request: Request) -> dict[str, str]:
    """The parameters of an OAuth token request, sent as a JSON object or as a form."""
    if request.headers.get("Content-Type", "").startswith("application/json"):
        try:
            decoded = msgspec.json.decode(await request.body())
        except msgspec.DecodeError:
            return {}
        return {str(k): str(v) for k, v in decoded.items()} if isinstance(decoded, dict) else {}
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def faults_endpoint(
    settings: type[FaultSettings], *, encode: Callable[[Any], bytes] = msgspec.json.encode
) -> Callable[[Request], Awaitable[Response]]:
    """POST /sandbox/faults (a `settings` body: the faults now due, as JSON) and DELETE (none)
    of the app's `state.sandbox`; `encode` writes JSON as the sandbox's API does."""

    async def endpoint(request: Request) -> Response:
        sandbox: Sandbox[Any, Any] = request.app.state.sandbox
        if request.method == "DELETE":
            sandbox.clear_faults()
            return Response(status_code=204)
        try:
            decoded = msgspec.json.decode(await request.body(), type=settings)
        except msgspec.DecodeError as exc:
            return json_answer(400, {"errors": str(exc)}, encode=encode).response()
        sandbox.set_faults(decoded)
        with sandbox.lock:
            return json_answer(200, sandbox.faults.to_json(), encode=encode).response()

    return endpoint

"""One JSON object per log line, carrying the call's `extra=` fields and never a secret.

Fields whose name says secret (password, token, key, ...) are written as "[redacted]", at any depth.
"""

import dataclasses
import logging
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

import msgspec
from uvicorn.logging import AccessFormatter

REDACTED = "[redacted]"
_SECRET_WORDS = frozenset(
    {
        "password",
        "passwords",
        "passwd",
        "secret",
        "secrets",
        "token",
        "tokens",
        "authorization",
        "apikey",
        "cookie",
        "credentials",
    }
)
_KEY_WORDS = frozenset({"key", "keys"})
# A key named after one of these is an identifier, not a credential.
_PUBLIC_KEY_KINDS = frozenset({"idempotency"})
# color_message: uvicorn's copy of the message with terminal colour codes.
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "color_message",
}
_MAX_DEPTH = 8
_ACCESS_FORMAT = '%(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s'


def configure_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """Send every log record, uvicorn's error log included, to `stream` (stderr) as JSON lines.

    Calling it again replaces the JSON handler rather than adding one. uvicorn's access log keeps
    uvicorn's own format; run uvicorn with `log_config=None` so it leaves this set-up alone.
    """
    levels = logging.getLevelNamesMapping()
    if level.upper() not in levels:
        raise ValueError(f"unknown log level {level!r}")
    root = logging.getLogger()
    for handler in root.handlers[:]:
        if isinstance(handler, _JsonHandler):
            root.removeHandler(handler)
    handler = _JsonHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(levels[level.upper()])

    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.setLevel(logging.NOTSET)
        logger.propagate = True
    access = logging.getLogger("uvicorn.access")
    if not access.handlers:
        access_handler = logging.StreamHandler(sys.stdout)
        access_handler.setFormatter(AccessFormatter(_ACCESS_FORMAT))
        access.addHandler(access_handler)
        access.setLevel(logging.INFO)
        access.propagate = False


class JsonFormatter(logging.Formatter):
    """`time`, `level`, `logger`, `message`, `error` (when there is an exception), then the extras.

    An extra named like one of those fixed fields is written as `extra_<name>`.
    """

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info is not None and record.exc_info[1] is not None:
            line["error"] = _one_line(record.exc_info[1])
        for name, value in vars(record).items():
            if name in _RECORD_FIELDS:
                continue
            shown = REDACTED if is_secret_name(name) else _clean(value, 0)
            line[f"extra_{name}" if name in line else name] = shown
        return msgspec.json.encode(line, enc_hook=_as_text).decode()


def is_secret_name(name: str) -> bool:
    """Whether a field or header called `name` holds a credential (`webhook_secret`, `apiKey`)."""
    words = re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower())
    for position, word in enumerate(words):
        if word in _SECRET_WORDS:
            return True
        if word in _KEY_WORDS and (position == 0 or words[position - 1] not in _PUBLIC_KEY_KINDS):
            return True
    return False


class _JsonHandler(logging.StreamHandler[TextIO]):
    """The handler `configure_logging` owns, told apart from anyone else's."""


def _clean(value: Any, depth: int) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if depth >= _MAX_DEPTH:
        return "[too deep]"
    if isinstance(value, msgspec.Struct):
        value = msgspec.structs.asdict(value)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {
            str(key): REDACTED if is_secret_name(str(key)) else _clean(item, depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(item, depth + 1) for item in value]
    # Left to msgspec (datetime, UUID, Decimal, enums, ...) or to _as_text.
    return value


def _as_text(value: Any) -> str:
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def _one_line(error: BaseException) -> str:
    text = " ".join(_as_text(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _timestamp(created: float) -> str:
    moment = datetime.fromtimestamp(created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest

from plugin.logs import JsonFormatter, configure_logging, is_secret_name

UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    root_level = root.level
    saved = {
        name: (
            logging.getLogger(name).handlers[:],
            logging.getLogger(name).level,
            logging.getLogger(name).propagate,
        )
        for name in UVICORN_LOGGERS
    }
    yield
    # Only ours: pytest adds and removes its own capture handlers around every phase.
    for handler in root.handlers[:]:
        if isinstance(handler.formatter, JsonFormatter):
            root.removeHandler(handler)
    root.setLevel(root_level)
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


@pytest.fixture
def stream() -> io.StringIO:
    stream = io.StringIO()
    configure_logging("DEBUG", stream)
    return stream


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_one_json_object_per_record(stream: io.StringIO) -> None:
    log = logging.getLogger("plugin.worker")
    log.info("captured %s", "order-1", extra={"shop": "acme", "order": "order-1", "ms": 12.5})
    log.debug("second")

    first, second = lines(stream)
    assert first.pop("time").endswith("Z")
    assert first == {
        "level": "INFO",
        "logger": "plugin.worker",
        "message": "captured order-1",
        "shop": "acme",
        "order": "order-1",
        "ms": 12.5,
    }
    assert second["message"] == "second"
    assert second["level"] == "DEBUG"


def test_time_is_iso_8601_utc_with_milliseconds(stream: io.StringIO) -> None:
    logging.getLogger("t").info("now")
    [line] = lines(stream)
    moment = datetime.fromisoformat(line["time"])
    assert moment.tzinfo is not None
    assert moment.utcoffset() == UTC.utcoffset(None)
    assert len(line["time"]) == len("2025-01-31T12:00:00.123Z")


def test_the_level_filters(stream: io.StringIO) -> None:
    configure_logging("WARNING", stream)
    logging.getLogger("t").info("hidden")
    logging.getLogger("t").warning("shown")
    assert [line["message"] for line in lines(stream)] == ["shown"]


def test_secret_named_extras_are_redacted(stream: io.StringIO) -> None:
    logging.getLogger("t").info(
        "saved shop",
        extra={
            "klarna_password": "hunter2",
            "webhook_secret": "whsec_abc",
            "access_token": "shpat_abc",
            "secret_key": "k" * 32,
            "apiKey": "abc",
            "idempotency_key": "a1b2c3",
            "fulfillment": "gid://shopify/Fulfillment/1",
        },
    )
    [line] = lines(stream)
    assert line["klarna_password"] == "[redacted]"
    assert line["webhook_secret"] == "[redacted]"
    assert line["access_token"] == "[redacted]"
    assert line["secret_key"] == "[redacted]"
    assert line["apiKey"] == "[redacted]"
    assert line["idempotency_key"] == "a1b2c3"
    assert line["fulfillment"] == "gid://shopify/Fulfillment/1"
    for secret in ("hunter2", "whsec_abc", "shpat_abc", "kkkk"):
        assert secret not in stream.getvalue()


def test_header_values_that_are_credentials_are_redacted(stream: io.StringIO) -> None:
    headers = {
        "Authorization": "Basic dXNlcjpwYXNz",
        "X-Shopify-Access-Token": "shpat_abc",
        "x-auth-token": "abc",
        "Cookie": "session=abc",
        "X-Shopify-Topic": "fulfillments/create",
        "Klarna-Idempotency-Key": "a1b2c3",
    }
    logging.getLogger("t").info("delivery", extra={"headers": headers})
    [line] = lines(stream)
    assert line["headers"] == {
        "Authorization": "[redacted]",
        "X-Shopify-Access-Token": "[redacted]",
        "x-auth-token": "[redacted]",
        "Cookie": "[redacted]",
        "X-Shopify-Topic": "fulfillments/create",
        "Klarna-Idempotency-Key": "a1b2c3",
    }


@dataclass
class ShopRow:
    domain: str
    klarna_password: str


class Credentials(msgspec.Struct):
    username: str
    password: str


def test_secrets_inside_structures_are_redacted(stream: io.StringIO) -> None:
    logging.getLogger("t").info(
        "nested",
        extra={
            "shop_row": ShopRow("acme.myshopify.com", "hunter2"),
            "klarna": Credentials("PK_1", "hunter3"),
            "attempts": [{"refresh_token": "hunter4", "status": 401}],
        },
    )
    [line] = lines(stream)
    assert line["shop_row"] == {"domain": "acme.myshopify.com", "klarna_password": "[redacted]"}
    assert line["klarna"] == {"username": "PK_1", "password": "[redacted]"}
    assert line["attempts"] == [{"refresh_token": "[redacted]", "status": 401}]


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("password", True),
        ("klarnaPassword", True),
        ("key", True),
        ("api_key", True),
        ("X-Api-Key", True),
        ("secret_keys", True),
        ("idempotency_key", False),
        ("klarna_idempotency_key", False),
        ("keyboard", False),
        ("monkey", False),
        ("tokenizer_name", False),
        ("correlation_id", False),
        ("status", False),
    ],
)
def test_secret_names_are_whole_words(name: str, secret: bool) -> None:
    assert is_secret_name(name) is secret


class Opaque:
    def __str__(self) -> str:
        return "opaque-thing"


def test_values_json_cannot_hold_are_written_as_text(stream: io.StringIO) -> None:
    logging.getLogger("t").info(
        "odd values",
        extra={"thing": Opaque(), "path": Path("/srv/var"), "amount": Decimal("19.99")},
    )
    [line] = lines(stream)
    assert line["thing"] == "opaque-thing"
    assert line["path"] == "/srv/var"
    assert line["amount"] == "19.99"


def test_an_exception_is_rendered_in_one_line(stream: io.StringIO) -> None:
    try:
        raise ValueError("bad amount\n  in line 2")
    except ValueError:
        logging.getLogger("t").exception("capture failed", extra={"job": 7})
    [line] = lines(stream)
    assert line["error"] == "ValueError: bad amount in line 2"
    assert line["job"] == 7
    assert line["level"] == "ERROR"


def test_an_extra_named_like_a_fixed_field_is_kept_aside(stream: io.StringIO) -> None:
    logging.getLogger("t").warning("klarna call failed", extra={"error": "ConnectTimeout"})
    try:
        raise KeyError("order")
    except KeyError:
        logging.getLogger("t").exception("crashed", extra={"error": "mine", "level": "x"})
    plain, crashed = lines(stream)
    assert plain["error"] == "ConnectTimeout"
    assert crashed["error"] == "KeyError: 'order'"
    assert crashed["extra_error"] == "mine"
    assert crashed["level"] == "ERROR"
    assert crashed["extra_level"] == "x"


def test_configuring_twice_still_writes_one_line_per_record() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("INFO", first)
    handlers = len(logging.getLogger().handlers), len(logging.getLogger("uvicorn.access").handlers)
    configure_logging("INFO", second)
    logging.getLogger("t").info("once")
    assert first.getvalue() == ""
    assert [line["message"] for line in lines(second)] == ["once"]
    assert handlers == (
        len(logging.getLogger().handlers),
        len(logging.getLogger("uvicorn.access").handlers),
    )


def test_uvicorn_error_log_goes_through_the_json_handler(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # As uvicorn's default logging config leaves them.
    uvicorn_logger = logging.getLogger("uvicorn")
    uvicorn_logger.addHandler(logging.StreamHandler(io.StringIO()))
    uvicorn_logger.propagate = False
    logging.getLogger("uvicorn.access").handlers.clear()

    stream = io.StringIO()
    configure_logging("INFO", stream)
    logging.getLogger("uvicorn.error").info("Application startup complete.")
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "POST", "/webhooks/shopify", "1.1", 200
    )

    [line] = lines(stream)
    assert line["logger"] == "uvicorn.error"
    assert line["message"] == "Application startup complete."
    access_log = capsys.readouterr().out
    assert '127.0.0.1:5000 - "POST /webhooks/shopify HTTP/1.1" 200' in access_log
    assert not access_log.lstrip().startswith("{")


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level 'LOUD'"):
        configure_logging("LOUD", io.StringIO())

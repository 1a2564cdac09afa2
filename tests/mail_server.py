"""A real SMTP server on loopback (aiosmtpd) that keeps what it receives, for the tests of the
mail the service sends: sign-in links and failure alerts."""

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

from tests.helpers import free_port


class Inbox:
    """What the server accepted, in order; filled by the server's thread before it answers 250,
    so that a message the client saw accepted is here."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: list[tuple[list[str], EmailMessage]] = []
        self.received = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        received = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(received, EmailMessage)
        with self._lock:
            self._messages.append((list(envelope.rcpt_tos), received))
        self.received.set()
        return "250 Message accepted for delivery"

    @property
    def messages(self) -> list[tuple[list[str], EmailMessage]]:
        """(envelope recipients, message) of each mail received."""
        with self._lock:
            return list(self._messages)


@contextmanager
def smtp_server() -> Iterator[tuple[Inbox, str]]:
    """A running server and the KLARNA_CAPTURE_SMTP_URL that reaches it (plain SMTP on
    loopback: no TLS to offer, so `starttls=off`)."""
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, f"smtp://127.0.0.1:{port}?starttls=off"
    finally:
        controller.stop()


def body(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content

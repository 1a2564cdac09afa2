"""The Klarna connection test: whether Klarna accepts a shop's API credentials, asked once with a
short deadline. The settings page runs it on demand and before it saves credentials, and so does
`shop set-klarna`; either way what was typed is saved, with a warning when Klarna did not accept
it (shipments then wait on the credentials instead of failing)."""

import uuid
from typing import Literal

import anyio
import httpx2
import msgspec

from plugin.klarna import Credentials, KlarnaClient, KlarnaError, RetryPolicy
from plugin.klarna.client import UNAUTHORIZED_HINT
from plugin.klarna.models import Environment, Region

# How long the test may take, all in: a page that saves must not hang on a Klarna that does not
# answer (the pool's own timeouts are 5 s to connect and 20 s to read).
CONNECTION_TEST_SECONDS = 5.0

Outcome = Literal["accepted", "refused", "unreachable"]

# What each outcome means, as the settings page and the CLI say it.
OUTCOME_TEXTS: dict[Outcome, str] = {
    "accepted": "Klarna accepted these credentials.",
    "refused": f"Refused: {UNAUTHORIZED_HINT}.",
    "unreachable": "Klarna could not be reached to test these credentials; try again later.",
}


class ConnectionTest(msgspec.Struct, frozen=True, kw_only=True):
    outcome: Outcome
    detail: str = ""  # Klarna's answer (status, code, correlation id), never the password

    @property
    def text(self) -> str:
        return OUTCOME_TEXTS[self.outcome]


async def check_credentials(
    http: httpx2.AsyncClient,
    *,
    username: str,
    password: str,
    region: Region,
    environment: Environment,
    url: str | None = None,
    deadline: float = CONNECTION_TEST_SECONDS,
) -> ConnectionTest:
    """Read an order that cannot exist (a fresh random id): Klarna answers 404 to credentials it
    accepts and 401 (or 403) to others; no answer within `deadline` is `unreachable`."""
    if not username or not password:
        return ConnectionTest(outcome="refused", detail="no API username or password")
    client = KlarnaClient(
        Credentials(username, password),
        region=region,
        environment=environment,
        url=url,
        http=http,
        retry=RetryPolicy(attempts=1),
    )
    with anyio.move_on_after(deadline):
        try:
            await client.read_order(str(uuid.uuid4()))
        except KlarnaError as error:
            if error.status == 404:
                return ConnectionTest(outcome="accepted")
            if error.status in (401, 403):
                return ConnectionTest(outcome="refused", detail=str(error))
            return ConnectionTest(outcome="unreachable", detail=str(error))
        return ConnectionTest(outcome="accepted")
    return ConnectionTest(
        outcome="unreachable", detail=f"Klarna did not answer within {deadline:g} s"
    )

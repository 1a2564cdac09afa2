"""The BigCommerce install pieces on their own: `signed_payload_jwt` verification (every way a
payload can be wrong) and the token endpoint's answers, secrets kept out of every message."""

import time
from collections.abc import Callable

import httpx2
import jwt
import pytest

from plugin.platforms.bigcommerce.oauth import AccessToken, BigCommerceOAuthError, exchange_code
from plugin.platforms.bigcommerce.signatures import SignedPayloadError, verify_signed_payload
from plugin.sandbox.bigcommerce import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, signed_payload_jwt

STORE = "z4zn3wo"
NOW = 1_800_000_000.0


def verify(token: str, **kwargs: float) -> object:
    return verify_signed_payload(
        token, client_id=DEFAULT_CLIENT_ID, client_secret=DEFAULT_CLIENT_SECRET, now=NOW, **kwargs
    )


def test_a_payload_from_bigcommerce_names_its_store_and_user() -> None:
    token = signed_payload_jwt(
        DEFAULT_CLIENT_SECRET, DEFAULT_CLIENT_ID, STORE, now=NOW - 10, jti="j-1"
    )

    payload = verify_signed_payload(
        token, client_id=DEFAULT_CLIENT_ID, client_secret=DEFAULT_CLIENT_SECRET, now=NOW
    )

    assert (payload.store_hash, payload.user_id, payload.owner_id, payload.jti) == (
        STORE,
        9876543,
        7654321,
        "j-1",
    )
    assert payload.expires_at == int(NOW - 10) + 24 * 3600


def claims(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "aud": DEFAULT_CLIENT_ID,
        "iss": "bc",
        "iat": int(NOW),
        "nbf": int(NOW),
        "exp": int(NOW) + 3600,
        "jti": "j",
        "sub": f"stores/{STORE}",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: jwt.encode(claims(), "x" * 40, algorithm="HS256"), "signature does not match"),
        (lambda: jwt.encode(claims(aud="other-app"), DEFAULT_CLIENT_SECRET), "another app"),
        (lambda: jwt.encode(claims(iss="evil"), DEFAULT_CLIENT_SECRET), "not issued by"),
        (lambda: jwt.encode(claims(exp=int(NOW) - 60), DEFAULT_CLIENT_SECRET), "expired 60 s"),
        (lambda: jwt.encode(claims(nbf=int(NOW) + 60), DEFAULT_CLIENT_SECRET), "valid only in"),
        (lambda: jwt.encode(claims(sub="stores/../x"), DEFAULT_CLIENT_SECRET), "sub is not"),
        (lambda: jwt.encode(claims(sub=None), DEFAULT_CLIENT_SECRET), "lacks the sub claim"),
        (lambda: jwt.encode(claims(), DEFAULT_CLIENT_SECRET * 2, algorithm="HS512"), "HS256"),
        (lambda: jwt.encode(claims(), None, algorithm="none"), "HS256"),
        (lambda: "not.a.jwt", "malformed"),
        (lambda: "", "missing"),
    ],
)
def test_a_payload_that_does_not_check_out_is_refused(make: Callable[[], str], reason: str) -> None:
    with pytest.raises(SignedPayloadError, match=reason) as caught:
        verify(make())
    assert DEFAULT_CLIENT_SECRET not in str(caught.value)


def test_a_few_seconds_of_clock_skew_are_forgiven() -> None:
    token = jwt.encode(claims(nbf=int(NOW) + 3, exp=int(NOW) - 3), DEFAULT_CLIENT_SECRET)

    assert verify(token, leeway=5)


def test_an_empty_secret_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        verify_signed_payload("a.b.c", client_id="c", client_secret="")


def test_granted_scopes_cover_their_read_only_forms() -> None:
    token = AccessToken(
        access_token="tok-secret-123",
        scope="store_v2_orders store_v2_information_read_only",
        context="stores/a1",
    )

    assert token.covers(["store_v2_orders", "store_v2_orders_read_only"])
    assert not token.covers(["store_v2_products"])
    assert token.store_hash == "a1"
    assert "tok-secret-123" not in repr(token)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("answer", "status", "error"),
    [
        (
            httpx2.Response(400, json={"error": "invalid_grant", "error_description": "used"}),
            400,
            "invalid_grant",
        ),
        (httpx2.Response(502, text="<html>Bad Gateway</html>"), 502, "unreadable_answer"),
        (httpx2.Response(200, json={"access_token": "", "scope": "x"}), 200, "empty_access_token"),
    ],
)
async def test_a_refused_exchange_says_why_without_the_secret_or_code(
    answer: httpx2.Response, status: int, error: str
) -> None:
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return answer

    async with httpx2.AsyncClient(transport=httpx2.MockTransport(handler)) as http:
        with pytest.raises(BigCommerceOAuthError) as caught:
            await exchange_code(
                http,
                login_url="https://login.example",
                client_id="cid",
                client_secret="the-client-secret",
                code="the-one-time-code",
                scope="store_v2_orders",
                context="stores/a1",
                redirect_uri="https://app.example/auth/bigcommerce/callback",
            )

    assert (caught.value.status, caught.value.error) == (status, error)
    assert "the-client-secret" not in str(caught.value)
    assert "the-one-time-code" not in str(caught.value)
    assert str(seen[0].url) == "https://login.example/oauth2/token"


@pytest.mark.anyio
async def test_an_unreachable_token_endpoint_is_named_by_its_kind_only() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("connect failed: the-client-secret", request=request)

    async with httpx2.AsyncClient(transport=httpx2.MockTransport(handler)) as http:
        with pytest.raises(BigCommerceOAuthError) as caught:
            await exchange_code(
                http,
                login_url="https://login.example",
                client_id="cid",
                client_secret="the-client-secret",
                code="c",
                scope="s",
                context="stores/a1",
                redirect_uri="https://app.example/cb",
            )

    assert (caught.value.status, caught.value.error) == (None, "ConnectError")
    assert "the-client-secret" not in str(caught.value)


def test_payload_clock_defaults_to_now() -> None:
    token = signed_payload_jwt(DEFAULT_CLIENT_SECRET, DEFAULT_CLIENT_ID, STORE)

    payload = verify_signed_payload(
        token, client_id=DEFAULT_CLIENT_ID, client_secret=DEFAULT_CLIENT_SECRET
    )

    assert payload.expires_at > time.time()

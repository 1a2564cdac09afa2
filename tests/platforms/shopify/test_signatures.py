import base64
import hashlib
import hmac
import json
import time
import urllib.parse
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.datastructures import Headers, QueryParams

from plugin.platforms.shopify import signatures
from plugin.platforms.shopify.signatures import ShopifyRequestError, ShopifySession
from plugin.signatures import WebhookVerificationError

SECRET = b"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"
OLD_SECRET = b"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"
BODY = b'{"id":4962848718,"order_id":5866213736,"status":"success","tracking_number":"1Z2345"}'


def base64_hmac(key: bytes, message: bytes) -> str:
    return base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode()


def hex_hmac(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


# --- Webhooks: X-Shopify-Hmac-Sha256 ---------------------------------------------------------


def webhook_rejection(secrets: list[bytes], header: str | None, body: bytes = BODY) -> str:
    with pytest.raises(WebhookVerificationError) as caught:
        signatures.verify_shopify_webhook(secrets, header, body)
    return str(caught.value)


def test_webhook_signed_with_the_secret_is_accepted() -> None:
    signatures.verify_shopify_webhook([SECRET], base64_hmac(SECRET, BODY), BODY)


def test_webhook_header_is_found_whatever_its_case_in_starlette_headers() -> None:
    headers = Headers({"x-shopify-hmac-sha256": base64_hmac(SECRET, BODY)})
    signatures.verify_shopify_webhook([SECRET], headers.get("X-Shopify-Hmac-Sha256"), BODY)


def test_webhook_signed_with_the_previous_secret_is_accepted_during_rotation() -> None:
    header = base64_hmac(OLD_SECRET, BODY)
    signatures.verify_shopify_webhook([SECRET, OLD_SECRET], header, BODY)
    signatures.verify_shopify_webhook([OLD_SECRET, SECRET], header, BODY)


def test_webhook_signed_with_another_secret_is_rejected() -> None:
    message = webhook_rejection([SECRET], base64_hmac(OLD_SECRET, BODY))
    assert message == "X-Shopify-Hmac-Sha256 matches no known secret"


def test_webhook_without_secrets_is_rejected() -> None:
    assert "matches no known secret" in webhook_rejection([], base64_hmac(SECRET, BODY))


@pytest.mark.parametrize("position", [0, 1, len(BODY) // 2, len(BODY) - 1])
def test_webhook_with_one_changed_body_byte_is_rejected(position: int) -> None:
    tampered = bytearray(BODY)
    tampered[position] ^= 0x01
    header = base64_hmac(SECRET, BODY)
    assert "matches no known secret" in webhook_rejection([SECRET], header, bytes(tampered))


@pytest.mark.parametrize(
    "body", [BODY + b"\n", BODY[:-1], b"", json.dumps(json.loads(BODY)).encode()]
)
def test_webhook_is_checked_over_the_raw_bytes(body: bytes) -> None:
    assert "matches no known secret" in webhook_rejection([SECRET], base64_hmac(SECRET, BODY), body)


@pytest.mark.parametrize("header", [None, ""])
def test_webhook_without_the_header_is_rejected(header: str | None) -> None:
    assert webhook_rejection([SECRET], header) == "missing X-Shopify-Hmac-Sha256 header"


@pytest.mark.parametrize(
    "header",
    [
        "not base64!",
        base64_hmac(SECRET, BODY)[:-2],  # padding dropped
        base64_hmac(SECRET, BODY) + "\n",
        " " + base64_hmac(SECRET, BODY),
        base64.b64encode(hmac.new(SECRET, BODY, hashlib.sha256).digest()[:31]).decode(),
        base64.urlsafe_b64encode(b"\xfb" * 32).decode(),
        hmac.new(SECRET, BODY, hashlib.sha256).hexdigest(),  # hex, as the query hmac is
    ],
)
def test_webhook_with_a_garbled_header_is_rejected(header: str) -> None:
    assert webhook_rejection([SECRET], header) == (
        "X-Shopify-Hmac-Sha256 is not a base64 SHA-256 digest"
    )


def test_webhook_refuses_an_empty_secret() -> None:
    with pytest.raises(ValueError, match="empty Shopify client secret"):
        signatures.verify_shopify_webhook([SECRET, b""], base64_hmac(b"", BODY), BODY)


# --- OAuth and admin-link queries: the hmac parameter ----------------------------------------

# The worked example of Shopify's "Implement authorization code grant manually" guide,
# https://shopify.dev/docs/apps/build/authentication-authorization/access-tokens/authorization-code-grant
# (earlier editions name the secret "hush" and the shop "some-shop"; the current one shows
# placeholders next to the same digest).
DOC_SECRET = b"hush"
DOC_QUERY = (
    "code=0907a61c0c8d55e99db179b68161bc00"
    "&hmac=700e2dadb827fcc8609e9d5ce208b2e9cdaab9df07390d2cbca10d7c328fc4bf"
    "&shop=some-shop.myshopify.com&state=0.6784241404160823&timestamp=1337178173"
)
DOC_TIMESTAMP = 1337178173
# The vector of Shopify's own Python library (test_hmac_calculation, "the secret and parameter
# examples given in the Shopify API documentation").
LIBRARY_QUERY = {
    "shop": "some-shop.myshopify.com",
    "code": "a94a110d86d2452eb3e2af4cfb8a3828",
    "timestamp": "1337178173",
    "hmac": "2cb1a277650a659f1b11e92a4a64275b128e037f2c3390e3c8fd2d8721dac9e2",
}

NOW = 1_700_000_000
SHOP = "klarna-test.myshopify.com"


def signed_query(key: bytes, message: str, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [*pairs, ("hmac", hex_hmac(key, message))]


def install_query(key: bytes = SECRET, timestamp: int = NOW) -> list[tuple[str, str]]:
    pairs = [("shop", SHOP), ("timestamp", str(timestamp))]
    return signed_query(key, f"shop={SHOP}&timestamp={timestamp}", pairs)


def query_rejection(
    secrets: list[bytes], query: list[tuple[str, str]], now: float = NOW, max_age: float = 300
) -> str:
    with pytest.raises(ShopifyRequestError) as caught:
        signatures.verify_shopify_query(secrets, query, now=now, max_age=max_age)
    return str(caught.value)


def test_query_accepts_the_documented_example() -> None:
    pairs = urllib.parse.parse_qsl(DOC_QUERY, keep_blank_values=True)
    signatures.verify_shopify_query([DOC_SECRET], pairs, now=DOC_TIMESTAMP)


def test_query_accepts_the_shopify_library_vector_as_a_mapping() -> None:
    signatures.verify_shopify_query([DOC_SECRET], LIBRARY_QUERY, now=DOC_TIMESTAMP)


def test_query_accepts_starlette_query_params() -> None:
    params = QueryParams(DOC_QUERY)
    signatures.verify_shopify_query([DOC_SECRET], params.multi_items(), now=DOC_TIMESTAMP)
    signatures.verify_shopify_query([DOC_SECRET], params, now=DOC_TIMESTAMP)


def test_query_order_does_not_matter() -> None:
    pairs = urllib.parse.parse_qsl(DOC_QUERY)
    signatures.verify_shopify_query([DOC_SECRET], pairs[::-1], now=DOC_TIMESTAMP)


def test_query_defaults_to_the_clock() -> None:
    signatures.verify_shopify_query([SECRET], install_query(timestamp=int(time.time())))


def test_query_signed_with_the_previous_secret_is_accepted_during_rotation() -> None:
    signatures.verify_shopify_query([SECRET, OLD_SECRET], install_query(OLD_SECRET), now=NOW)
    signatures.verify_shopify_query([OLD_SECRET, SECRET], install_query(SECRET), now=NOW)


def test_query_signed_with_another_secret_is_rejected() -> None:
    message = query_rejection([SECRET], install_query(OLD_SECRET))
    assert message == "hmac parameter matches no known secret"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda q: [(k, "evil.myshopify.com" if k == "shop" else v) for k, v in q],
        lambda q: [*q, ("host", "YWRtaW4uc2hvcGlmeS5jb20")],
        lambda q: [(k, v) for k, v in q if k != "shop"],
        lambda q: [("Shop" if k == "shop" else k, v) for k, v in q],
    ],
    ids=["changed", "added", "removed", "renamed"],
)
def test_query_with_a_tampered_parameter_is_rejected(tamper: Any) -> None:
    assert "matches no known secret" in query_rejection([SECRET], tamper(install_query()))


def test_query_ignores_a_signature_parameter() -> None:
    query = [*install_query(), ("signature", "legacy-md5-value")]
    signatures.verify_shopify_query([SECRET], query, now=NOW)


def test_query_accepts_an_uppercase_hex_hmac() -> None:
    query = [(k, v.upper() if k == "hmac" else v) for k, v in install_query()]
    signatures.verify_shopify_query([SECRET], query, now=NOW)


@pytest.mark.parametrize("hmac_value", [None, ""])
def test_query_without_hmac_is_rejected(hmac_value: str | None) -> None:
    query = [(k, v) for k, v in install_query() if k != "hmac"]
    if hmac_value is not None:
        query.append(("hmac", hmac_value))
    assert query_rejection([SECRET], query) == "missing hmac parameter"


@pytest.mark.parametrize(
    "hmac_value",
    [
        "zz" * 32,
        "ab" * 31,
        "ab" * 33,
        " " + "ab" * 32,
        "ab" * 32 + "\n",
        "ab cd" + "ab" * 30,
        base64.b64encode(b"\x00" * 32).decode(),
    ],
)
def test_query_with_a_garbled_hmac_is_rejected(hmac_value: str) -> None:
    query = [(k, hmac_value if k == "hmac" else v) for k, v in install_query()]
    assert query_rejection([SECRET], query) == "hmac parameter is not one hex SHA-256 digest"


def test_query_with_two_hmacs_is_rejected() -> None:
    query = install_query()
    query.append(("hmac", dict(query)["hmac"]))
    assert query_rejection([SECRET], query) == "hmac parameter is not one hex SHA-256 digest"


# Shopify's rule: `&` and `%` become %26 and %25 in keys and values, `=` becomes %3D in keys;
# nothing else is escaped (values are signed decoded).
@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ([("a", "1&b=2"), ("c=3&d", "4")], "a=1%26b=2&c%3D3%26d=4"),
        ([("state", "100%&x")], "state=100%25%26x"),
        ([("b%y", "v")], "b%25y=v"),
        ([("state", "a=b")], "state=a=b"),
        ([("protocol", "https://"), ("q", "a+b c/é")], "protocol=https://&q=a+b c/é"),
    ],
)
def test_query_escapes_delimiters_as_shopify_does(
    pairs: list[tuple[str, str]], message: str
) -> None:
    pairs = [*pairs, ("timestamp", str(NOW))]
    query = signed_query(SECRET, f"{message}&timestamp={NOW}", pairs)
    signatures.verify_shopify_query([SECRET], query, now=NOW)


def test_query_escaping_stops_a_value_from_forging_parameters() -> None:
    # Shopify signed shop=a&extra=1; presenting the one value "a&extra=1" must not pass.
    signed_message = f"extra=1&shop={SHOP}&timestamp={NOW}"
    query = signed_query(
        SECRET, signed_message, [("extra", f"1&shop={SHOP}"), ("timestamp", str(NOW))]
    )
    assert "matches no known secret" in query_rejection([SECRET], query)


def test_query_array_parameters_are_signed_as_a_list() -> None:
    pairs = [("ids[]", "1"), ("shop", SHOP), ("ids[]", "2"), ("timestamp", str(NOW))]
    query = signed_query(SECRET, f'ids=["1", "2"]&shop={SHOP}&timestamp={NOW}', pairs)
    signatures.verify_shopify_query([SECRET], query, now=NOW)
    signatures.verify_shopify_query([SECRET], QueryParams(query).multi_items(), now=NOW)


def test_query_single_array_parameter_is_still_a_list() -> None:
    pairs = [("ids[]", "7"), ("timestamp", str(NOW))]
    query = signed_query(SECRET, f'ids=["7"]&timestamp={NOW}', pairs)
    signatures.verify_shopify_query([SECRET], query, now=NOW)


def test_query_array_order_is_signed() -> None:
    pairs = [("ids[]", "2"), ("ids[]", "1"), ("timestamp", str(NOW))]
    query = signed_query(SECRET, f'ids=["1", "2"]&timestamp={NOW}', pairs)
    assert "matches no known secret" in query_rejection([SECRET], query)


def test_query_sorts_the_escaped_pairs_as_shopify_libraries_do() -> None:
    # "id2=…" sorts before "id=…" because "2" < "="; a sort on keys alone would disagree.
    pairs = [("id", "1"), ("id2", "2"), ("timestamp", str(NOW))]
    query = signed_query(SECRET, f"id2=2&id=1&timestamp={NOW}", pairs)
    signatures.verify_shopify_query([SECRET], query, now=NOW)


def test_query_repeating_a_plain_parameter_is_rejected() -> None:
    query = [("shop", SHOP), *install_query()]
    assert query_rejection([SECRET], query) == (
        "query repeats a parameter that is not a key[] array"
    )


def test_query_with_a_parameter_and_its_array_is_rejected() -> None:
    query = [("ids", "1"), ("ids[]", "2"), *install_query()]
    assert query_rejection([SECRET], query) == "query has both a parameter and its key[] array"


@pytest.mark.parametrize("offset", [-300, -1, 0, 1, 60])
def test_query_timestamps_within_the_window_are_accepted(offset: int) -> None:
    signatures.verify_shopify_query([SECRET], install_query(timestamp=NOW + offset), now=NOW)


def test_query_with_a_stale_timestamp_is_rejected() -> None:
    message = query_rejection([SECRET], install_query(timestamp=NOW - 301))
    assert message == "timestamp is 301 s old, beyond the 300 s limit"


def test_query_with_a_future_timestamp_is_rejected() -> None:
    message = query_rejection([SECRET], install_query(timestamp=NOW + 61))
    assert message == "timestamp is 61 s ahead, beyond the 60 s skew"


def test_query_max_age_is_configurable() -> None:
    query = install_query(timestamp=NOW - 3600)
    signatures.verify_shopify_query([SECRET], query, now=NOW, max_age=3600)
    assert "old" in query_rejection([SECRET], query, max_age=3599)


def test_query_without_timestamp_is_rejected() -> None:
    query = signed_query(SECRET, f"shop={SHOP}", [("shop", SHOP)])
    assert query_rejection([SECRET], query) == "missing timestamp parameter"


@pytest.mark.parametrize(
    "timestamp", ["", f"{NOW}.5", f"-{NOW}", f" {NOW}", "1.7e9", "\u0661\u0667\u0660", "9" * 5000]
)
def test_query_with_a_timestamp_that_is_not_integer_seconds_is_rejected(timestamp: str) -> None:
    pairs = [("shop", SHOP), ("timestamp", timestamp)]
    query = signed_query(SECRET, f"shop={SHOP}&timestamp={timestamp}", pairs)
    assert query_rejection([SECRET], query) == (
        "timestamp parameter is not an integer of unix seconds"
    )


def test_query_refuses_an_empty_secret() -> None:
    with pytest.raises(ValueError, match="empty Shopify client secret"):
        signatures.verify_shopify_query([b""], install_query(b""), now=NOW)


# --- Shop domains ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shop",
    [
        "example.myshopify.com",
        "a.myshopify.com",
        "shop-1.myshopify.com",
        "1shop.myshopify.com",
        "Klarna-Test.myshopify.com",
    ],
)
def test_shop_domain_accepted(shop: str) -> None:
    assert signatures.is_shop_domain(shop)


@pytest.mark.parametrize(
    "shop",
    [
        "",
        "myshopify.com",
        ".myshopify.com",
        "-shop.myshopify.com",
        "evil.com?x.myshopify.com",
        "evil.com#.myshopify.com",
        "evil.com/.myshopify.com",
        "a.myshopify.com.evil.com",
        "x.myshopify.com\n",
        "\nx.myshopify.com",
        "x.myshopify.com\nevil.com",
        " x.myshopify.com",
        "x.myshopify.com ",
        "x.myshopify.com.",
        "x.myshopify.com/",
        "x.myshopify.com:443",
        "https://x.myshopify.com",
        "user@x.myshopify.com",
        "a.b.myshopify.com",
        "x_y.myshopify.com",
        "xmyshopify.com",
        "x.myshopifyXcom",
        "x.shopify.com",
        "\uff58.myshopify.com",  # fullwidth x
        "\u00e9.myshopify.com",
        "x%2Emyshopify.com",
    ],
)
def test_shop_domain_rejected(shop: str) -> None:
    assert not signatures.is_shop_domain(shop)


# --- Embedded-app session tokens -------------------------------------------------------------

CLIENT_ID = "client-id-123"
TOKEN_SECRET = SECRET.decode()
OLD_TOKEN_SECRET = OLD_SECRET.decode()
# The example payload of https://shopify.dev/docs/apps/build/authentication-authorization/session-tokens
CLAIMS: dict[str, Any] = {
    "iss": "https://exampleshop.myshopify.com/admin",
    "dest": "https://exampleshop.myshopify.com",
    "aud": CLIENT_ID,
    "sub": "42",
    "exp": 1591765058,
    "nbf": 1591764998,
    "iat": 1591764998,
    "jti": "f8912129-1af6-4cad-9ca3-76b0f7621087",
    "sid": "aaea182f2732d44c23057c0fea584021a4485b2bd25d3eb7fd349313ad24c685",
}
TOKEN_NOW = 1591765000
EXPECTED_SESSION = ShopifySession(
    shop="exampleshop.myshopify.com",
    user_id="42",
    session_id=CLAIMS["sid"],
    expires_at=1591765058,
)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_token(
    claims: dict[str, Any] | None = None,
    *,
    secret: str = TOKEN_SECRET,
    header: dict[str, Any] | None = None,
    **changes: Any,
) -> str:
    """A JWT assembled by hand, HMAC-SHA256 over `header.payload`, whatever `alg` claims."""
    payload = {**(CLAIMS if claims is None else claims), **changes}
    segments = [
        b64url(json.dumps(header or {"alg": "HS256", "typ": "JWT"}).encode()),
        b64url(json.dumps(payload).encode()),
    ]
    signing_input = ".".join(segments).encode()
    signature = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return f"{signing_input.decode()}.{b64url(signature)}"


def token_rejection(
    token: str,
    *,
    secrets: list[str] | None = None,
    now: float = TOKEN_NOW,
    leeway: float = 5,
) -> str:
    with pytest.raises(ShopifyRequestError) as caught:
        signatures.verify_shopify_session_token(
            token,
            client_id=CLIENT_ID,
            secrets=[TOKEN_SECRET] if secrets is None else secrets,
            now=now,
            leeway=leeway,
        )
    return str(caught.value)


def verify_token(
    token: str, *, secrets: list[str] | None = None, now: float = TOKEN_NOW
) -> ShopifySession:
    return signatures.verify_shopify_session_token(
        token, client_id=CLIENT_ID, secrets=[TOKEN_SECRET] if secrets is None else secrets, now=now
    )


def test_session_token_of_the_documented_example_is_accepted() -> None:
    assert verify_token(make_token()) == EXPECTED_SESSION


def test_session_token_made_by_pyjwt_is_accepted() -> None:
    token = jwt.encode(CLAIMS, TOKEN_SECRET, algorithm="HS256")
    assert verify_token(token) == EXPECTED_SESSION


def test_session_token_defaults_to_the_clock() -> None:
    issued = int(time.time())
    token = make_token(nbf=issued, iat=issued, exp=issued + 60)
    session = signatures.verify_shopify_session_token(
        token, client_id=CLIENT_ID, secrets=[TOKEN_SECRET]
    )
    assert session.expires_at == issued + 60


def test_session_is_frozen() -> None:
    with pytest.raises(AttributeError):
        EXPECTED_SESSION.shop = "evil.myshopify.com"  # type: ignore[misc]


def test_session_token_without_sub_or_sid_has_no_user() -> None:
    claims = {k: v for k, v in CLAIMS.items() if k not in ("sub", "sid")}
    session = verify_token(make_token(claims))
    assert (session.user_id, session.session_id) == (None, None)
    assert session.shop == "exampleshop.myshopify.com"


def test_session_token_signed_with_the_previous_secret_is_accepted_during_rotation() -> None:
    token = make_token(secret=OLD_TOKEN_SECRET)
    assert verify_token(token, secrets=[TOKEN_SECRET, OLD_TOKEN_SECRET]) == EXPECTED_SESSION
    assert verify_token(make_token(), secrets=[OLD_TOKEN_SECRET, TOKEN_SECRET]) == EXPECTED_SESSION


def test_session_token_signed_with_another_secret_is_rejected() -> None:
    message = token_rejection(make_token(secret=OLD_TOKEN_SECRET))
    assert message == "session token signature matches no known secret"
    assert token_rejection(make_token(), secrets=[]) == message


def test_session_token_with_a_tampered_payload_is_rejected() -> None:
    header, _, signature = make_token().split(".")
    forged = b64url(json.dumps({**CLAIMS, "dest": "https://evil.myshopify.com"}).encode())
    message = token_rejection(f"{header}.{forged}.{signature}")
    assert message == "session token signature matches no known secret"


@pytest.mark.parametrize("offset", [0, 4, 4.9])
def test_session_token_expired_within_the_leeway_is_accepted(offset: float) -> None:
    assert verify_token(make_token(), now=CLAIMS["exp"] + offset) == EXPECTED_SESSION


@pytest.mark.parametrize("offset", [5, 30, 86400])
def test_session_token_expired_beyond_the_leeway_is_rejected(offset: int) -> None:
    message = token_rejection(make_token(), now=CLAIMS["exp"] + offset)
    assert message == f"session token expired {offset} s ago, beyond the 5 s leeway"


def test_session_token_leeway_is_configurable() -> None:
    assert "expired" in token_rejection(make_token(), now=CLAIMS["exp"], leeway=0)
    session = signatures.verify_shopify_session_token(
        make_token(), client_id=CLIENT_ID, secrets=[TOKEN_SECRET], now=CLAIMS["exp"] + 59, leeway=60
    )
    assert session == EXPECTED_SESSION


def test_session_token_not_yet_valid_within_the_leeway_is_accepted() -> None:
    assert verify_token(make_token(), now=CLAIMS["nbf"] - 5) == EXPECTED_SESSION


def test_session_token_not_yet_valid_beyond_the_leeway_is_rejected() -> None:
    message = token_rejection(make_token(), now=CLAIMS["nbf"] - 6)
    assert message == "session token is valid only in 6 s, beyond the 5 s leeway"


@pytest.mark.parametrize("audience", ["another-client", ["another-client"], "CLIENT-ID-123"])
def test_session_token_for_another_app_is_rejected(audience: Any) -> None:
    message = token_rejection(make_token(aud=audience))
    assert message == "session token is for another app (aud)"


@pytest.mark.parametrize("claim", ["exp", "nbf", "iss", "dest", "aud"])
def test_session_token_without_a_required_claim_is_rejected(claim: str) -> None:
    claims = {k: v for k, v in CLAIMS.items() if k != claim}
    assert token_rejection(make_token(claims)) == f"session token lacks the {claim} claim"


@pytest.mark.parametrize("claim", ["exp", "nbf"])
@pytest.mark.parametrize("value", ["1591765058", 1591765058.0, True])
def test_session_token_times_must_be_integers(claim: str, value: Any) -> None:
    message = token_rejection(make_token(**{claim: value}))
    assert message == f"session token {claim} is not an integer of unix seconds"


def test_session_token_with_a_numeric_sid_is_rejected() -> None:
    assert token_rejection(make_token(sid=7)) == "session token sid is not a string"


def test_session_token_with_alg_none_is_rejected() -> None:
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(CLAIMS).encode())
    for token in (f"{header}.{payload}.", make_token(header={"alg": "none", "typ": "JWT"})):
        assert token_rejection(token) == "session token is not signed with HS256"


def test_session_token_signed_with_rs256_is_rejected() -> None:
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(CLAIMS, private_key, algorithm="RS256")
    assert token_rejection(token) == "session token is not signed with HS256"


@pytest.mark.parametrize("alg", ["RS256", "HS512", "hs256", "ES256"])
def test_session_token_claiming_another_alg_is_rejected_even_if_hmac_signed(alg: str) -> None:
    token = make_token(header={"alg": alg, "typ": "JWT"})
    assert token_rejection(token) == "session token is not signed with HS256"


@pytest.mark.parametrize(
    "iss",
    [
        "https://otherhop.myshopify.com/admin",
        "https://exampleshop.myshopify.com.evil.com/admin",
        "https://exampleshop.myshopify.com:444/admin",
        "https://exampleshop.myshopify.comadmin",
        "http://exampleshop.myshopify.com/admin",
        "exampleshop.myshopify.com/admin",
        "https://user@exampleshop.myshopify.com/admin",
        "https://exampleshop.myshop\tify.com/admin",
        "",
    ],
)
def test_session_token_whose_iss_host_is_not_its_dest_host_is_rejected(iss: str) -> None:
    assert token_rejection(make_token(iss=iss)) == "session token iss host is not its dest host"


@pytest.mark.parametrize(
    "dest",
    [
        "https://evil.com",
        "https://evil.com?x.myshopify.com",
        "https://exampleshop.myshopify.com.evil.com",
        "https://exampleshop.myshopify.com/",
        "https://exampleshop.myshopify.com:443",
        "http://exampleshop.myshopify.com",
        "exampleshop.myshopify.com",
        "https://-shop.myshopify.com",
        "https://exampleshop.myshopify.com\n",
    ],
)
def test_session_token_whose_dest_is_not_a_shop_is_rejected(dest: str) -> None:
    message = token_rejection(make_token(dest=dest, iss=f"{dest}/admin"))
    assert message == "session token dest is not https://<shop>.myshopify.com"


@pytest.mark.parametrize(("claim", "value"), [("iss", 1), ("dest", ["https://a.myshopify.com"])])
def test_session_token_with_non_text_iss_or_dest_is_rejected(claim: str, value: Any) -> None:
    assert token_rejection(make_token(**{claim: value})) == (
        "session token iss or dest is not a string"
    )


@pytest.mark.parametrize(
    "token", ["", "abc", "a.b.c", "a.b", make_token() + ".x", make_token().replace(".", "..", 1)]
)
def test_malformed_session_tokens_are_rejected(token: str) -> None:
    assert token_rejection(token) == "session token is malformed"


def test_session_token_refuses_an_empty_secret() -> None:
    with pytest.raises(ValueError, match="empty Shopify client secret"):
        verify_token(make_token(secret=""), secrets=[""])


# --- No secret material in any message -------------------------------------------------------


def test_no_error_message_carries_secret_material() -> None:
    tampered = BODY.replace(b"success", b"failure")
    messages: list[str] = [
        webhook_rejection([SECRET], base64_hmac(SECRET, BODY), tampered),
        webhook_rejection([SECRET, OLD_SECRET], "AAAA"),
        query_rejection([SECRET], [("shop", "evil.myshopify.com"), *install_query()[1:]]),
        query_rejection([SECRET], install_query(timestamp=NOW - 10_000)),
        query_rejection([SECRET], install_query(timestamp=NOW + 10_000)),
        token_rejection(make_token(secret=OLD_TOKEN_SECRET)),
        token_rejection(make_token(), now=CLAIMS["exp"] + 100),
        token_rejection(make_token(), now=CLAIMS["nbf"] - 100),
        token_rejection(make_token(aud="another-client")),
        token_rejection(make_token(header={"alg": "HS512", "typ": "JWT"})),
        token_rejection(make_token(iss="https://other.myshopify.com/admin")),
        token_rejection(make_token(dest="https://evil.com")),
    ]
    query_message = f"shop=evil.myshopify.com&timestamp={NOW}"
    material = [
        SECRET.decode(),
        OLD_SECRET.decode(),
        base64_hmac(SECRET, BODY),
        base64_hmac(SECRET, tampered),
        hex_hmac(SECRET, query_message),
        make_token().rsplit(".", 1)[1],
        make_token(secret=OLD_TOKEN_SECRET).rsplit(".", 1)[1],
    ]
    for message in messages:
        assert "\n" not in message
        for secret in material:
            assert secret not in message

import base64
import hashlib
import hmac
import re
import time

import pytest
from starlette.datastructures import Headers

from plugin import signatures
from plugin.signatures import WebhookVerificationError
from tests.reference import STANDARD_WEBHOOKS_SPEC

# The vector of the Standard Webhooks reference Python library (its test_sign_function); the
# spec document itself gives a signature but not the secret behind it.
REFERENCE_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
REFERENCE_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
REFERENCE_TIMESTAMP = 1614265330
REFERENCE_BODY = b'{"test": 2432232314}'
REFERENCE_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

KEY = bytes(range(32))
OLD_KEY = bytes(range(100, 132))
MSG_ID = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"
NOW = 1_700_000_000
BODY = b'{"type":"fulfillment.created","data":{"id":"ful_1","order_id":"ord_9"}}'


def signed_headers(
    *keys: bytes, msg_id: str = MSG_ID, timestamp: int = NOW, body: bytes = BODY
) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signatures.sign(k, msg_id, timestamp, body) for k in keys),
    }


def rejection(
    keys: list[bytes], headers: dict[str, str], body: bytes = BODY, now: float = NOW
) -> str:
    with pytest.raises(WebhookVerificationError) as caught:
        signatures.verify(keys, headers, body, now=now)
    return str(caught.value)


def test_sign_matches_the_reference_library() -> None:
    key = signatures.parse_secret(REFERENCE_SECRET)
    signature = signatures.sign(key, REFERENCE_ID, REFERENCE_TIMESTAMP, REFERENCE_BODY)
    assert signature == REFERENCE_SIGNATURE


def test_verify_accepts_the_reference_vector_and_returns_the_id() -> None:
    headers = {
        "webhook-id": REFERENCE_ID,
        "webhook-timestamp": str(REFERENCE_TIMESTAMP),
        "webhook-signature": REFERENCE_SIGNATURE,
    }
    key = signatures.parse_secret(REFERENCE_SECRET)
    assert (
        signatures.verify([key], headers, REFERENCE_BODY, now=REFERENCE_TIMESTAMP) == REFERENCE_ID
    )


def test_round_trip_with_a_new_secret() -> None:
    key = signatures.parse_secret(signatures.new_secret())
    assert signatures.verify([key], signed_headers(key), BODY, now=NOW) == MSG_ID


def test_verify_defaults_to_the_clock() -> None:
    timestamp = int(time.time())
    headers = signed_headers(KEY, timestamp=timestamp)
    assert signatures.verify([KEY], headers, BODY) == MSG_ID


def test_headers_are_found_whatever_their_case_in_starlette_headers() -> None:
    raw = signed_headers(KEY)
    headers = Headers({name.title(): value for name, value in raw.items()})
    assert signatures.verify([KEY], headers, BODY, now=NOW) == MSG_ID


def test_any_matching_entry_among_several_is_enough() -> None:
    valid = signatures.sign(KEY, MSG_ID, NOW, BODY)
    junk = signatures.sign(OLD_KEY, "msg_other", NOW, BODY)
    headers = signed_headers(KEY)
    headers["webhook-signature"] = f"{junk} v2,{junk[3:]} {valid} {junk}"
    assert signatures.verify([KEY], headers, BODY, now=NOW) == MSG_ID


def test_a_sender_rotating_its_secret_signs_with_both() -> None:
    assert signatures.verify([KEY], signed_headers(KEY, OLD_KEY), BODY, now=NOW) == MSG_ID
    assert signatures.verify([OLD_KEY], signed_headers(KEY, OLD_KEY), BODY, now=NOW) == MSG_ID


def test_a_receiver_rotating_its_secret_accepts_any_of_its_keys() -> None:
    assert signatures.verify([KEY, OLD_KEY], signed_headers(OLD_KEY), BODY, now=NOW) == MSG_ID
    assert signatures.verify([KEY, OLD_KEY], signed_headers(KEY), BODY, now=NOW) == MSG_ID


def test_wrong_key_is_rejected() -> None:
    assert "no v1 signature" in rejection([OLD_KEY], signed_headers(KEY))


def test_no_keys_rejects_everything() -> None:
    assert "no v1 signature" in rejection([], signed_headers(KEY))


@pytest.mark.parametrize("position", [0, 1, len(BODY) // 2, len(BODY) - 1])
def test_one_changed_body_byte_is_rejected(position: int) -> None:
    tampered = bytearray(BODY)
    tampered[position] ^= 0x01
    assert "no v1 signature" in rejection([KEY], signed_headers(KEY), bytes(tampered))


@pytest.mark.parametrize("body", [BODY + b" ", BODY[:-1], b""])
def test_a_longer_or_shorter_body_is_rejected(body: bytes) -> None:
    assert "no v1 signature" in rejection([KEY], signed_headers(KEY), body)


def test_verify_uses_the_raw_bytes_not_reserialized_json() -> None:
    pretty = b'{"type": "fulfillment.created", "data": {"id": "ful_1", "order_id": "ord_9"}}'
    assert "no v1 signature" in rejection([KEY], signed_headers(KEY), pretty)


def test_a_changed_id_is_rejected() -> None:
    headers = signed_headers(KEY)
    headers["webhook-id"] = MSG_ID + "x"
    assert "no v1 signature" in rejection([KEY], headers)


def test_a_changed_timestamp_is_rejected() -> None:
    headers = signed_headers(KEY)
    headers["webhook-timestamp"] = str(NOW + 1)
    assert "no v1 signature" in rejection([KEY], headers)


def test_a_zero_padded_timestamp_is_checked_as_sent() -> None:
    headers = signed_headers(KEY)
    headers["webhook-timestamp"] = f"0{NOW}"
    assert "no v1 signature" in rejection([KEY], headers)


@pytest.mark.parametrize("name", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_missing_header_is_named(name: str) -> None:
    headers = signed_headers(KEY)
    del headers[name]
    assert rejection([KEY], headers) == f"missing {name} header"


@pytest.mark.parametrize("name", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_an_empty_header_counts_as_missing(name: str) -> None:
    headers = signed_headers(KEY)
    headers[name] = ""
    assert rejection([KEY], headers) == f"missing {name} header"


@pytest.mark.parametrize(
    "timestamp",
    [
        "hello",
        f"{NOW}.5",
        f"-{NOW}",
        f"+{NOW}",
        f" {NOW}",
        "1.7e9",
        "1_700_000_000",
        "\u0661\u0667\u0660\u0660\u0660\u0660\u0660\u0660\u0660\u0660",  # Arabic-Indic digits
        "9" * 5000,
    ],
)
def test_a_timestamp_that_is_not_integer_seconds_is_rejected(timestamp: str) -> None:
    headers = signed_headers(KEY)
    headers["webhook-timestamp"] = timestamp
    assert rejection([KEY], headers) == "webhook-timestamp is not an integer of unix seconds"


@pytest.mark.parametrize("offset", [-300, -1, 0, 1, 300])
def test_timestamps_within_the_tolerance_either_way_are_accepted(offset: int) -> None:
    headers = signed_headers(KEY, timestamp=NOW + offset)
    assert signatures.verify([KEY], headers, BODY, now=NOW, tolerance=300) == MSG_ID


def test_a_timestamp_older_than_the_tolerance_is_rejected() -> None:
    message = rejection([KEY], signed_headers(KEY, timestamp=NOW - 301))
    assert message == "webhook-timestamp is 301 s old, beyond the 300 s tolerance"


def test_a_timestamp_newer_than_the_tolerance_is_rejected() -> None:
    message = rejection([KEY], signed_headers(KEY, timestamp=NOW + 301))
    assert message == "webhook-timestamp is 301 s ahead, beyond the 300 s tolerance"


def test_the_tolerance_is_configurable() -> None:
    headers = signed_headers(KEY, timestamp=NOW - 60)
    assert signatures.verify([KEY], headers, BODY, now=NOW, tolerance=60) == MSG_ID
    with pytest.raises(WebhookVerificationError, match="old"):
        signatures.verify([KEY], headers, BODY, now=NOW, tolerance=59)


def test_asymmetric_v1a_entries_are_ignored() -> None:
    digest = signatures.sign(KEY, MSG_ID, NOW, BODY).removeprefix("v1,")
    headers = signed_headers(KEY)
    headers["webhook-signature"] = f"v1a,{digest}"
    assert "no v1 signature" in rejection([KEY], headers)

    headers["webhook-signature"] = f"v1a,{digest} v1,{digest}"
    assert signatures.verify([KEY], headers, BODY, now=NOW) == MSG_ID


@pytest.mark.parametrize("entry", ["v1,not base64!", "v1,", "v1", "garbage", ",,,"])
def test_malformed_entries_are_skipped(entry: str) -> None:
    headers = signed_headers(KEY)
    assert "no v1 signature" in rejection([KEY], {**headers, "webhook-signature": entry})
    valid = headers["webhook-signature"]
    headers["webhook-signature"] = f"{entry} {valid}"
    assert signatures.verify([KEY], headers, BODY, now=NOW) == MSG_ID


def test_parse_secret_takes_the_prefix_as_optional() -> None:
    encoded = base64.b64encode(KEY).decode()
    assert signatures.parse_secret("whsec_" + encoded) == KEY
    assert signatures.parse_secret(encoded) == KEY
    assert signatures.parse_secret("whsec_" + encoded.rstrip("=")) == KEY


def test_new_secret_is_32_random_bytes() -> None:
    first, second = signatures.new_secret(), signatures.new_secret()
    assert first.startswith("whsec_")
    assert len(signatures.parse_secret(first)) == 32
    assert first != second


@pytest.mark.parametrize(
    "secret",
    [
        "",
        "whsec_",
        "whsec_not-base64-at-all!!",
        "whsec_" + base64.b64encode(b"\x00" * 32).decode() + "x",
        "whsk_" + base64.b64encode(KEY).decode(),
        "whsec_" + base64.b64encode(b"sixteen bytes!!!").decode(),
    ],
)
def test_malformed_secrets_are_refused_without_echoing_them(secret: str) -> None:
    with pytest.raises(ValueError, match="webhook secret") as caught:
        signatures.parse_secret(secret)
    encoded = secret.removeprefix("whsec_")
    assert not encoded or encoded not in str(caught.value)
    assert caught.value.__cause__ is None


def test_no_error_message_carries_secret_material() -> None:
    key_base64 = base64.b64encode(KEY).decode()
    expected = signatures.sign(KEY, MSG_ID, NOW, BODY)
    headers = signed_headers(KEY)
    tampered_body = BODY.replace(b"ful_1", b"ful_2")
    cases: list[tuple[dict[str, str], bytes, float]] = [
        (headers, tampered_body, NOW),
        ({**headers, "webhook-id": "msg_x"}, BODY, NOW),
        ({**headers, "webhook-signature": "v1,AAAA"}, BODY, NOW),
        ({**headers, "webhook-timestamp": "nope"}, BODY, NOW),
        (headers, BODY, NOW + 10_000),
        (headers, BODY, NOW - 10_000),
    ]
    tampered_expected = signatures.sign(KEY, MSG_ID, NOW, tampered_body)
    for case_headers, body, now in cases:
        message = rejection([KEY], case_headers, body, now)
        for material in (key_base64, expected, expected[3:], tampered_expected[3:]):
            assert material not in message


def _spec_blocks() -> list[str]:
    """The fenced examples of the Standard Webhooks specification, as published."""
    text = STANDARD_WEBHOOKS_SPEC.read_text()
    return re.findall(r"^```[a-z]*\n(.*?)^```$", text, flags=re.DOTALL | re.MULTILINE)


def test_we_sign_the_content_the_specification_says_is_signed() -> None:
    # The spec's example of what is signed: `msg_id.timestamp.payload`, the body minified.
    content = next(b for b in _spec_blocks() if b.startswith("msg_") and "\n" not in b.strip())
    msg_id, timestamp, payload = content.strip().split(".", 2)
    expected = base64.b64encode(
        hmac.new(KEY, content.strip().encode(), hashlib.sha256).digest()
    ).decode()
    assert signatures.sign(KEY, msg_id, int(timestamp), payload.encode()) == f"v1,{expected}"


def test_the_specifications_example_headers_are_read_as_the_specification_says() -> None:
    # Header names and the space-separated list with an asymmetric `v1a` entry beside `v1`: the
    # example is parsed (no header or format error) and only its signature fails, since the
    # spec does not publish the secret behind it.
    block = next(b for b in _spec_blocks() if b.startswith("webhook-id:"))
    headers = dict(line.split(": ", 1) for line in block.strip().splitlines())
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    reason = rejection([KEY], headers, body=b"{}", now=int(headers["webhook-timestamp"]))
    assert reason == rejection([KEY], signed_headers(OLD_KEY, body=b"{}"), body=b"{}")

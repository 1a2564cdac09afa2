"""What each failure code means to a merchant: for every code Klarna answers and every code the
pipeline, the planners and the storefront adapters record, a sentence on what happened and one on
what to do. The one table of it; the pages show it beside the code (`advice_for`).

A code is looked up as it is stored: exactly, then by a pattern (`*` stands for one or more
capitals, digits or underscores: `HTTP_*`, `ORDER_*`). A storefront API's codes come prefixed with
the platform (`SHOPIFY_THROTTLED`): they are looked up in `API_ADVICE` without it, the platform
named in the sentence. `tests/web/test_advice.py` scans the source for every code it can record
and fails on one without advice here."""

import re

import msgspec


class Advice(msgspec.Struct, frozen=True, kw_only=True):
    """What happened, and what the merchant does about it."""

    what: str
    todo: str


_RETRIES = "Nothing to do: it is retried by itself, with growing pauses."
_RETRY = "Fix the cause, then press Retry."

# (what happened, what to do), by code.
_TABLE: dict[str, tuple[str, str]] = {
    # Klarna's answers (its Order Management error codes, and what the client makes of a call
    # that got no answer or an unreadable one).
    "UNAUTHORIZED": (
        "Klarna refused the API username and password.",
        "Enter credentials Klarna accepts on the settings page (playground keys do not work on "
        "live, nor keys of another region); waiting shipments then resume by themselves.",
    ),
    "KLARNA_NOT_CONFIGURED": (
        "No Klarna API credentials are set for this shop yet.",
        "Enter the API username and password on the settings page; waiting shipments then "
        "resume by themselves.",
    ),
    "NO_SUCH_ORDER": (
        "Klarna has no order with this id in the account and environment set here.",
        "Check that the order was paid with Klarna, and that region and environment (live or "
        "playground) on the settings page match the account that took it; then press Retry.",
    ),
    "NO_SUCH_CAPTURE": (
        "Klarna has no such capture on this order.",
        "Look the order up in Klarna's merchant portal; if the capture is missing there, "
        "press Retry to capture again.",
    ),
    "NO_SUCH_REFUND": (
        "Klarna has no such refund on this order.",
        "Look the order up in Klarna's merchant portal, then press Retry.",
    ),
    "NOT_FOUND": (
        "Klarna could not find the order, capture or refund asked for.",
        "Check the Klarna order id on the storefront order and the account settings, then "
        "press Retry.",
    ),
    "NOT_ALLOWED": (
        "Klarna does not allow this on the order in its current state (it may be cancelled, "
        "expired or fully captured).",
        "Look the order up in Klarna's merchant portal and settle it there if needed.",
    ),
    "CAPTURE_NOT_ALLOWED": (
        "Klarna refused the capture: the order may be cancelled or expired, or the amount "
        "higher than what remains authorized.",
        "Look the order up in Klarna's merchant portal; if the customer still owes the "
        "goods, ask them to pay again (a new order).",
    ),
    "CANCEL_NOT_ALLOWED": (
        "Klarna refused to cancel the order: part of it is captured already.",
        "Refund what was captured instead, and release the rest of the authorization.",
    ),
    "REFUND_NOT_ALLOWED": (
        "Klarna refused the refund: more than was captured, or the order does not allow it.",
        "Compare the refund with the captures in Klarna's merchant portal and refund there.",
    ),
    "CONFLICT": (
        "Klarna found the request in conflict with the order as it stands.",
        "Press Retry; if it fails again, look the order up in Klarna's merchant portal.",
    ),
    "BAD_VALUE": (
        "Klarna refused a value in the request (an amount, a line, the tracking).",
        "Check the storefront order's lines and amounts, fix them, then press Retry.",
    ),
    "UNPROCESSABLE_ENTITY": (
        "Klarna could not process the request as sent (a value out of its limits).",
        "Check the order's lines and tracking on the storefront, then press Retry.",
    ),
    "INVALID_ADDRESS": (
        "Klarna found the shipping or billing address invalid.",
        "Correct the address in Klarna's merchant portal, then press Retry.",
    ),
    "REQUEST_TOO_LARGE": (
        "The request was larger than Klarna takes (too many lines or tracking entries).",
        "Capture this order in Klarna's merchant portal.",
    ),
    "TOO_MANY_REQUESTS": ("Klarna asked us to slow down.", _RETRIES),
    "INTERNAL_SERVER_ERROR": ("Klarna had an internal error.", _RETRIES),
    "UNEXPECTED_ERROR": ("Klarna had an unexpected error.", _RETRIES),
    "TEMPORARILY_UNAVAILABLE": ("Klarna was temporarily unavailable.", _RETRIES),
    "NETWORK_ERROR": ("Klarna could not be reached over the network.", _RETRIES),
    "TIMEOUT": ("Klarna did not answer in time.", _RETRIES),
    "UNEXPECTED_RESPONSE": (
        "Klarna answered with something we could not read.",
        "It is retried; if it stays, quote the correlation id to Klarna's merchant support.",
    ),
    "INVALID_ID": (
        "The Klarna order id on the storefront order is not a Klarna order id.",
        "Correct where your orders keep the Klarna order id (settings page), then press Retry.",
    ),
    "HTTP_*": (
        "The other side answered with an HTTP error.",
        "It is retried when that may help; otherwise check the service it names, then press Retry.",
    ),
    # The capture planner's refusals.
    "ABOVE_REMAINING": (
        "The shipment comes to more than what remains of the Klarna authorization.",
        "Compare the storefront order with the Klarna order (a changed price or an added "
        "item?); capture the difference another way, then press Retry.",
    ),
    "AUTHORIZATION_EXPIRED": (
        "The Klarna authorization expired before the goods shipped: it can no longer be captured.",
        "Ask the customer to pay again; turn on Keep authorizations alive to avoid it.",
    ),
    "ORDER_EXPIRED": (
        "The Klarna order expired: it can no longer be captured.",
        "Ask the customer to pay again; turn on Keep authorizations alive to avoid it.",
    ),
    "ORDER_*": (
        "The Klarna order is cancelled or closed: nothing more can be captured.",
        "Look the order up in Klarna's merchant portal; ship nothing more against it.",
    ),
    "NOTHING_REMAINING": (
        "The Klarna order is fully captured, or its remainder was released.",
        "Nothing to capture; check the order in Klarna's merchant portal if goods are unpaid.",
    ),
    "NOTHING_TO_CAPTURE": (
        "The shipment holds nothing to charge (free goods, or everything discounted).",
        "Nothing to do.",
    ),
    "FRAUD_PENDING": ("Klarna is still reviewing the order.", _RETRIES),
    "FRAUD_REJECTED": (
        "Klarna did not accept the order after its review.",
        "Do not ship; contact Klarna's merchant support.",
    ),
    "CURRENCY_MISMATCH": (
        "The shipment's currency is not the Klarna order's.",
        "Check the storefront order's currency, then press Retry.",
    ),
    "INVALID_LINE": (
        "A line of the order does not add up as Klarna requires (price, tax or quantity).",
        "Correct the line on the storefront order, then press Retry.",
    ),
    # The refund planner's refusals.
    "ABOVE_CAPTURED": (
        "The refund is larger than what was captured and not yet refunded.",
        "Check the refund on the storefront; refund the rest in Klarna's merchant portal.",
    ),
    "ABOVE_CAPTURED_LINE": (
        "The refund gives back more of a line than was captured of it.",
        "Check the refunded quantities on the storefront, then press Retry.",
    ),
    "ABOVE_CAPTURED_TAX": (
        "The refund gives back more tax than was captured.",
        "Check the refund's tax on the storefront, then press Retry.",
    ),
    "AMOUNT_MISMATCH": (
        "The refund's amount and its lines do not add up.",
        "Check the refund on the storefront, then press Retry.",
    ),
    "INVALID_AMOUNT": (
        "The refund has an amount that is not valid (negative, or out of range).",
        "Check the refund on the storefront, then press Retry.",
    ),
    "LINES_REQUIRED": (
        "Klarna needs this refund by line, and the storefront gave none.",
        "Refund by line on the storefront, or refund in Klarna's merchant portal.",
    ),
    "NOTHING_CAPTURED": (
        "A refund came for an order with nothing captured yet.",
        "Cancel the order instead, or press Retry once its capture is done.",
    ),
    "RETURN_FEE_NOT_ALLOWED": (
        "The refund keeps a return fee Klarna cannot take here.",
        "Refund without the fee, or settle it in Klarna's merchant portal.",
    ),
    "UNKNOWN_FULFILLMENT": (
        "The refund names a shipment that was never captured.",
        "Press Retry once that shipment is captured.",
    ),
    "UNKNOWN_LINE": (
        "The refund names a line that was never captured.",
        "Check the refund's lines on the storefront, then press Retry.",
    ),
    # The pipeline and the worker.
    "SHIPMENTS_PENDING": (
        "Shipments of the order are still being captured.",
        "Nothing to do: it goes on once they are.",
    ),
    "INTERNAL_ERROR": (
        "The service met an error of its own.",
        "It is retried; if it stays, tell the operator (the time and shipment help).",
    ),
    "JOB_DEADLINE": (
        "The work took longer than allowed and was stopped where it was.",
        "Nothing to do: it carries on from its last finished step.",
    ),
    "UNKNOWN": (
        "The failure was recorded in a form that can no longer be read.",
        "Press Retry to run it again and see the failure as it is now.",
    ),
    "UNREADABLE": (
        "The failure was recorded in a form that can no longer be read.",
        "Press Retry to run it again and see the failure as it is now.",
    ),
    # The status URL (Standard Webhooks shops).
    "NO_WEBHOOK_SECRET": (
        "The shop has no webhook secret to sign status callbacks with.",
        "Make a new webhook secret on the settings page, then press Retry.",
    ),
    "ADDRESS_REFUSED": (
        "The address to call leads to a private or local network, which is refused.",
        "Enter a public https address on the settings page, then press Retry.",
    ),
    # The storefronts' adapters.
    "CAPTURED_*_GONE": (
        "A shipment of this order was captured and is no longer shipped on the storefront: "
        "another shipment would charge its goods twice.",
        "Refund the removed shipment at Klarna, then press Retry.",
    ),
    "KLARNA_ORDER_ID_MISSING": (
        "The storefront order holds no Klarna order id where the settings say to look.",
        "Check that the order was paid with Klarna and where your orders keep the Klarna "
        "order id (settings page), then press Retry.",
    ),
    "KLARNA_ORDER_ID_AMBIGUOUS": (
        "The storefront order holds more than one Klarna order id.",
        "Keep one on the order, then press Retry.",
    ),
    "KLARNA_ORDER_ID_SOURCE_UNSUPPORTED": (
        "This storefront cannot keep the Klarna order id where the settings say.",
        "Choose another place on the settings page, then press Retry.",
    ),
    "NOT_INSTALLED": (
        "The storefront app is not installed (or its access was removed).",
        "Install the app again from the storefront's admin.",
    ),
    "NO_API_KEY": (
        "No storefront API key is set for this shop.",
        "Enter the REST API key on the settings page, then press Retry.",
    ),
    "ORDER_NOT_FOUND": (
        "The storefront has no such order (deleted?).",
        "Check the order on the storefront; if it is gone, nothing is to be captured.",
    ),
    "REFUND_NOT_FOUND": (
        "The storefront has no such refund (deleted?).",
        "Check the refund on the storefront, then press Retry.",
    ),
    "REFUND_PENDING": ("The storefront's refund is not finished yet.", _RETRIES),
    "REFUND_ID_REUSED": (
        "The storefront sent a refund under an id it had used for a refund of another order, so "
        "nothing was refunded for this one.",
        "Check the refund on the storefront; refund this order at Klarna by hand if it is due, or "
        "have the storefront send it under its own id, then press Retry.",
    ),
    "REFUSED": (
        "Klarna or the refund rules refused this call earlier; its details were not kept.",
        "Check the order in Klarna's portal, settle it by hand if needed, then press Retry to "
        "try the call again.",
    ),
    "CAPTURE_IN_FLIGHT": ("A capture of this order is still being made.", _RETRIES),
    "TOO_MANY_REFUNDS": (
        "The order has more refunds than are read at once.",
        "Settle the remaining refunds in Klarna's merchant portal.",
    ),
    "UNMAPPABLE_FULFILLMENT": (
        "The fulfilment could not be turned into a Klarna capture (a line or an amount we "
        "cannot read).",
        _RETRY,
    ),
    "UNMAPPABLE_SHIPMENT": (
        "The shipment could not be turned into a Klarna capture (a line or an amount we "
        "cannot read).",
        _RETRY,
    ),
    "UNMAPPABLE_ORDER": (
        "The order could not be turned into a Klarna capture (a line or an amount we cannot read).",
        _RETRY,
    ),
    "UNMAPPABLE_REFUND": ("The refund could not be turned into a Klarna refund.", _RETRY),
    "BAD_FULFILLMENT": ("The storefront sent a fulfilment we could not read.", _RETRY),
    "BAD_ORDER": ("The storefront's order could not be read.", _RETRY),
    "BAD_ORDER_ID": ("The storefront's order id is not one we can read.", _RETRY),
    # A capture through the storefront's own payments (Shopify's orderCapture).
    "CAPTURE_PENDING": (
        "The storefront's capture was sent and its payment gateway is still working on it; "
        "it is never sent twice.",
        "Check the order's payment in the storefront. Once the capture shows as paid, press "
        "Retry: it is recorded without a new capture.",
    ),
    "CAPTURE_FAILED": (
        "The storefront's payment gateway refused the capture.",
        "Check the order's payment in the storefront (an authorization that ran out, a "
        "declined capture); capture there by hand, or press Retry to send it again.",
    ),
    "SHOPIFY_CAPTURE_REFUSED": (
        "Shopify refused the capture; its words are below (an amount above what the "
        "authorization still holds, a missing permission, another currency).",
        "Check the order's payment in Shopify and the app's permissions, then press Retry, or "
        "capture there by hand.",
    ),
    "AUTHORIZATION_AMBIGUOUS": (
        "The order has several Klarna authorizations: we cannot tell which one to capture.",
        "Capture the order by hand in Shopify.",
    ),
    "BAD_ANSWER": (
        "The storefront's answer to the capture could not be read; whether it captured is "
        "settled from the order's payments before anything is sent again.",
        _RETRIES,
    ),
}

# A storefront API's failures, recorded as `<PLATFORM>_<code>`; `{platform}` names it.
_API_TABLE: dict[str, tuple[str, str]] = {
    "NETWORK_ERROR": ("{platform} could not be reached over the network.", _RETRIES),
    "THROTTLED": ("{platform} asked us to slow down.", _RETRIES),
    "RATE_LIMITED": ("{platform} asked us to slow down.", _RETRIES),
    "UNAUTHORIZED": (
        "{platform} refused the app's access.",
        "Install the app again, or enter a new API key on the settings page; then press Retry.",
    ),
    "GRAPHQL_ERROR": ("{platform} refused our question about the order.", _RETRY),
    "USER_ERRORS": ("{platform} refused to write the outcome onto the order.", _RETRY),
    "NOT_FOUND": (
        "{platform} has no such order or shipment (deleted?).",
        "Check the order on {platform}; if it is gone, nothing is to be done.",
    ),
    "ORDER_NOT_FOUND": (
        "{platform} has no such order (deleted?).",
        "Check the order on {platform}; if it is gone, nothing is to be done.",
    ),
    "CONFLICT": ("{platform} found the change in conflict with the order.", _RETRIES),
    "EMPTY_ANSWER": ("{platform} answered with nothing.", _RETRIES),
    "BAD_ANSWER": ("{platform} answered with something we could not read.", _RETRIES),
    "BAD_ORDER": ("{platform} answered with an order we could not read.", _RETRY),
    "BAD_REFUNDS": ("{platform} answered with refunds we could not read.", _RETRY),
    "BAD_NOTES": ("{platform} answered with order notes we could not read.", _RETRY),
    "TOO_MANY": (
        "The order has more entries on {platform} than are read at once.",
        "Settle it in Klarna's merchant portal.",
    ),
    "TOO_MANY_REFUNDS": (
        "The order has more refunds on {platform} than are read at once.",
        "Settle the remaining refunds in Klarna's merchant portal.",
    ),
    "NO_SHOP": ("The shop was removed while {platform} was being set up.", "Install again."),
    "ADDRESS_REFUSED": (
        "The site address leads to a private or local network, which is refused.",
        "Enter your public site address on the settings page, then press Retry.",
    ),
    "REDIRECTED": (
        "{platform} redirected the call elsewhere; redirects are not followed.",
        "Enter the site's final https address on the settings page, then press Retry.",
    ),
    "HTTP_*": ("{platform} answered with an HTTP error.", _RETRY),
}

# Platform prefixes of API codes, as their clients write them.
PLATFORMS = {"SHOPIFY": "Shopify", "WOOCOMMERCE": "WooCommerce", "BIGCOMMERCE": "BigCommerce"}

# What is said of a code nobody foresaw (a storefront's own error code, a new Klarna one).
UNKNOWN = Advice(
    what="The step failed with the error shown.",
    todo="If it is not retried by itself, fix what the message names, then press Retry; quote "
    "the code and correlation id to Klarna's merchant support for a Klarna error.",
)


def _compile(table: dict[str, tuple[str, str]]) -> list[tuple[re.Pattern[str], str]]:
    return [
        (re.compile(re.escape(key).replace(r"\*", "[A-Z0-9_]+")), key)
        for key in table
        if "*" in key
    ]


_PATTERNS = _compile(_TABLE)
_API_PATTERNS = _compile(_API_TABLE)


def _find(
    code: str, table: dict[str, tuple[str, str]], patterns: list[tuple[re.Pattern[str], str]]
) -> tuple[str, str] | None:
    if code in table:
        return table[code]
    for pattern, key in patterns:
        if pattern.fullmatch(code):
            return table[key]
    return None


def known(code: str) -> Advice | None:
    """The advice written for `code`; None when there is none (UNKNOWN is said instead)."""
    found = _find(code, _TABLE, _PATTERNS)
    if found is not None:
        return Advice(what=found[0], todo=found[1])
    prefix, _, rest = code.partition("_")
    platform = PLATFORMS.get(prefix)
    if platform is not None and rest:
        found = _find(rest, _API_TABLE, _API_PATTERNS)
        if found is not None:
            return Advice(
                what=found[0].format(platform=platform), todo=found[1].format(platform=platform)
            )
    return None


def advice_for(code: str) -> Advice:
    """What to tell the merchant of a failure recorded with `code`."""
    return known(code) or UNKNOWN

"""How the merchant's pages word and format what the store holds: a shipment's state in plain
words, amounts per currency in the shop's locale (Babel, from integer minor units, only here at
the edge), the shop's time zone (its times are written by plugin.dates), carriers by name, and
the link to an order in Klarna's merchant portal."""

import re
from urllib.parse import quote

import msgspec
from babel.numbers import format_currency, get_currency_symbol

from plugin import dates, money
from plugin.events import NO_KLARNA_ORDER

# The pages are written in English; amounts and times follow the shop's locale
# (ShopOptions.locale), English's where the shop names none.
LOCALE = dates.DEFAULT_LOCALE
DEFAULT_TIME_ZONE = dates.DEFAULT_TIME_ZONE


class State(msgspec.Struct, frozen=True, kw_only=True):
    """A shipment's state as the merchant reads it; `tone` names its colour (the row's
    `state-<tone>` class): done, partial, pending, waiting, retrying, failed."""

    label: str
    tone: str


CAPTURED = State(label="Captured", tone="done")
WAITING = State(label="Waiting for Klarna credentials", tone="waiting")
FAILED = State(label="Failed: needs attention", tone="failed")
RETRYING = State(label="Failed: will retry by itself", tone="retrying")
CAPTURING = State(label="Being captured", tone="pending")
RECEIVED = State(label="Received", tone="pending")


def shipment_state(
    job_state: str, attempts: int, capture_state: str | None, capture_id: str | None
) -> State:
    """What a shipment's job and ledger row say, in the merchant's words. A captured shipment is
    captured, whatever came after (tracking sent or not is in its trail, not its state)."""
    if job_state == "dead":
        return FAILED
    if job_state == "waiting":
        return WAITING
    if capture_state == "captured":
        return CAPTURED
    if job_state == "queued" and attempts and capture_id is None:
        return RETRYING
    if capture_state == "planned":
        return CAPTURING
    return RECEIVED


def partly_captured(
    captured: int, remaining: int, order_amount: int, currency: str, locale: str = LOCALE
) -> State | None:
    """The state of a shipment whose Klarna order is captured only in part and still holds an
    authorization for more (`remaining`). None when captured in full, or when nothing remains to
    capture: the rest released, cancelled or run out, so what was captured is all there is."""
    if remaining <= 0 or captured >= order_amount:
        return None
    of = amount(captured, currency, locale)
    label = f"Partly captured: {of} of {amount(order_amount, currency, locale)}"
    return State(label=label, tone="partial")


ORDER_STATES = {"open": "Open", "cancelled": "Cancelled", "closed": "Closed"}
CALL_STATES = {"planned": "Being sent to Klarna", "done": "Done", "failed": "Failed"}


def amount(minor: int | None, currency: str, locale: str = LOCALE) -> str:
    """Minor units as the currency writes them in `locale` (`€60.00` in en, `60,00 €` in de_DE,
    `¥6,000`); "" when unknown. A currency that is no ISO 4217 code (none gets stored) shows its
    units and code rather than a guess; a locale Babel does not know (none gets stored), en's."""
    if minor is None or not currency:
        return ""
    try:
        value = money.to_decimal(minor, currency)
    except money.MoneyError:
        return f"{minor} {currency} (minor units)"
    code = currency.upper()
    parsed = dates.locale(locale)
    shown: str = format_currency(value, code, locale=parsed, currency_digits=True)
    # A currency the locale writes by its code (SEK in English, KWD) and puts before the number
    # gets a space between the two, as the code would otherwise run into the digits.
    if get_currency_symbol(code, parsed) == code and shown.startswith(code):
        shown = code + "\xa0" + shown[len(code) :].lstrip()
    return shown


# Klarna's carrier codes (plugin.klarna.carriers) as their companies write their names.
CARRIERS = {
    "dhl": "DHL",
    "ups": "UPS",
    "fedex": "FedEx",
    "usps": "USPS",
    "postnord": "PostNord",
    "bring": "Bring",
    "royal-mail": "Royal Mail",
    "dpd": "DPD",
    "gls": "GLS",
    "hermes": "Hermes",
    "evri": "Evri",
    "tnt": "TNT",
    "postnl": "PostNL",
    "bpost": "bpost",
    "colissimo": "Colissimo",
    "chronopost": "Chronopost",
    "correos": "Correos",
    "posti": "Posti",
    "budbee": "Budbee",
    "instabox": "Instabox",
    "db-schenker": "DB Schenker",
    "canada-post": "Canada Post",
    "australia-post": "Australia Post",
    "new-zealand-post": "New Zealand Post",
    "swiss-post": "Swiss Post",
    "austrian-post": "Austrian Post",
}


def carrier(code: str | None) -> str:
    """A carrier's name for its Klarna code; a code not in the table as it is."""
    if not code:
        return ""
    return CARRIERS.get(code.lower(), code)


# Klarna's merchant portal, by environment: an order's page is under its merchant id.
PORTALS = {
    "live": "https://portal.klarna.com",
    "playground": "https://portal.playground.klarna.com",
}
_MERCHANT_ID = re.compile(r"[A-Za-z0-9]{1,32}")


def portal_url(environment: str, username: str, klarna_order_id: str) -> str | None:
    """The Klarna order's page in the merchant portal of the shop's environment. The merchant id
    is the part of the API username before its `_` (Klarna's `PK12345_…` usernames); without
    one, the portal's orders list, where the order id finds it."""
    base = PORTALS.get(environment)
    if base is None or not klarna_order_id or klarna_order_id == NO_KLARNA_ORDER:
        return None
    merchant, sep, _ = username.partition("_")
    if not sep or not _MERCHANT_ID.fullmatch(merchant):
        return f"{base}/orders"
    return (
        f"{base}/orders/all/merchants/{quote(merchant, safe='')}/orders/"
        f"{quote(klarna_order_id, safe='')}"
    )


# The steps and outcomes of a trail (the audit entries the pipeline writes) in plain words; a
# step or outcome not named here shows as written, its underscores as spaces.
STEPS = {
    "map": "Reading the shipment",
    "plan": "Planning",
    "capture": "Capture",
    "shipping_info": "Tracking sent to Klarna",
    "send_out": "Customer email",
    "report": "Status report",
    "merchant_references": "Order number at Klarna",
    "skip": "Skipped",
}
OUTCOMES = {
    "dead": "failed: needs attention",
    "failed, will retry": "failed, will retry by itself",
    "waiting for klarna credentials": "waiting for Klarna credentials",
    "captured_by_storefront": "captured already in the storefront: nothing sent",
    "pending": "sent: the payment gateway is still working on it",
    "not_added": "nothing added",
}


def trail_step(step: str) -> str:
    return STEPS.get(step, step.replace("_", " ").capitalize())


def trail_outcome(outcome: str) -> str:
    return OUTCOMES.get(outcome, outcome)


# The longest reason a trail entry shows: the pipeline writes its own words, a sentence each.
MAX_REASON = 500


def trail_reason(detail: str) -> str:
    """The reason an audit entry's detail (JSON) gives in words, if any: why a step did
    nothing, shown beside it."""
    try:
        found = msgspec.json.decode(detail[:20_000])
    except msgspec.DecodeError:
        return ""
    reason = found.get("reason") if isinstance(found, dict) else None
    return reason[:MAX_REASON] if isinstance(reason, str) else ""

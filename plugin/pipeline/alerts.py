"""Failure alerts: a shop that asked for them (ShopOptions.failure_alerts) gets a mail at its
address listing what of it needs attention (dead letters, refused order calls) since its last
alert, with a link to each page; at most one an hour. The store remembers each shop's last alert
and lets one process claim the next, so that several processes never both send; and what each
alert listed, so that the next looks back over a margin without listing anything twice. Runs in
the background of every process that runs workers, when mail is configured."""

import logging
import time
from collections.abc import Callable
from urllib.parse import quote

import anyio
import msgspec

from plugin import dates, mail
from plugin.config import MailSettings
from plugin.store import Store
from plugin.store.records import Failure, Shop

log = logging.getLogger("plugin.alerts")

# At most one alert an hour per shop; the first covers the hour before it.
ALERT_EVERY_SECONDS = 3600.0
# How often the shops are looked at: an alert leaves at most this long after its hour is up.
PASS_SECONDS = 300.0
# How far before the last alert the next looks: a failure is stamped by its worker's clock
# before its transaction commits, and that clock may be a little behind this one's.
MARGIN_SECONDS = 600.0
# What an alert listed is remembered this long, well past the margin.
REMEMBERED_SECONDS = 7 * 24 * 3600.0
# Listed in one mail; the rest are counted, and the activity page has them all.
LISTED = 50
SUBJECT = "Klarna capture: shipments or orders need your attention"
_WHAT = {
    "dead letter": "failed, needs attention",
    "refund": "refund refused",
    "cancel": "cancellation refused",
    "release": "release refused",
    "extend": "extension refused",
    "merchant_references": "reference update refused",
}


async def alert_shop(
    store: Store, settings: MailSettings, public_url: str, shop: Shop, now: float
) -> bool:
    """Send the shop its alert if one is due and anything failed since the last; True when this
    process sent it (claimed in the store first: another that claimed it sends instead)."""
    if shop.email is None or not shop.enabled or not shop.options.failure_alerts:
        return False
    last = await store.last_alert(shop.id)
    if last is not None and now - last < ALERT_EVERY_SECONDS:
        return False
    # The first alert (alerts just turned on: turning them off forgets the last) covers the hour
    # before it; each later one what failed from a margin before the last, less what it listed.
    since = now - ALERT_EVERY_SECONDS if last is None else last - MARGIN_SECONDS
    failures = await store.failures(shop.id, since, now, LISTED + 1)
    if not failures or not await store.claim_alert(shop.id, last, now):
        return False
    sent = False
    try:
        text = _text(shop, failures, since, public_url)
        await mail.send(settings, mail.message(settings, shop.email, SUBJECT, text))
        sent = True
    except mail.MAIL_ERRORS as exc:
        log.warning("failure alert not sent", extra={"shop": shop.id, "error": type(exc).__name__})
    finally:
        if not sent:
            # Given back on any failure, cancellation included (shielded, so that a shutdown
            # does not stop it half way): the next pass tries again from the same point.
            with anyio.CancelScope(shield=True):
                await store.claim_alert(shop.id, now, _given_back(last, now))
    if not sent:
        return False
    await store.alerted(shop.id, failures[:LISTED], now - REMEMBERED_SECONDS)
    log.info("failure alert sent", extra={"shop": shop.id, "failures": len(failures)})
    return True


def _given_back(last: float | None, now: float) -> float:
    """The last alert's time as a claim gives it back: as it was, or, for a shop never alerted,
    an hour ago (due at once, and looking back over that hour and its margin)."""
    return last if last is not None else now - ALERT_EVERY_SECONDS


def _text(shop: Shop, failures: list[Failure], since: float, public_url: str) -> str:
    pages = f"{public_url}/admin/{quote(shop.id, safe='')}"
    # In the shop's time zone and locale, as its pages write times.
    at = dates.moment(since, shop.options.time_zone, shop.options.locale)
    lines = [f"In {shop.name} ({shop.id}), since {at}:", ""]
    for failure in failures[:LISTED]:
        what = _WHAT.get(failure.what, failure.what)
        code = _error_code(failure.error)
        lines.append(f"- {failure.subject.capitalize()} {failure.id}: {what}{code}")
        folder = "shipments" if failure.subject == "shipment" else "orders"
        lines.append(f"  {pages}/{folder}/{quote(failure.id, safe='')}")
    if len(failures) > LISTED:
        lines.append(f"... and more: see {pages}/activity")
    lines += [
        "",
        "Each page says what happened and offers Retry once the cause is fixed.",
        f"These alerts are on in your settings ({pages}/settings): at most one mail an hour.",
    ]
    return "\n".join(lines)


def _error_code(stored: str | None) -> str:
    """The Klarna or pipeline error code of a stored failure, as ' (CODE)'; '' if none."""
    if not stored:
        return ""
    try:
        decoded = msgspec.json.decode(stored)
    except msgspec.DecodeError:
        return ""
    code = decoded.get("error_code") if isinstance(decoded, dict) else None
    return f" ({code[:60]})" if isinstance(code, str) and code.isprintable() else ""


async def alert_all(store: Store, settings: MailSettings, public_url: str, now: float) -> int:
    """One pass over the shops that asked for alerts; returns how many alerts were sent."""
    sent = 0
    for shop in await store.list_shops():
        if await alert_shop(store, settings, public_url, shop, now):
            sent += 1
    return sent


async def alert_forever(
    store: Store,
    settings: MailSettings,
    public_url: str,
    interval_seconds: float = PASS_SECONDS,
    clock: Callable[[], float] = time.time,
) -> None:
    """A pass now and every `interval_seconds`, until cancelled; a failed pass (the database
    away) is logged and tried again at the next."""
    while True:
        try:
            await alert_all(store, settings, public_url, clock())
        except Exception as exc:
            log.warning("failure alerts failed", extra={"error": f"{type(exc).__name__}: {exc}"})
        await anyio.sleep(interval_seconds)

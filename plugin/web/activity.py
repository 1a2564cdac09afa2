"""The activity view's parts that are not pages: its query string read and bounded (filter,
search, export dates), the captures summed per day and currency and drawn as a chart, the CSV
export's cells (amounts as decimal strings, formulas neutralised), and the error codes of dead
letters and their kinds in words."""

import csv
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import msgspec

from plugin import money
from plugin.errors import JobError, PluginError
from plugin.store.records import (
    QUARTER_HOUR,
    SHIPMENT_FILTERS,
    CaptureDay,
    CaptureQuarter,
    JobKind,
    Shipment,
    ShipmentFilter,
)

DAY = 86_400
# A search names a fulfilment, an order or a Klarna reference or order: at most as long as an id.
MAX_SEARCH = 255
# How many of a shop's shipments one filtered page looks through (its "Older" goes on from there).
SCAN = 2000
# The longest export: a year, a leap day included.
EXPORT_DAYS = 366
CHART_DAYS = 14
WEEK_DAYS = 7
# An error code as the pipeline and Klarna write them (NO_SUCH_ORDER, KlarnaError, ...).
ERROR_CODE = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
# A spreadsheet reads a cell starting with one of these as a formula (OWASP's CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
EPOCH = date(1970, 1, 1)


def export_header(zone: ZoneInfo) -> list[str]:
    """The export's header row: its times are in the shop's time zone, which it names."""
    return [
        "Order",
        "Fulfilment",
        "Klarna order",
        "Klarna reference",
        "State",
        "Captured amount",
        "Currency",
        f"Captured at ({zone.key})",
        "Order refunded",
        f"Last change ({zone.key})",
        "Order number",
    ]


class BadQuery(PluginError):
    """A query string the activity view refuses (400); the message is for the merchant."""


class Filters(msgspec.Struct, frozen=True, kw_only=True):
    """What the shipments are filtered by: a state, a search, neither."""

    state: ShipmentFilter | None = None
    search: str | None = None

    @property
    def active(self) -> bool:
        return self.state is not None or self.search is not None

    def query(self) -> str:
        """The filters as a query string, for the links of the pages after this one."""
        pairs = [("filter", self.state or ""), ("q", self.search or "")]
        return urlencode([(key, value) for key, value in pairs if value])


def read_filters(params: Mapping[str, str]) -> Filters:
    """The filter and search of a query string. An unknown filter, or a search longer than an id
    or holding what no id holds (control characters), is refused: a link is wrong, not ignored."""
    state = params.get("filter", "")
    if state and state not in SHIPMENT_FILTERS:
        raise BadQuery("There is no such filter.")
    search = params.get("q", "").strip()
    if len(search) > MAX_SEARCH or not search.isprintable():
        raise BadQuery(
            f"Search for one order, shipment or Klarna reference: {MAX_SEARCH} characters at most."
        )
    return Filters(
        state=next((s for s in SHIPMENT_FILTERS if s == state), None), search=search or None
    )


def read_range(params: Mapping[str, str]) -> tuple[date, date]:
    """The export's first and last day (both included, YYYY-MM-DD), at most EXPORT_DAYS."""
    given = (params.get("from", ""), params.get("to", ""))
    try:
        if any(len(value) != len("YYYY-MM-DD") for value in given):
            raise ValueError(given)
        first, last = (date.fromisoformat(value) for value in given)
    except ValueError:
        raise BadQuery("Give the first and last day of the export, as YYYY-MM-DD.") from None
    if last < first:
        raise BadQuery("The last day of the export comes before its first.")
    if (last - first).days + 1 > EXPORT_DAYS:
        raise BadQuery(f"An export covers {EXPORT_DAYS} days at most.")
    return first, last


def day_start(day: date, zone: ZoneInfo) -> float:
    """The first moment of `day` in the shop's time zone (a day of a change of offset is 23 or
    25 hours long: each day starts on its own)."""
    return datetime(day.year, day.month, day.day, tzinfo=zone).timestamp()


def day_of(at: float, zone: ZoneInfo) -> int:
    """Whole days since 1970-01-01 on the shop's calendar of the time `at`."""
    return (datetime.fromtimestamp(at, zone).date() - EPOCH).days


def local_date(day: int) -> date:
    """The date of a day counted as day_of counts them."""
    return EPOCH + timedelta(days=day)


def by_day(quarters: Iterable[CaptureQuarter], zone: ZoneInfo) -> list[CaptureDay]:
    """The store's quarter hours of captures added up to the days of the shop's time zone."""
    found: dict[tuple[int, str], tuple[int, int]] = {}
    for quarter in quarters:
        key = (day_of(quarter.quarter * QUARTER_HOUR, zone), quarter.currency)
        count, amount = found.get(key, (0, 0))
        found[key] = (count + quarter.count, amount + quarter.amount)
    return [
        CaptureDay(day=day, currency=currency, count=count, amount=amount)
        for (day, currency), (count, amount) in sorted(found.items())
    ]


class Total(msgspec.Struct, kw_only=True):
    """Captures of one currency over some days: how many, and their sum in minor units."""

    currency: str
    count: int = 0
    amount: int = 0


def totals(days: Iterable[CaptureDay], first_day: int) -> list[Total]:
    """The captures of `first_day` and after, per currency (in the order of their codes)."""
    found: dict[str, Total] = {}
    for day in days:
        if day.day >= first_day:
            total = found.setdefault(day.currency, Total(currency=day.currency))
            total.count += day.count
            total.amount += day.amount
    return [found[currency] for currency in sorted(found)]


class Bar(msgspec.Struct, kw_only=True):
    """One day of the chart: its date, how many captures, and its bar's place in the drawing."""

    day: str  # YYYY-MM-DD
    label: str  # the day of the month, under the bar
    count: int
    x: int
    y: int
    height: int


class Chart(msgspec.Struct, kw_only=True):
    """Captures per day over the last CHART_DAYS days, oldest first, as bars to draw."""

    bars: list[Bar]
    width: int
    height: int
    baseline: int
    bar_width: int
    most: int
    total: int


def chart(days: Iterable[CaptureDay], today: int) -> Chart:
    """The bars of the last CHART_DAYS days up to `today` (days since the epoch), each as tall as
    its captures (every currency counted) against the busiest day."""
    counts: dict[int, int] = {}
    for day in days:
        counts[day.day] = counts.get(day.day, 0) + day.count
    step, bar_width, top, plot = 40, 28, 8, 100
    baseline = top + plot
    numbers = [counts.get(day, 0) for day in range(today - CHART_DAYS + 1, today + 1)]
    most = max(numbers, default=0)
    bars = []
    for index, count in enumerate(numbers):
        when = local_date(today - CHART_DAYS + 1 + index)
        height = round(plot * count / most) if most else 0
        bars.append(
            Bar(
                day=when.isoformat(),
                label=str(when.day),
                count=count,
                x=4 + index * step,
                y=baseline - height,
                height=height,
            )
        )
    return Chart(
        bars=bars,
        width=8 + CHART_DAYS * step,
        height=baseline + 20,
        baseline=baseline,
        bar_width=bar_width,
        most=most,
        total=sum(numbers),
    )


# What the page calls each kind of dead letter, one and more, in the order it lists them.
KIND_NOUNS: dict[JobKind, tuple[str, str]] = {
    "fulfillment": ("shipment", "shipments"),
    "order": ("order", "orders"),
    "callback": ("status report", "status reports"),
}


def in_words(counts: Mapping[JobKind, int], *, always: Sequence[JobKind] = ()) -> list[str]:
    """Dead letters counted by kind, in words ("2 shipments", "1 order"), in KIND_NOUNS' order:
    each kind counted, and those of `always` even when none."""
    words = []
    for kind, (one, more) in KIND_NOUNS.items():
        count = counts.get(kind, 0)
        if count or kind in always:
            words.append(f"{count} {one if count == 1 else more}")
    return words


def error_code(stored: str | None) -> str:
    """The error code of a dead letter's stored failure ("" when it holds none)."""
    if not stored:
        return ""
    try:
        return msgspec.json.decode(stored, type=JobError).error_code
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ""


def decimal(amount: int | None, currency: str) -> str:
    """Minor units as the currency's plain decimal ("60.00"; "" when unknown): what a
    spreadsheet reads as a number, whatever the page's own formatting."""
    if amount is None or not currency:
        return ""
    try:
        return str(money.to_decimal(amount, currency))
    except money.MoneyError:
        return ""


def local(at: float | None, zone: ZoneInfo) -> str:
    """A moment in the shop's time zone, to the second, with its offset: the header names the
    zone, and the offset tells apart the two hours that read alike when the clocks go back."""
    if at is None:
        return ""
    return datetime.fromtimestamp(at, zone).isoformat(sep=" ", timespec="seconds")


def neutralise(cell: str) -> str:
    """A cell a spreadsheet shows as text: one that would start a formula gets a leading '."""
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


def export_row(shipment: Shipment, state: str, refunded: int | None, zone: ZoneInfo) -> list[str]:
    """One shipment as a row of the export (export_header's columns)."""
    currency = shipment.currency or ""
    cells = [
        shipment.order_id or "",
        shipment.fulfillment_id,
        shipment.klarna_order_id or "",
        shipment.klarna_reference or "",
        state,
        decimal(shipment.captured_amount, currency),
        currency,
        local(shipment.captured_at, zone),
        decimal(refunded, currency),
        local(shipment.updated_at, zone),
        shipment.order_number or "",
    ]
    return [neutralise(cell) for cell in cells]


def csv_text(rows: Sequence[Sequence[str]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue()

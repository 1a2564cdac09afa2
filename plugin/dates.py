"""How a moment or a day is written for a merchant: in the shop's time zone and as the shop's
locale writes dates and times (Babel), short and unambiguous: the month by name, the year in
full, the hour as the locale counts it, the zone's abbreviation after the time. Beside it, the
same moment in ISO 8601 with its offset, for machines (a page's `<time datetime>`; the CSV export
writes its own plain ISO form)."""

import functools
import re
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale, UnknownLocaleError
from babel.dates import format_skeleton, format_time, get_datetime_format

DEFAULT_TIME_ZONE = "UTC"
DEFAULT_LOCALE = "en"


def zone(name: str | None) -> ZoneInfo:
    """The shop's time zone; UTC when it names none this machine knows."""
    try:
        return ZoneInfo(name or DEFAULT_TIME_ZONE)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(DEFAULT_TIME_ZONE)


@functools.lru_cache(maxsize=64)
def locale(name: str | None) -> Locale:
    """The Babel locale of a shop's stored identifier; English for one Babel does not know."""
    try:
        return Locale.parse(name or DEFAULT_LOCALE)
    except (UnknownLocaleError, ValueError):
        return Locale.parse(DEFAULT_LOCALE)


def local(at: float, time_zone: str | None) -> datetime:
    """A moment (seconds since the epoch) in the shop's time zone."""
    return datetime.fromtimestamp(at, UTC).astimezone(zone(time_zone))


def moment(at: float, time_zone: str | None, locale_name: str | None) -> str:
    """A moment as the shop reads it: `3. Dez. 2026, 19:04 CET` in de_DE, `Dec 3, 2026, 7:04 PM
    EST` in en_US, `3 Dec 2026, 19:04 GMT` in en_GB. Never the all-digit short date, which reads
    differently in different countries (12/3/26)."""
    when = local(at, time_zone)
    parsed = locale(locale_name)
    day_part: str = format_skeleton("yMMMd", when, locale=parsed)
    time_part: str = format_time(when, "short", tzinfo=when.tzinfo, locale=parsed)
    # The locale's way of joining a date and a time (`{1}, {0}` in English, `{1} {0}` in Swedish).
    # Its words are quoted in CLDR's way (`{1} 'à' {0}` in Corsican; '' is a quote itself).
    pattern = _QUOTED.sub(_unquoted, str(get_datetime_format("medium", locale=parsed)))
    shown = pattern.replace("{1}", day_part).replace("{0}", time_part)
    return f"{shown} {when.tzname() or ''}".rstrip()


_QUOTED = re.compile(r"'([^']*)'")


def _unquoted(quoted: re.Match[str]) -> str:
    return quoted[1] or "'"


def iso(at: float, time_zone: str | None) -> str:
    """A moment in ISO 8601 with the offset of the shop's time zone, to the second."""
    return local(at, time_zone).isoformat(timespec="seconds")


def day(value: date, locale_name: str | None) -> str:
    """A day of the shop's time zone as its locale writes one of recent days: `Do., 3. Dez.`
    in de_DE, `Thu, Dec 3` in en_US (the year left out: the days shown are the last few)."""
    shown: str = format_skeleton("MMMEd", value, locale=locale(locale_name))
    return shown

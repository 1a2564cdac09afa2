"""The order statuses a WooCommerce shop captures at: as WordPress spells them, and as a merchant
types them."""

import re

from plugin.store.records import ShopOptions

MAX_CAPTURE_STATUSES = 20
# WordPress keeps a post status in 20 characters, "wc-" included.
MAX_STATUS_LENGTH = 17
_STATUS = re.compile(r"[a-z0-9_-]{1,17}")


def normalize_status(status: str) -> str:
    """An order status as the REST API spells it: lowercase, without WordPress's `wc-` prefix."""
    return status.strip().lower().removeprefix("wc-")


def capture_statuses(options: ShopOptions) -> frozenset[str]:
    return frozenset(normalize_status(s) for s in options.capture_statuses if s.strip())


def parse_statuses(text: str) -> list[str]:
    """Capture statuses as a merchant types them ("completed, wc-shipped"): normalized, in order,
    without repeats. Raises ValueError naming the first one WordPress could not have."""
    statuses: list[str] = []
    for raw in re.split(r"[,\s]+", text):
        if not raw:
            continue
        status = normalize_status(raw)
        if not _STATUS.fullmatch(status):
            raise ValueError(
                f"{raw!r} is not an order status: use its slug, as in completed or shipped "
                f"(lowercase letters, digits, - and _, at most {MAX_STATUS_LENGTH})."
            )
        if status not in statuses:
            statuses.append(status)
    if not statuses:
        raise ValueError("Name at least one status, as in completed.")
    if len(statuses) > MAX_CAPTURE_STATUSES:
        raise ValueError(f"At most {MAX_CAPTURE_STATUSES} statuses.")
    return statuses

"""The one place that speaks SQL: shops, deliveries, jobs, capture ledger, audit trail."""

from pathlib import Path

from plugin.store.base import Captured, NewCallback, NewShop, Plan, ShopChanges, Store

__all__ = [
    "Captured",
    "NewCallback",
    "NewShop",
    "Plan",
    "ShopChanges",
    "Store",
    "open_store",
]


def open_store(database_url: str) -> Store:
    """The store a database URL names: `sqlite:///path/to/file.db` (PostgreSQL: a later issue)."""
    if database_url.startswith("sqlite:///"):
        from plugin.store.sqlite import SqliteStore

        return SqliteStore(Path(database_url.removeprefix("sqlite:///")))
    raise ValueError(f"no store for {database_url.split(':', 1)[0]!r} URLs yet")

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
    """The store a database URL names: `sqlite:///path/to/file.db`, or PostgreSQL's
    `postgresql://user:password@host:port/database` (`postgres://` too)."""
    if database_url.startswith("sqlite:///"):
        from plugin.store.sqlite import SqliteStore

        return SqliteStore(Path(database_url.removeprefix("sqlite:///")))
    if database_url.startswith(("postgresql://", "postgres://")):
        from plugin.store.postgres import PostgresStore

        return PostgresStore(database_url)
    raise ValueError(f"no store for {database_url.split(':', 1)[0]!r} URLs yet")

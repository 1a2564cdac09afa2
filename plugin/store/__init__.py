"""The one place that speaks SQL: shops, deliveries, jobs, capture ledger, audit trail."""

from pathlib import Path

from plugin.store.base import (
    AuditNote,
    Captured,
    NewCallback,
    NewDelivery,
    NewShop,
    Plan,
    ShopChanges,
    Store,
    StoreUnavailable,
)

__all__ = [
    "AuditNote",
    "Captured",
    "NewCallback",
    "NewDelivery",
    "NewShop",
    "Plan",
    "ShopChanges",
    "Store",
    "StoreUnavailable",
    "open_store",
]


def open_store(database_url: str, *, pool_size: int = 20) -> Store:
    """The store a database URL names: `sqlite:///path/to/file.db`, or PostgreSQL's
    `postgresql://user:password@host:port/database` (`postgres://` too), with at most
    `pool_size` connections."""
    if database_url.startswith("sqlite:///"):
        from plugin.store.sqlite import SqliteStore

        return SqliteStore(Path(database_url.removeprefix("sqlite:///")))
    if database_url.startswith(("postgresql://", "postgres://")):
        from plugin.store.postgres import PostgresStore

        return PostgresStore(database_url, max_size=pool_size)
    raise ValueError(f"no store for {database_url.split(':', 1)[0]!r} URLs yet")

"""The one place that speaks SQL: shops, deliveries, jobs, capture ledger, audit trail."""

from pathlib import Path

from plugin.store.base import (
    AuditNote,
    Beat,
    Captured,
    FinishOrderOperation,
    NewCallback,
    NewShop,
    NoteOrder,
    Plan,
    PlanOrderOperation,
    PruneReport,
    ShopChanges,
    Store,
    StoreUnavailable,
)
from plugin.store.records import NewDelivery

__all__ = [
    "AuditNote",
    "Beat",
    "Captured",
    "FinishOrderOperation",
    "NewCallback",
    "NewDelivery",
    "NewShop",
    "NoteOrder",
    "Plan",
    "PlanOrderOperation",
    "PruneReport",
    "ShopChanges",
    "Store",
    "StoreUnavailable",
    "open_store",
]


def open_store(database_url: str, *, pool_size: int = 20, timeout: float = 5.0) -> Store:
    """The store a database URL names: `sqlite:///path/to/file.db`, or PostgreSQL's
    `postgresql://user:password@host:port/database` (`postgres://` too), with at most
    `pool_size` connections; each wait for the database (PostgreSQL: to connect, for a
    connection, for a statement; SQLite: for another process's lock) at most `timeout` seconds."""
    if database_url.startswith("sqlite:///"):
        from plugin.store.sqlite import SqliteStore

        return SqliteStore(Path(database_url.removeprefix("sqlite:///")), busy_timeout=timeout)
    if database_url.startswith(("postgresql://", "postgres://")):
        from plugin.store.postgres import PostgresStore

        return PostgresStore(database_url, max_size=pool_size, timeout=timeout)
    raise ValueError(f"no store for {database_url.split(':', 1)[0]!r} URLs yet")

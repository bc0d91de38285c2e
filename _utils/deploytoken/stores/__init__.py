"""
The token store interface, and the one table of backends.

Adding a store is one file with a class that follows ``TokenStore`` (built by ``from_settings``, which
checks the backend's own ``deploytoken:<backend>:`` block once) and one line in ``BACKENDS``; the
conformance suite in ``tests/test_store_conformance.py`` then runs against it with one fixture param.
"""

import importlib
from typing import Protocol

from deploytoken import model


class TokenStore(Protocol):
    backend: str  # the key of the store in BACKENDS
    location: str  # where people look: a path or a URL
    account_email: str | None  # the Google account of a person's own credentials, else None

    @classmethod
    def from_settings(cls, settings) -> "TokenStore":
        """The store configured in ``settings`` (``deploytoken.settings.Settings``); InputError if not usable."""

    @property
    def identity(self) -> dict:
        """``{"id": str, "name": str}``: an id made with the store, stable for its life, and its name."""

    def read(self) -> model.Holding | None:
        """The current holding, or None when nobody holds the token."""

    def acquire(self, holding: model.Holding) -> model.Holding:
        """Write ``holding`` if nobody holds the token; return whoever holds it afterwards. A store whose
        ``writes_wait_with_acquire`` is true also takes ``waited=``, a history row it writes in the same
        transaction when the token is taken (a waiter killed right after still leaves its ``waited`` row)."""

    def release(self, claim: str, row: model.HistoryRow) -> model.HistoryRow:
        """End ``claim`` and record ``row`` in the history; ClaimConflict if ``claim`` is not current."""

    def history(self, limit: int) -> list[model.HistoryRow]:
        """The latest ``limit`` history rows, newest first."""

    def flush(self) -> int:
        """Deliver history rows kept aside locally; return how many are still pending."""

    def append_history(self, row: model.HistoryRow) -> bool:
        """Add ``row`` (an override's) to the history unless its claim is there already; True if added.
        StoreError while the history does not have it (a row kept aside locally counts as not written)."""

    def overrides(self, now) -> list[model.HistoryRow]:
        """The override rows still running at ``now`` (``until`` is their planned end) without a cancellation
        row, oldest first: ``model.active_overrides`` of the whole history, however the store finds them."""

    # The waiting line (deploytoken.stores.noline.NoWaitingLine is a store without one).
    def enqueue(self, who: str):
        """Join the line of waiters as ``who``; return the ticket."""

    def ahead(self, ticket) -> int:
        """How many waiters are before ``ticket``: 0 when it is this waiter's turn."""

    def dequeue(self, ticket) -> None:
        """Leave the line."""

    def waiting(self) -> list[dict]:
        """The waiters in arrival order: ``[{"who", "since", "ticket"}]``."""

    def wait(self, seconds: float) -> None:
        """Return as soon as the token may have changed hands, or after ``seconds``."""


# Each backend is imported only when it is used: a master on SQLite never loads psycopg or Google's client.
BACKENDS = {
    "sqlite": ("deploytoken.stores.sqlite", "SqliteStore"),
    "google": ("deploytoken.stores.google.store", "GoogleStore"),
    "postgres": ("deploytoken.stores.postgres.store", "PostgresStore"),
}


def backend(name):
    """The store class of backend ``name`` (a key of ``BACKENDS``)."""
    if name not in BACKENDS:
        raise model.InputError(
            f"Unknown deploytoken:backend {name!r}: use one of {', '.join(BACKENDS)} in the master config."
        )
    module, cls = BACKENDS[name]
    return getattr(importlib.import_module(module), cls)


def open_store(settings) -> TokenStore:
    """The token store named by ``deploytoken:backend`` (``sqlite`` unless told otherwise)."""
    return backend(settings.backend).from_settings(settings)

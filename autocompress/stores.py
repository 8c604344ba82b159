"""Local SQLite stores that several processes may open at once: the study file and MLflow's backend store."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

from autocompress.cores import exclusive_lock

SQLITE_PREFIX = "sqlite:///"


def schema_lock(url: str) -> AbstractContextManager[None]:
    """For a SQLite file, an exclusive lock beside it while a library creates or migrates its tables. Optuna and MLflow both
    create a new file's schema unguarded: processes opening it at once fail with ``UNIQUE constraint failed:
    alembic_version`` or ``table ... already exists`` (measured). Database servers guard themselves: no lock."""
    if not url.startswith(SQLITE_PREFIX) or url == SQLITE_PREFIX + ":memory:":
        return nullcontext()
    return exclusive_lock(url[len(SQLITE_PREFIX):].split("?")[0] + ".lock")

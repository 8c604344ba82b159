"""Local SQLite stores that several processes may open at once: the study file and MLflow's backend store."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from autocompress.cores import exclusive_lock

SQLITE_PREFIX = "sqlite:///"


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None for an in-memory database or a server)."""
    if not url.startswith(SQLITE_PREFIX) or url == SQLITE_PREFIX + ":memory:":
        return None
    return Path(url[len(SQLITE_PREFIX):].split("?")[0])


def schema_lock(url: str) -> AbstractContextManager[None]:
    """For a SQLite file, an exclusive lock beside it while a library creates or migrates its tables. Optuna and MLflow both
    create a new file's schema unguarded: processes opening it at once fail with ``UNIQUE constraint failed:
    alembic_version`` or ``table ... already exists`` (measured). Database servers guard themselves: no lock."""
    path = sqlite_file(url)
    return nullcontext() if path is None else exclusive_lock(str(path) + ".lock")

"""Passwords in store URLs (a team's PostgreSQL study storage, a database MLflow tracks to), kept out of what others read.

A storage or tracking URL may be written as a reference: ``env:NAME`` (the
environment variable NAME holds the URL) or ``file:PATH`` (the first line of a
file only its owner may read). Configs, command lines, the records of detached
jobs, study attributes and MLflow params then carry the reference, and only the
process that connects reads the URL (``resolve``). ``$AUTOCOMPRESS_STORAGE``,
when set, stands for every config file's ``search.storage``. Whatever shows a
URL masks its password (``masked``), and log records are scrubbed of every
password this process has resolved (``SecretFilter``).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from autocompress.config import STORAGE_ENV, ConfigError

__all__ = ["STORAGE_ENV", "SecretFilter", "absolute_reference", "has_password", "is_reference", "masked", "resolve", "scrub"]
ENV_PREFIX, FILE_PREFIX = "env:", "file:"
_seen: set[str] = set()
"""Passwords of URLs resolved or masked in this process: log records never show them."""


def is_reference(value: str) -> bool:
    return value.startswith((ENV_PREFIX, FILE_PREFIX))


def resolve(value: str, field: str) -> str:
    """The URL ``value`` stands for (itself unless a reference); a one-line ``ConfigError`` naming ``field`` when it cannot be read."""
    if value.startswith(ENV_PREFIX):
        name = value[len(ENV_PREFIX):]
        url = os.environ.get(name, "").strip()
        if not url:
            raise ConfigError(f"{field}: {value!r} names the environment variable {name}, which is not set here")
    elif value.startswith(FILE_PREFIX):
        path = Path(value[len(FILE_PREFIX):]).expanduser()
        if not path.is_file():
            raise ConfigError(f"{path}: not found ({field}: {value!r})")
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(f"{path}: other users may read it (mode {mode:o}); `chmod 600 {path}` first ({field})")
        url = next(iter(path.read_text().splitlines()), "").strip()
        if not url:
            raise ConfigError(f"{path}: its first line is empty; write the URL there ({field})")
    else:
        url = value
    masked(url)  # remembers its password for the log filter
    return url


def absolute_reference(value: str) -> str:
    """A ``file:`` reference with an absolute path, so a job started elsewhere reads the same file; other values as they are."""
    if value.startswith(FILE_PREFIX):
        return FILE_PREFIX + str(Path(value[len(FILE_PREFIX):]).expanduser().resolve())
    return value


def has_password(url: str) -> bool:
    return _password(url) is not None


def masked(url: str) -> str:
    """``url`` with its password as ``***`` (``postgresql://user:***@host/db``); a reference or a URL without one as it is."""
    password = _password(url)
    if password is None:
        return url
    _seen.add(password)
    scheme, rest = url.split("://", 1)
    netloc, slash, path = rest.partition("/")
    user = netloc.rsplit("@", 1)[0].split(":", 1)[0]
    return f"{scheme}://{user}:***@{netloc.rsplit('@', 1)[1]}{slash}{path}"


def scrub(text: str) -> str:
    """``text`` without any password this process has resolved or masked."""
    for password in _seen:
        text = text.replace(password, "***")
    return text


class SecretFilter(logging.Filter):
    """Rewrites log records that would print a password this process knows (a driver's error message quoting a URL)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _seen:
            message = record.getMessage()
            clean = scrub(message)
            if clean != message:
                record.msg, record.args = clean, None
        return True


def _password(url: str) -> str | None:
    if is_reference(url) or "://" not in url:
        return None
    credentials = url.split("://", 1)[1].split("/", 1)[0]
    if "@" not in credentials:
        return None
    user_info = credentials.rsplit("@", 1)[0]
    return user_info.split(":", 1)[1] if ":" in user_info and user_info.split(":", 1)[1] else None

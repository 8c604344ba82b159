"""Real servers for the tests: a private PostgreSQL cluster and mlflow_server/, started and stopped by the tests.

Where a program is missing the test skips, except when
``AUTOCOMPRESS_REQUIRE_SERVICES=1`` (set by ``.ci/run``, which installs them):
then it fails, so CI cannot pass by skipping.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SERVER = REPO / "mlflow_server"


def require(program: str, found: str | None) -> str:
    """``found``, or skip (fail under AUTOCOMPRESS_REQUIRE_SERVICES=1) naming the Debian package to install."""
    if found:
        return found
    message = f"{program} is not installed (Debian: apt-get install {program})"
    if os.environ.get("AUTOCOMPRESS_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _postgres_bin() -> str | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    found = candidates[-1] if candidates else shutil.which("initdb")
    return str(Path(found).parent) if found else None


@contextmanager
def postgres(databases: list[str]) -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 with ``databases``; yields ``postgresql://postgres@127.0.0.1:PORT``.

    PostgreSQL refuses to run as root, so as root the cluster belongs to
    Debian's ``postgres`` user.
    """
    bindir = require("postgresql", _postgres_bin())
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    home = Path(tempfile.mkdtemp(prefix="autocompress-pg-"))
    if as_user:
        shutil.chown(home, "postgres")
    data, port = home / "data", free_port()

    def run(*command: str) -> None:
        subprocess.run([*as_user, *command], check=True, capture_output=True, timeout=120)

    run(f"{bindir}/initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(f"{bindir}/pg_ctl", "-D", str(data), "-o", options, "-l", str(home / "log"), "-w", "start")
    url = f"postgresql://postgres@127.0.0.1:{port}"
    try:
        import psycopg

        with psycopg.connect(f"{url}/postgres", autocommit=True) as connection:
            for name in databases:
                connection.execute(f"CREATE DATABASE {name}")
        yield url
    finally:
        subprocess.run([*as_user, f"{bindir}/pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(home, ignore_errors=True)


def healthy(url: str) -> bool:
    try:
        return urllib.request.urlopen(f"{url}/health", timeout=2).read().strip() == b"OK"
    except OSError:
        return False


@contextmanager
def mlflow_server(folder: Path, **settings: str) -> Iterator[str]:
    """``mlflow_server/start`` with ``settings`` (MLFLOW_BACKEND_STORE_URI, ...) on a free port; stopped after."""
    env = {**os.environ, "MLFLOW_SERVER_DIR": str(folder), "MLFLOW_PORT": str(free_port()), "PYTHON": sys.executable, **settings}
    started = subprocess.run([str(SERVER / "start")], env=env, capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, started.stderr
    url = started.stdout.strip().splitlines()[-1]
    try:
        yield url
    finally:
        subprocess.run([str(SERVER / "stop")], env=env, capture_output=True, timeout=60)

"""Store URLs with passwords: given by reference (env:, file:, $AUTOCOMPRESS_STORAGE), masked wherever shown, scrubbed from logs,
and kept out of a detached job's argv, record and everything it writes (a real search on PostgreSQL, grepped)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from autocompress.config import ConfigError, load_config
from autocompress.credentials import SecretFilter, absolute_reference, has_password, masked, resolve, scrub

URL = "postgresql://team:pa55-word@db.example:5432/optuna"


def test_a_url_is_itself_or_read_from_its_variable_or_private_file(tmp_path, monkeypatch):
    assert resolve(URL, "search.storage") == URL
    monkeypatch.setenv("TEAM_STORE", URL)
    assert resolve("env:TEAM_STORE", "search.storage") == URL
    secret = tmp_path / "store.url"
    secret.write_text(URL + "\n# the first line is the URL\n")
    secret.chmod(0o600)
    assert resolve(f"file:{secret}", "search.storage") == URL
    monkeypatch.chdir(tmp_path)
    assert absolute_reference("file:store.url") == f"file:{secret}" and absolute_reference("env:X") == "env:X"


@pytest.mark.parametrize(("value", "setup", "message"), [
    ("env:NOT_SET_HERE", None, "search.storage: 'env:NOT_SET_HERE' names the environment variable NOT_SET_HERE, which is not set here"),
    ("file:{dir}/store.url", 0o644, "other users may read it (mode 644); `chmod 600"),
    ("file:{dir}/missing.url", None, "missing.url: not found (search.storage"),
    ("file:{dir}/store.url", 0o600, "its first line is empty"),
])
def test_a_reference_that_cannot_be_read_is_one_line(tmp_path, value, setup, message):
    if setup is not None:
        (tmp_path / "store.url").write_text("" if setup == 0o600 else URL)
        (tmp_path / "store.url").chmod(setup)
    with pytest.raises(ConfigError) as error:
        resolve(value.format(dir=tmp_path), "search.storage")
    assert message in str(error.value) and "\n" not in str(error.value) and "pa55-word" not in str(error.value)


def test_masks_and_scrubs_the_password_only():
    assert masked(URL) == "postgresql://team:***@db.example:5432/optuna" and has_password(URL)
    assert masked("postgresql://team@db/optuna") == "postgresql://team@db/optuna" and not has_password("sqlite:///a@b.db")
    assert masked("env:AUTOCOMPRESS_STORAGE") == "env:AUTOCOMPRESS_STORAGE"
    assert scrub(f"could not connect to {URL}") == "could not connect to postgresql://team:***@db.example:5432/optuna"
    record = logging.LogRecord("sqlalchemy", logging.ERROR, __file__, 1, "connect failed: %s", (URL,), None)
    assert SecretFilter().filter(record) and "pa55-word" not in record.getMessage()


def test_autocompress_storage_overrides_the_file_as_a_reference(tmp_path, monkeypatch):
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump({"search": {"storage": "sqlite:///mine.db"}}))
    assert load_config(path).search.storage == "sqlite:///mine.db"
    monkeypatch.setenv("AUTOCOMPRESS_STORAGE", URL)
    assert load_config(path).search.storage == "env:AUTOCOMPRESS_STORAGE"  # the config object never holds the URL


@pytest.mark.slow
def test_a_detached_search_on_postgresql_leaves_its_password_nowhere(tiny, tmp_path):
    from services import postgres

    password = "s3cret-" + os.urandom(4).hex()
    with postgres(["optuna"]) as server:  # trust authentication: any password connects, so the password is a marker
        storage = f"{server}/optuna".replace("postgres@", f"postgres:{password}@")
        config = tiny("secret", n_trials=1, tiny_bert=True)
        command = [sys.executable, "-m", "autocompress", "search", str(config), "--storage", storage, "--detach"]
        launched = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert launched.returncode == 0, launched.stderr
        job = launched.stdout.split()[0]
        assert "reads its password from $AUTOCOMPRESS_STORAGE" in launched.stderr
        record = yaml.safe_load((tmp_path / "cache" / "jobs" / f"{job}.json").read_text())
        assert record["storage"] == "env:AUTOCOMPRESS_STORAGE" and password not in str(record["argv"])
        cmdline = Path(f"/proc/{record['pid']}/cmdline").read_bytes().decode()  # what `ps` shows every local user
        assert "env:AUTOCOMPRESS_STORAGE" in cmdline and password not in cmdline

        def cli(*args, env=None):
            return subprocess.run([sys.executable, "-m", "autocompress", *args], capture_output=True, text=True, timeout=120, env=env)

        without = {k: v for k, v in os.environ.items() if k != "AUTOCOMPRESS_STORAGE"}
        refused = cli("status", job, env=without)
        assert refused.returncode != 0 and "job" in refused.stderr and "AUTOCOMPRESS_STORAGE, which is not set here" in refused.stderr
        with_it = {**without, "AUTOCOMPRESS_STORAGE": storage}
        deadline = time.time() + 300
        while "exited" not in cli("status", job, env=with_it).stdout and time.time() < deadline:
            time.sleep(2)
        status = cli("status", job, env=with_it)
        assert "exited 0" in status.stdout and "in env:AUTOCOMPRESS_STORAGE: finished" in status.stdout and password not in status.stdout

    written = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink()]
    assert len(written) > 20  # the cache, the job's record and log, the output folder, MLflow's store and artifacts
    leaked = [str(p.relative_to(tmp_path)) for p in written if password.encode() in p.read_bytes()]
    assert leaked == []

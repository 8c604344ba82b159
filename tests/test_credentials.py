"""Store URLs with passwords: given by reference (env:, file:, $AUTOCOMPRESS_STORAGE), masked wherever shown and scrubbed
from logs. tests/tracking/test_team_setup.py runs a detached search on PostgreSQL and greps all it wrote for the password."""

from __future__ import annotations

import logging

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

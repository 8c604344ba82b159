"""The team set-up for real: PostgreSQL holds the Optuna study and MLflow's runs, mlflow_server/ serves them.

A tiny search (on a random 2-block BERT: the services are under test) runs against both; then the registry, the
``register`` command and the MLflow UI, opened in headless Chromium, are
checked. Screenshots are kept in ``test-artifacts/ui/``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import mlflow
import optuna
import psycopg
import pytest
from browser import find_chromium, page_text
from services import REPO, mlflow_server, postgres, require

from autocompress.cli import main

pytestmark = pytest.mark.slow
SHOTS = REPO / "test-artifacts" / "ui"
ML = "workflowType=machine_learning"  # MLflow 3.17's UI opens experiments on its GenAI pages unless told


def tables(url: str) -> set[str]:
    with psycopg.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {row[0] for row in cursor.fetchall()}


def test_a_search_on_postgresql_behind_mlflow_server_registers_its_champion_and_shows_in_the_ui(tiny, tmp_path, capsys):
    def chromium() -> str | None:
        try:
            return find_chromium()
        except FileNotFoundError:
            return None

    require("chromium", chromium())
    store = tmp_path / "object-store"  # what a bucket is to a team: the server proxies it, clients need no credentials
    with postgres(["mlflow", "optuna"]) as database, mlflow_server(
        tmp_path / "server", MLFLOW_BACKEND_STORE_URI=f"{database}/mlflow", MLFLOW_ARTIFACTS_DESTINATION=str(store)
    ) as url:
        storage = f"{database}/optuna".replace("postgres@", "postgres:s3cret@")  # trust auth ignores it; MLflow must not show it
        config = tiny("team", n_trials=3, storage=storage, tracking={"uri": url, "experiment": "team"}, tiny_bert=True)
        # a teammate's search at once, on the same PostgreSQL databases and server, from another process
        other = tiny("teammate", n_trials=2, storage=storage, tracking={"uri": url, "experiment": "teammate"}, tiny_bert=True)
        teammate = subprocess.Popen([sys.executable, "-m", "autocompress", "search", str(other)], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)  # fmt: skip
        assert main(["search", str(config)]) == 0
        printed = capsys.readouterr().out
        teammate_printed = teammate.communicate(timeout=300)[0]
        assert teammate.returncode == 0 and "registered models:/autocompress-teammate@champion" in teammate_printed, teammate_printed[-3000:]
        assert [t.state.name for t in optuna.load_study(study_name="teammate", storage=f"{database}/optuna").trials] == ["COMPLETE"] * 2
        assert "registered models:/autocompress-team@champion" in printed and f"MLflow: {url}/#/experiments/" in printed

        study = optuna.load_study(study_name="team", storage=f"{database}/optuna")
        assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
        assert {"studies", "trials", "trial_heartbeats"} <= tables(f"{database}/optuna")
        assert {"experiments", "runs", "registered_models", "model_versions"} <= tables(f"{database}/mlflow")

        mlflow.set_tracking_uri(url)
        client = mlflow.MlflowClient()
        experiment = client.get_experiment_by_name("team")
        runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
        parent = runs["search-team"]
        trials = [runs[f"trial-{i}"] for i in range(3)]
        assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in trials)
        logged_config = mlflow.artifacts.load_text(f"{parent.info.artifact_uri}/config.json")
        assert parent.data.params["storage"] == storage.replace("s3cret", "***") and "s3cret" not in logged_config
        assert {p.name for p in store.rglob("*")} >= {"pareto.html", "progress.png", "front_layers.png", "model.onnx"}  # via the server

        champion = client.get_model_version_by_alias("autocompress-team", "champion")
        chosen = json.loads((tmp_path / "out-team" / "best_policy.json").read_text())
        download = tmp_path / "champion"
        env = {**os.environ, "MLFLOW_TRACKING_URI": url}
        fetched = subprocess.run(
            [str(REPO / ".venv" / "bin" / "mlflow") if (REPO / ".venv" / "bin" / "mlflow").exists() else "mlflow", "artifacts", "download",
             "--artifact-uri", "models:/autocompress-team@champion", "--dst-path", str(download)],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert fetched.returncode == 0, fetched.stderr
        assert json.loads((download / "extra_files" / "policy.json").read_text()) == chosen
        assert (download / "model.onnx").stat().st_size > 1e5

        # Any front trial can be registered by run id; registering the champion's run again reuses its version.
        front = [r for r in trials if r.data.tags.get("pareto") == "true"]
        for run in front:
            assert main(["register", run.info.run_id, "--tracking-uri", url]) == 0
        versions = client.search_model_versions("name = 'autocompress-team'")
        assert sorted(v.run_id for v in versions) == sorted(r.info.run_id for r in front)
        assert main(["register", parent.info.run_id, "--tracking-uri", url]) == 2  # the search's own run holds no model
        assert "has no model" in capsys.readouterr().err

        eid, shots = experiment.experiment_id, SHOTS
        page_text(f"{url}/#/experiments/{eid}?{ML}", click=['[role=gridcell]:has-text("search-team") button'],
                  expect=["team", "search-team", "trial-0", "trial-1", "trial-2"], screenshot=shots / "experiment.png")
        page_text(f"{url}/#/experiments/{eid}/runs/{parent.info.run_id}?{ML}",
                  expect=["search-team", "Child runs", "trial-0", "trial-2", "teacher_dev_accuracy"], screenshot=shots / "search_run.png")
        page_text(f"{url}/#/experiments/{eid}/runs/{champion.run_id}?{ML}",
                  expect=["Parent run", "search-team", "block0.bits", "block1.heads", "dev_accuracy", "speedup_vs_int8", "pareto"],
                  screenshot=shots / "champion_run.png")
        page_text(f"{url}/#/models/autocompress-team", expect=["autocompress-team", "champion", f"Version {champion.version}"],
                  screenshot=shots / "registered_model.png")
    assert all((shots / f"{n}.png").stat().st_size > 10_000 for n in ("experiment", "search_run", "champion_run", "registered_model"))


def test_a_team_server_with_basic_auth_keeps_users_apart_and_a_detached_search_leaves_no_password(tiny, tmp_path, monkeypatch):
    import time
    import urllib.error
    import urllib.request
    from pathlib import Path

    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    storage_password, alice_password = "s3cret-" + os.urandom(4).hex(), "alice-" + os.urandom(6).hex()
    with postgres(["mlflow", "mlflow_auth", "optuna"]) as database, mlflow_server(
        tmp_path / "server", MLFLOW_BACKEND_STORE_URI=f"{database}/mlflow", MLFLOW_ARTIFACTS_DESTINATION=str(tmp_path / "store"),
        MLFLOW_AUTH="basic", MLFLOW_AUTH_DATABASE_URI=f"{database}/mlflow_auth", MLFLOW_AUTH_ADMIN_PASSWORD="admin-password-1",
    ) as url:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/search?max_results=1", timeout=30)
        assert refused.value.code == 401  # anonymous: nothing to read, nothing to delete
        assert {"users", "experiment_permissions", "registered_model_permissions"} <= tables(f"{database}/mlflow_auth")

        def as_user(name: str, password: str) -> dict[str, str]:
            monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", name)
            monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
            return dict(os.environ)

        as_user("admin", "admin-password-1")
        users = get_app_client("basic-auth", tracking_uri=url)
        users.create_user("alice", alice_password)
        users.create_user("bob", "bob-password-12")

        # alice's search, detached, its study on PostgreSQL given with its password (trust auth takes any: a marker)
        env = as_user("alice", alice_password)
        storage = f"{database}/optuna".replace("postgres@", f"postgres:{storage_password}@")
        config = tiny("authteam", n_trials=2, tracking={"uri": url, "experiment": "authteam"}, tiny_bert=True)

        def cli(*args: str, env: dict[str, str] = env) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "autocompress", *args], capture_output=True, text=True, timeout=120, env=env)

        launched = cli("search", str(config), "--storage", storage, "--detach")
        assert launched.returncode == 0, launched.stderr
        job = launched.stdout.split()[0]
        assert "reads its password from $AUTOCOMPRESS_STORAGE" in launched.stderr
        record = json.loads((tmp_path / "cache" / "jobs" / f"{job}.json").read_text())
        assert record["storage"] == "env:AUTOCOMPRESS_STORAGE" and storage_password not in str(record["argv"])
        cmdline = Path(f"/proc/{record['pid']}/cmdline").read_bytes().decode()  # what `ps` shows every local user
        assert "env:AUTOCOMPRESS_STORAGE" in cmdline and storage_password not in cmdline
        refused = cli("status", job)  # another shell, without the variable
        assert refused.returncode == 2 and "AUTOCOMPRESS_STORAGE, which is not set here" in refused.stderr
        with_it = {**env, "AUTOCOMPRESS_STORAGE": storage}
        deadline = time.time() + 300  # wait on the process itself: a `status` every few seconds would take the search's cores
        while _running(record["pid"]) and time.time() < deadline:
            time.sleep(1)
        status = cli("status", job, env=with_it).stdout
        assert "exited 0" in status and "in env:AUTOCOMPRESS_STORAGE: finished" in status, status
        assert "registered models:/autocompress-authteam@champion" in cli("logs", job).stdout  # logged and registered as alice

        client = mlflow.MlflowClient(url)
        run = client.search_runs([client.get_experiment_by_name("authteam").experiment_id])[0]
        as_user("bob", "bob-password-12")  # default permission READ: he sees alice's runs, he cannot delete them
        assert client.get_run(run.info.run_id).info.run_id == run.info.run_id
        with pytest.raises(MlflowException, match="PERMISSION_DENIED|Permission denied"):
            client.delete_run(run.info.run_id)
        with pytest.raises(MlflowException, match="PERMISSION_DENIED|Permission denied"):
            client.delete_registered_model("autocompress-authteam")
        as_user("alice", alice_password[::-1])  # the server remembers verified passwords for a minute, not wrong ones
        with pytest.raises(MlflowException, match="401|Unauthorized|UNAUTHENTICATED"):
            client.get_run(run.info.run_id)
        as_user("alice", alice_password)
        assert client.get_run(run.info.run_id).info.lifecycle_stage == "active"

    written = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink()]
    assert len(written) > 20  # the cache, the job's record and log, the output folder, the server's log and artifact store
    assert [str(p) for p in written if storage_password.encode() in p.read_bytes() or alice_password.encode() in p.read_bytes()] == []


def _running(pid: int) -> bool:
    """Whether process ``pid`` is alive (a zombie has exited; its parent has not reaped it yet)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False

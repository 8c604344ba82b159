"""The servers users open: mlflow_server/ (SQLite, and the team set-up on PostgreSQL) and optuna-dashboard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import psutil
import pytest
from mlflow.tracking import MlflowClient
from services import SERVER, free_port, healthy


def listening(port: int) -> set[str]:
    return {c.laddr.ip for c in psutil.net_connections(kind="tcp") if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN}


def test_the_default_server_keeps_its_stores_in_its_folder_listens_on_loopback_and_stops(tmp_path):
    folder = tmp_path / "server"
    port = str(free_port())
    env = {**os.environ, "MLFLOW_SERVER_DIR": str(folder), "MLFLOW_PORT": port, "PYTHON": sys.executable}
    started = subprocess.run([str(SERVER / "start")], env=env, capture_output=True, text=True, timeout=300)
    try:
        assert started.returncode == 0, started.stderr
        url = started.stdout.strip()
        assert url == f"http://127.0.0.1:{port}" and healthy(url)
        assert listening(int(port)) == {"127.0.0.1"}  # not reachable from other machines unless MLFLOW_HOST says so

        client = MlflowClient(tracking_uri=url)
        run = client.create_run(client.create_experiment("served"))
        client.log_text(run.info.run_id, "hello", "note.txt")  # proxied: the client writes through the server
        assert (folder / "mlflow.db").is_file()
        assert [p.read_text() for p in (folder / "artifacts").rglob("note.txt")] == ["hello"]

        again = subprocess.run([str(SERVER / "start")], env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and again.stdout.strip() == url and "already running" in again.stderr
        elsewhere = {**env, "MLFLOW_SERVER_DIR": str(tmp_path / "other")}  # another server on the same port
        clash = subprocess.run([str(SERVER / "start")], env=elsewhere, capture_output=True, text=True, timeout=60)
        assert clash.returncode == 1 and "something else already answers" in clash.stderr and "MLFLOW_PORT" in clash.stderr
        pid = int((folder / f"server-{port}.pid").read_text())
        spawned = [" ".join(child.cmdline()) for child in psutil.Process(pid).children(recursive=True)]
        assert spawned and not [c for c in spawned if "mlflow.server.jobs" in c]  # MLflow's GenAI job runner: off unless asked for
    finally:
        stopped = subprocess.run([str(SERVER / "stop")], env=env, capture_output=True, text=True, timeout=60)
    assert stopped.returncode == 0 and "stopped" in stopped.stderr
    assert not healthy(url) and not psutil.pid_exists(pid) and not listening(int(port))
    assert not (folder / f"server-{port}.pid").exists()


def test_optuna_dashboard_opens_the_study_storage(tmp_path):
    storage = f"sqlite:///{tmp_path}/study.db"
    study = optuna.create_study(study_name="dashboard", storage=storage, directions=["maximize", "minimize"])
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_float("y", 0, 1)), n_trials=3)
    port = free_port()
    command = [str(Path(sys.executable).parent / "optuna-dashboard"), storage, "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, studies = time.time() + 60, None
        while studies is None and time.time() < deadline:
            try:
                studies = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2))["study_summaries"]
            except OSError:
                time.sleep(0.5)
        assert studies is not None, "optuna-dashboard did not answer"
        found = {s["study_name"]: s for s in studies}
        assert "dashboard" in found and listening(port) == {"127.0.0.1"}
        detail = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{found['dashboard']['study_id']}", timeout=10))
        assert len(detail["trials"]) == 3 and detail["directions"] == ["maximize", "minimize"]
    finally:
        server.terminate()
        server.wait(timeout=30)


pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


@pytest.mark.parametrize(("settings", "message"), [
    ({"MLFLOW_HOST": "0.0.0.0"}, "MLFLOW_HOST=0.0.0.0 without authentication lets anyone who reaches port"),
    ({"MLFLOW_AUTH": "ldap"}, "MLFLOW_AUTH=ldap; allowed: none, basic"),
])
def test_start_refuses_an_open_server_without_authentication(tmp_path, settings, message):
    env = {**os.environ, "MLFLOW_SERVER_DIR": str(tmp_path), "MLFLOW_PORT": str(free_port()), "PYTHON": sys.executable, **settings}
    started = subprocess.run([str(SERVER / "start")], env=env, capture_output=True, text=True, timeout=60)
    assert started.returncode == 1 and message in started.stderr and not list(tmp_path.glob("*.pid"))

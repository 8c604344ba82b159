"""Launch and forget: Ray workers, detached jobs, kill -9 and resume, stop, Ctrl-C, MLflow down.

The whole pipeline runs, on a tiny random BERT so that the processes, not the model, take the time
(test_search_e2e runs it on the real model).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

import mlflow
import optuna
import pytest
import ray
from optuna.trial import TrialState

from autocompress.cli import main
from autocompress.controller.study import trial_seed
from autocompress.controller.trial import TrialOutcome, TrialRequest

pytestmark = pytest.mark.slow


def cli(*args, timeout=120):
    done = subprocess.run([sys.executable, "-m", "autocompress", *args], capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout, done.stderr


def study(name):
    return optuna.load_study(study_name=name, storage="sqlite:///study.db")


def wait_for(condition, timeout=300, every=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if condition():
                return
        except (KeyError, OSError):  # the study or the server is not there yet
            pass
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {condition.__doc__ or condition}")


def job_record(job_id):
    with open(os.path.join(os.environ["AUTOCOMPRESS_CACHE"], "jobs", f"{job_id}.json")) as handle:
        return json.load(handle)


def job_state(job_id):
    """What `autocompress status` prints first, read in this process (a CLI call per poll would steal the job's CPU)."""
    from autocompress.controller.jobs import load

    return load(job_id).state()


def mlflow_runs(name):
    mlflow.set_tracking_uri(f"sqlite:///{os.getcwd()}/mlflow.db")  # absolute: MLflow caches stores by URI across tests
    return mlflow.search_runs(experiment_names=[name], output_format="list")


def states(name):
    return [t.state for t in study(name).trials]


def lifecycle(tiny, name, **search):
    """A tiny search on a tiny BERT whose end skips exports and registration: these tests watch the study and its runs."""
    tracking = {"uri": "sqlite:///mlflow.db", "experiment": name, "registry": "none", "export_formats": []}
    return tiny(name, tracking=tracking, tiny_bert=True, **search)


def test_two_ray_workers_run_trials_at_once_but_never_time_at_once(tiny):
    config = lifecycle(tiny, "parallel", n_trials=4)
    assert main(["search", str(config), "--workers", "2", "--threads-per-worker", "1"]) == 0
    trials = study("parallel").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # two actors, two processes
    spans = [(t.datetime_start.timestamp(), t.datetime_complete.timestamp()) for t in trials]
    assert any(a[0] < b[1] and b[0] < a[1] for a, b in itertools.combinations(spans, 2))  # trials ran at the same time
    windows = sorted((t.user_attrs["timed_from"], t.user_attrs["timed_until"]) for t in trials)
    assert all(earlier[1] <= later[0] for earlier, later in itertools.pairwise(windows))  # their timings did not
    runs = [r for r in mlflow_runs("parallel") if r.info.run_name.startswith("trial-")]
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 4


def test_three_searches_at_once_share_one_cache_one_study_file_and_one_mlflow_store(tiny):
    """Three users' searches on one machine: the same cache (teacher, references, core budget, latency lock), SQLite
    study file and MLflow store, written by three processes at once."""
    names = [f"load{i}" for i in range(3)]
    configs = [lifecycle(tiny, name, n_trials=3) for name in names]
    command = [sys.executable, "-m", "autocompress", "search"]
    searches = [subprocess.Popen([*command, str(c)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in configs]
    printed = [search.communicate(timeout=400) for search in searches]
    assert [search.returncode for search in searches] == [0, 0, 0], [err[-3000:] for (_, err), s in zip(printed, searches) if s.returncode]
    assert not [name for name, (out, err) in zip(names, printed) if "database is locked" in out + err]
    trials = [t for name in names for t in study(name).trials]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 9
    windows = sorted((t.user_attrs["timed_from"], t.user_attrs["timed_until"]) for t in trials)
    assert all(earlier[1] <= later[0] for earlier, later in itertools.pairwise(windows))  # no two timings overlapped
    runs = [r for name in names for r in mlflow_runs(name)]
    assert sorted(r.info.run_name for r in runs if r.info.run_name.startswith("trial-")) == sorted([f"trial-{i}" for i in range(3)] * 3)
    assert {r.info.status for r in runs} == {"FINISHED"}


class Fragile:
    """A stand-in worker: dies, sleeps or answers, so the pool's fault handling is seen on a real Ray."""

    def __init__(self, *args):
        pass

    def ready(self):
        return f"fragile:{os.getpid()}"

    def run(self, request):
        if request.name == "die":
            os._exit(1)
        if request.name == "sleep":
            time.sleep(60)
        return TrialOutcome(None, None, "answered", str(os.getpid()))


def test_a_worker_that_dies_fails_its_trial_and_is_restarted_and_cancel_interrupts(tmp_path):
    from autocompress.config import parse_config
    from autocompress.controller.workers import Interrupted, RayWorkers, WorkerDied

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers get this test's class by value
    workers = RayWorkers(parse_config({}), references={}, workdir=tmp_path, workers=1, threads=1, address=None, worker_class=Fragile)
    try:
        first = workers.run(TrialRequest({}, "fine", 0)).worker
        with pytest.raises(WorkerDied, match="died"):
            workers.run(TrialRequest({}, "die", 0))
        assert workers.run(TrialRequest({}, "fine", 0)).worker != first  # Ray restarted it; the pool goes on
        errors = []
        thread = threading.Thread(target=lambda: errors.append(pytest.raises(Interrupted, workers.run, TrialRequest({}, "sleep", 0))))
        thread.start()
        time.sleep(3)
        started = time.time()
        workers.cancel()
        thread.join(timeout=30)
        assert errors and time.time() - started < 30
    finally:
        workers.close()


def test_kill_9_then_resume_keeps_everything_and_honours_the_budget(tiny):
    config = lifecycle(tiny, "crash", n_trials=4)
    code, out, err = cli("search", str(config), "--detach")
    assert code == 0, err
    job = out.split()[0]
    record = job_record(job)

    def one_done_one_running():
        trials = study("crash").trials
        return sum(t.state == TrialState.COMPLETE for t in trials) >= 1 and any(t.state == TrialState.RUNNING for t in trials)

    wait_for(one_done_one_running)
    os.kill(record["pid"], signal.SIGKILL)
    wait_for(lambda: job_state(job) == "killed", timeout=60)
    assert cli("status", job)[1].startswith(f"job {job}: killed")
    before = {t.number: t.values for t in study("crash").trials if t.state == TrialState.COMPLETE}
    killed = [t.number for t in study("crash").trials if t.state == TrialState.RUNNING]

    code, out, err = cli("resume", job)
    assert code == 0 and "until its study holds 4 finished trials" in out, err
    wait_for(lambda: job_state(job) == "exited 0", timeout=400, every=1)

    trials = study("crash").trials
    assert {t.number: t.values for t in trials if t.number in before} == before  # nothing lost
    assert not any(t.state == TrialState.RUNNING for t in trials)
    interrupted = trials[killed[0]]
    assert interrupted.state == TrialState.FAIL and "is gone" in interrupted.user_attrs["fail_reason"]
    retry = [t for t in trials if t.user_attrs.get("retry_of") == killed[0]]
    # the retry keeps every parameter the killed trial had; one killed while sampling had only some
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params.items() >= interrupted.params.items()
    own_seed = trial_seed(0, killed[0])  # the killed trial's seed, recorded or not (a kill while sampling lands before it is)
    assert retry[0].user_attrs["seed"] == own_seed == interrupted.user_attrs.get("seed", own_seed)  # the retry rebuilds the same model
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4 and len(trials) == 5  # the budget, not 4 more

    runs = mlflow_runs("crash")
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    children = {r.info.run_name: r for r in runs if r.info.run_name.startswith("trial-")}
    assert len(children) == 5 and children[f"trial-{killed[0]}"].info.status == "FAILED"
    status = cli("status", job)[1]
    assert "trials 4/4 | 0 running" in status and re.search(r"files: \d+ MB in .*crash-", status)
    code, out, _ = cli("logs", job)
    assert code == 0 and "trial 0 complete" in out and "Trial 0 finished with values" not in out  # optuna's dumps: the log file
    assert job in cli("jobs")[1]


def test_stop_lets_running_trials_finish_and_ctrl_c_marks_them(tiny):
    config = lifecycle(tiny, "stoppable", n_trials=30)
    code, out, err = cli("search", str(config), "--detach")
    job = out.split()[0]
    wait_for(lambda: sum(s == TrialState.COMPLETE for s in states("stoppable")) >= 1)
    assert cli("stop", job)[0] == 0
    wait_for(lambda: job_state(job) == "exited 0", timeout=120)
    assert study("stoppable").user_attrs["autocompress.state"] == "stopped"
    assert TrialState.RUNNING not in states("stoppable") and TrialState.FAIL not in states("stoppable")  # it finished, not failed
    assert json.loads(open("out-stoppable/pareto.json").read())

    for _ in range(4):  # a tiny model's trial lasts well under a second: Ctrl-C may land between two trials, then again
        assert cli("resume", job)[0] == 0
        done = sum(s == TrialState.COMPLETE for s in states("stoppable"))
        wait_for(lambda: sum(s == TrialState.COMPLETE for s in states("stoppable")) > done and TrialState.RUNNING in states("stoppable"))
        os.kill(job_record(job)["pid"], signal.SIGINT)  # Ctrl-C
        wait_for(lambda: job_state(job) == "exited 130", timeout=120)
        trials = study("stoppable").trials
        assert study("stoppable").user_attrs["autocompress.state"] == "interrupted"
        assert TrialState.RUNNING not in [t.state for t in trials]  # between two trials too: nothing is left running
        marked = [t for t in trials if t.state == TrialState.FAIL]
        if marked:
            break
    assert len(marked) == 1 and marked[0].user_attrs["interrupted"] and marked[0].user_attrs["fail_reason"].startswith("interrupted")
    runs = mlflow_runs("stoppable")
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    assert {r.info.run_name: r.info.status for r in runs}[f"trial-{marked[0].number}"] == "FAILED"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_tracking_server_that_is_down_loses_nothing_and_sync_catches_up(tiny, tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    config = lifecycle(tiny, "offline", n_trials=2)
    assert main(["search", str(config), "--tracking-uri", uri]) == 0  # the server is down: the search still completes
    assert [t.state for t in study("offline").trials] == [TrialState.COMPLETE] * 2

    server = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--default-artifact-root", str(tmp_path / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200, timeout=120, every=1)
        assert main(["sync", "--storage", "sqlite:///study.db", "--study-name", "offline"]) == 0
        client = mlflow.MlflowClient(tracking_uri=uri)
        runs = client.search_runs([client.get_experiment_by_name("offline").experiment_id])
        children = [r for r in runs if r.info.run_name.startswith("trial-")]
        assert sorted(r.info.status for r in children) == ["FINISHED", "FINISHED"]
        assert {r.data.tags.get("pareto") for r in children} <= {"true", "false"} and "dev_accuracy" in children[0].data.metrics
        assert [r.info.status for r in runs if r.info.run_name == "search-offline"] == ["FINISHED"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_same_config_runs_unchanged_on_a_two_node_ray_cluster_as_a_ray_job(tiny, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # as the README says: the same mode for head, workers and clients
    monkeypatch.setenv("RAY_AUTH_TOKEN", uuid.uuid4().hex + uuid.uuid4().hex)
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    gcs, dashboard = free_port(), free_port()
    head = ["start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs), "--num-cpus", "1",
            "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard)]
    try:
        subprocess.run([ray_cli, *head], check=True, capture_output=True, timeout=180)
        subprocess.run([ray_cli, "start", "--address", f"127.0.0.1:{gcs}", "--node-ip-address", "127.0.0.1", "--num-cpus", "1"],
                       check=True, capture_output=True, timeout=180)
        config = lifecycle(tiny, "cluster", n_trials=2)
        code, out, err = cli("search", str(config), "--workers", "2", "--ray-address", f"http://127.0.0.1:{dashboard}", "--detach")
        assert code == 0, err
        job = out.split()[0]
        # followed by the CLI, which returns when the job ends (this process holds Ray's token of an earlier test)
        code, followed, err = cli("logs", job, "--follow", timeout=400)
        assert code == 0, err
        assert cli("status", job)[1].startswith(f"job {job}: succeeded"), followed[-3000:]
        assert [t.state for t in study("cluster").trials] == [TrialState.COMPLETE] * 2
        nodes = re.findall(r"\(node ([0-9a-f]+)\)", followed)
        assert len(set(nodes)) == 2  # one worker on each node
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=120)

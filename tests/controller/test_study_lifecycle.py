"""The study as the source of truth: its budget, interrupted trials and their retries, its summary, MLflow catching up."""

from __future__ import annotations

import io
import multiprocessing
import socket
import subprocess
import sys
import threading
import time

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from autocompress.config import parse_config
from autocompress.controller.progress import summarize
from autocompress.controller.study import (
    BUDGET_ATTR,
    OWNER_ATTR,
    RETRY_OF_ATTR,
    fail_orphans,
    load_existing,
    make_storage,
    planned_total,
    retry_all_interrupted,
    trial_owner,
    trials_done,
)
from autocompress.tracking.runs import METRICS_ATTR, PARAMS_ATTR, Tracker


def config_for(tmp_path, **search):
    return parse_config({"search": {"storage": f"sqlite:///{tmp_path}/study.db", "study_name": "life", **search},
                         "execution": {"heartbeat_seconds": 1}})


def new_study(config):
    return optuna.create_study(study_name="life", storage=make_storage(config), directions=["maximize", "minimize", "minimize"])


def complete(study, accuracy=0.9, speedup=2.0):
    trial = study.ask({"x": optuna.distributions.IntDistribution(0, 9)})
    for key, value in {"dev_accuracy": accuracy, "speedup": speedup, PARAMS_ATTR: {"x": trial.params["x"]},
                       METRICS_ATTR: {"dev_accuracy": accuracy}, "policy": {"layers": {}}}.items():
        trial.set_user_attr(key, value)
    study.tell(trial, [accuracy, 1 / speedup, 10.0])
    return trial


def dead_owner():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return {"host": socket.gethostname(), "pid": process.pid, "started": time.time() - 60}


def test_a_trial_whose_process_died_is_failed_as_interrupted_and_retried_once(tmp_path):
    config = config_for(tmp_path)
    study = new_study(config)
    complete(study)
    orphan = study.ask({"x": optuna.distributions.IntDistribution(0, 9)})
    orphan.set_user_attr(OWNER_ATTR, dead_owner())
    alive = study.ask({"x": optuna.distributions.IntDistribution(0, 9)})
    alive.set_user_attr(OWNER_ATTR, trial_owner())  # this very process: still running
    elsewhere = study.ask({"x": optuna.distributions.IntDistribution(0, 9)})
    elsewhere.set_user_attr(OWNER_ATTR, {**dead_owner(), "host": "another-host"})  # the heartbeat's to judge

    assert fail_orphans(study) == [orphan.number]
    failed = study.trials[orphan.number]
    assert failed.state == TrialState.FAIL and failed.user_attrs["interrupted"]
    assert failed.user_attrs["fail_reason"].startswith("interrupted: its process") and "is gone" in failed.user_attrs["fail_reason"]
    assert [study.trials[n].state for n in (alive.number, elsewhere.number)] == [TrialState.RUNNING] * 2

    assert retry_all_interrupted(study) == [orphan.number]
    assert retry_all_interrupted(study) == []  # once only
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].user_attrs[RETRY_OF_ATTR] == orphan.number
    assert study.trials[-1].system_attrs["fixed_params"] == failed.params
    assert trials_done(study.trials) == 1  # the interrupted trial does not use up the budget: its retry will


def test_a_trial_killed_before_it_recorded_its_process_is_failed_once_no_process_claims_it(tmp_path):
    """``kill -9`` between Optuna creating a trial and the objective's first line left it RUNNING after every resume."""
    study = new_study(config_for(tmp_path))
    x = {"x": optuna.distributions.IntDistribution(0, 9)}
    orphan = study.ask(x)  # its process died here, before recording itself
    claimed = study.ask(x)  # its live process records itself during the wait
    threading.Timer(0.2, claimed.set_user_attr, args=(OWNER_ATTR, trial_owner())).start()
    young = []  # a live process creates one during the wait: too young to judge
    threading.Timer(0.4, lambda: young.append(study.ask(x))).start()

    assert fail_orphans(study, unclaimed_seconds=1.0) == [orphan.number]
    failed = study.trials[orphan.number]
    assert failed.state == TrialState.FAIL and failed.user_attrs["interrupted"] and "is gone" in failed.user_attrs["fail_reason"]
    assert [study.trials[t.number].state for t in (claimed, *young)] == [TrialState.RUNNING] * 2
    assert retry_all_interrupted(study) == [orphan.number]


def test_optunas_heartbeat_fails_a_silent_trial_and_retries_it(tmp_path):
    config = config_for(tmp_path)
    study = new_study(config)
    trial = study.ask({"x": optuna.distributions.IntDistribution(0, 9)})
    study._storage.record_heartbeat(trial._trial_id)
    time.sleep(5)  # grace period: 3 beats of 1 s, and SQLite keeps heartbeats in whole seconds
    optuna.storages.fail_stale_trials(study)
    assert study.trials[0].state == TrialState.FAIL
    assert [t.user_attrs.get(RETRY_OF_ATTR) for t in study.trials] == [None, 0]


def test_a_retry_that_is_interrupted_again_counts(tmp_path):
    study = new_study(config_for(tmp_path))
    first = study.ask({"x": optuna.distributions.IntDistribution(0, 9)})
    first.set_user_attr("interrupted", True)
    first.set_user_attr("fail_reason", "interrupted: Ctrl-C")
    study.tell(first, state=TrialState.FAIL)
    retry_all_interrupted(study)
    retry = study.ask()
    retry.set_user_attr("interrupted", True)
    retry.set_user_attr("fail_reason", "interrupted: Ctrl-C")
    study.tell(retry, state=TrialState.FAIL)
    assert retry_all_interrupted(study) == [] and trials_done(study.trials) == 1
    failure = study.ask({"x": optuna.distributions.IntDistribution(0, 9)})
    failure.set_user_attr("fail_reason", "RuntimeError: boom")  # a fault, not an interruption: counts, never retried
    study.tell(failure, state=TrialState.FAIL)
    assert retry_all_interrupted(study) == [] and trials_done(study.trials) == 2


def test_the_budget_is_the_studys_total(tmp_path):
    config = config_for(tmp_path, n_trials=6)
    study = new_study(config)
    for _ in range(2):
        complete(study)
    assert planned_total(study, config) == 6  # a re-run completes the config's total
    assert planned_total(study, config, added=3) == 5  # --n-trials adds to what is done
    assert planned_total(study, config, total=9) == 9  # resume completes the job's last total


def test_summary_counts_best_feasible_and_eta(tmp_path):
    study = new_study(config_for(tmp_path))
    study.set_user_attr(BUDGET_ATTR, 5)
    complete(study, accuracy=0.90, speedup=1.5)
    complete(study, accuracy=0.88, speedup=2.5)
    pruned = study.ask()
    study.tell(pruned, state=TrialState.PRUNED)
    study.ask()
    summary = summarize(study, workers=2)
    assert (summary.done, summary.budget, summary.running, summary.complete, summary.pruned) == (3, 5, 1, 2, 1)
    assert summary.best_score == 0.90 and summary.fastest_speedup == 2.5 and summary.front == 2
    assert summary.metric == "accuracy" and "best acc 0.9000" in summary.line()
    assert summary.eta_seconds is not None and summary.eta_seconds >= 0
    assert summary.line().startswith("trials 3/5 | 1 running") and "front 2" in summary.line()


def test_mlflow_down_loses_nothing_and_sync_catches_up(tmp_path, caplog):
    study = new_study(config_for(tmp_path))
    complete(study)
    failed = study.ask({"x": optuna.distributions.IntDistribution(0, 9)})
    failed.set_user_attr("fail_reason", "RuntimeError: boom")
    study.tell(failed, state=TrialState.FAIL)
    pruned = study.ask({"x": optuna.distributions.IntDistribution(0, 9)})
    pruned.set_user_attr("prune_reason", "cost model predicts 9.00 ms, confidently above max_latency_ms=2")
    study.tell(pruned, state=TrialState.PRUNED)

    down = Tracker(study=study, experiment="life", tracking_uri="http://127.0.0.1:9")  # nothing listens on the discard port
    started = time.perf_counter()
    assert down.sync() is None
    assert time.perf_counter() - started < 30 and "autocompress sync" in caplog.text

    up = Tracker(study=study, experiment="life", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert up.sync() == 3 and up.sync() == 0  # idempotent
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    runs = {r.info.run_name: r for r in mlflow.search_runs(experiment_names=["life"], output_format="list")}
    assert runs["trial-0"].info.status == "FINISHED" and runs["trial-0"].data.params["x"] == str(study.trials[0].params["x"])
    assert runs["trial-1"].info.status == "FAILED" and runs["trial-1"].data.tags["fail_reason"] == "RuntimeError: boom"
    assert runs["trial-1"].data.tags["mlflow.note.content"] == "fail: RuntimeError: boom"  # the run's description in the UI
    assert runs["trial-2"].info.status == "KILLED" and runs["trial-2"].data.tags["pruned"] == "true"
    assert runs["trial-2"].data.tags["mlflow.note.content"].startswith("pruned: cost model predicts 9.00 ms")
    complete(study)
    assert Tracker(study=study, experiment="life", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db").sync() == 1  # a later process too


@pytest.mark.parametrize("sampler", ["random", "tpe", "nsga2"])
def test_a_resumed_study_does_not_propose_again_what_it_proposed_before(tmp_path, sampler):
    def two_processes(folder) -> list[int]:
        folder.mkdir()
        config = config_for(folder, sampler=sampler, seed=3)
        new_study(config)
        proposed = []
        for _ in range(2):  # each load is what a new process (a resume) does
            study = load_existing(config)
            trial = study.ask()
            proposed.append(trial.suggest_int("x", 0, 10**9))
            study.tell(trial, state=TrialState.FAIL)
        return proposed

    first, second = two_processes(tmp_path / "a"), two_processes(tmp_path / "b")
    assert first[0] != first[1]  # the sampler's seed moved on with the study, as one long process's would
    assert first == second  # and stays reproducible


@pytest.mark.parametrize("bad", ["0", "-1"])
def test_heartbeat_must_be_positive(bad):
    from autocompress.config import ConfigError

    with pytest.raises(ConfigError, match="execution.heartbeat_seconds"):
        parse_config({"execution": {"heartbeat_seconds": int(bad)}})


def test_two_optimize_threads_never_pop_the_same_enqueued_trial(tmp_path):
    """Without the lock, 14 of 100 rounds popped one enqueued trial twice on SQLite under CPU contention (measured)."""
    from autocompress.controller.run import one_ask_at_a_time

    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3)]
    try:
        for round_ in range(30):
            study = optuna.create_study(study_name=f"race{round_}", storage=make_storage(config_for(tmp_path)), directions=["maximize"])
            for x in range(2):
                study.enqueue_trial({"x": x})
            one_ask_at_a_time(study)
            numbers = []

            def objective(trial):
                numbers.append(trial.number)
                return trial.suggest_int("x", 0, 9)

            study.optimize(objective, n_trials=2, n_jobs=2)
            assert sorted(numbers) == [0, 1] and [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    finally:
        for process in busy:
            process.kill()


def _open_study_file(folder):
    make_storage(config_for(folder))


def _open_mlflow_store(folder):
    study = optuna.create_study(directions=["maximize"])
    assert Tracker(study=study, experiment="life", tracking_uri=f"sqlite:///{folder}/mlflow.db").sync() == 0  # None: it failed


def _open_after(barrier, open_store, folder, failures):
    barrier.wait()
    try:
        open_store(folder)
    except BaseException as error:  # noqa: BLE001 - the test reports whatever the race raised
        failures.put(repr(error))


@pytest.mark.parametrize("open_store", [_open_study_file, _open_mlflow_store], ids=["optuna", "mlflow"])
def test_processes_opening_a_new_sqlite_store_at_once_never_race_on_its_schema(tmp_path, open_store):
    """Three searches started together on one new study file or MLflow store. Without the lock, of 8 rounds of three
    processes, 4 failed on the study file (``UNIQUE constraint failed: alembic_version.version_num``) and 4 of 4 on the MLflow
    store (``table latest_metrics already exists``) (measured)."""
    open_store(tmp_path / "warm")  # the libraries' lazy imports happen once, before the forks
    context = multiprocessing.get_context("fork")
    failures = context.Queue()
    for round_ in range(ROUNDS[open_store]):
        barrier = context.Barrier(3)
        workers = [context.Process(target=_open_after, args=(barrier, open_store, tmp_path / str(round_), failures)) for _ in range(3)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        assert [worker.exitcode for worker in workers] == [0, 0, 0]
    assert failures.empty(), failures.get()


ROUNDS = {_open_study_file: 8, _open_mlflow_store: 1}


def test_an_experiment_another_search_created_a_moment_before_is_taken_not_an_error(tmp_path):
    from autocompress.tracking.runs import _create_experiment

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    first = client.create_experiment("life")
    assert _create_experiment(client, "life") == first


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_live_line_redraws_in_a_terminal_and_stays_silent_elsewhere(tmp_path):
    from autocompress.controller.progress import LiveLine

    study = new_study(config_for(tmp_path))
    study.set_user_attr(BUDGET_ATTR, 4)
    frozen = complete(study)
    screen, pipe = Terminal(), io.StringIO()
    for stream in (screen, pipe):
        line = LiveLine(study, workers=1, stream=stream)
        line.refresh()
        line.callback(study, study.trials[frozen.number])
        line.close()
    assert screen.getvalue().count("\r\x1b[K") == 2 and "trials 1/4 | 0 running" in screen.getvalue()
    assert pipe.getvalue() == ""  # not a terminal: no redraws (the log gets one line per trial)

"""MLflow tracking: a parent run per study, a nested child run per finished trial, replayed from the study.

The Optuna study is the source of truth: every trial stores what its MLflow
run needs (params, metrics, curves, reason) in its user attributes, and the
search's own parameters live in the study too. ``Tracker.sync`` writes a child
run for every finished trial MLflow lacks, so a tracking server that is down
neither stops nor loses a search: the next trial retries, and ``autocompress
sync`` catches up afterwards.

The default store is MLflow's own local default (``sqlite:///mlflow.db`` in the
working folder, no server); ``--tracking-uri`` or ``MLFLOW_TRACKING_URI`` point
at a server. The parent run's id is kept in the study, so resuming a study
appends to the same parent run.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from autocompress.config import ConfigError
from autocompress.controller.study import (
    FAIL_REASON_ATTR,
    FINAL_OF_ATTR,
    INTERRUPTED_ATTR,
    PRUNE_REASON_ATTR,
    RETRY_OF_ATTR,
    STATE_ATTR,
)
from autocompress.credentials import masked, resolve
from autocompress.stores import schema_lock
from autocompress.tracking.registry import (
    ARTIFACT_TAG,
    CHAMPION,
    Registered,
    register_genai,
    register_run,
    register_sentence_transformers,
)

if TYPE_CHECKING:
    from autocompress.tasks.teacher import Teacher

log = logging.getLogger("autocompress")
PARENT_RUN_ATTR = "mlflow_parent_run_id"
SEARCH_RUN_ATTR = "autocompress.search_run"
"""The parent run's params, metrics, tags and config, kept in the study so ``sync`` can write them later."""
TRACKING_ATTR = "autocompress.tracking"
"""The tracking URI and experiment the search logs to (``sync`` defaults to them)."""
PARAMS_ATTR, METRICS_ATTR, CURVES_ATTR = "mlflow_params", "metrics", "curves"
PARETO_TAG = "pareto"
TRIAL_TAG = "optuna.trial_number"
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
"""MLflow 3 opens an experiment on its GenAI page unless tagged as model training."""
NOTE_TAG = "mlflow.note.content"
TRIAL_STATUS = {TrialState.FAIL: "FAILED", TrialState.PRUNED: "KILLED"}
"""MLflow run status of a finished trial; a pruned trial was stopped early, which MLflow calls KILLED."""
RUN_STATUS = {"finished": "FINISHED", "stopped": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
                 "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
"""A server that is down costs seconds, not MLflow's default minutes of retries: the study keeps everything anyway.
MLflow's two lines per finished run and its download bars are dropped: the search prints its run's page once, at the end."""


def _create_experiment(client: MlflowClient, name: str) -> str:
    """Create experiment ``name``, or take the one another search on the same server created a moment before."""
    try:
        return client.create_experiment(name)
    except mlflow.exceptions.MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id


class Tracker:
    """Writes one study's runs; every public method is guarded: MLflow failing is a warning, never a lost search."""

    def __init__(self, *, study: optuna.Study, experiment: str, tracking_uri: str | None = None) -> None:
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        self.study = study
        self.experiment = experiment
        self.uri = resolve(tracking_uri, "tracking.uri") if tracking_uri else mlflow.get_tracking_uri()
        self.client: MlflowClient | None = None
        self.experiment_id = ""
        self.parent_run_id = ""
        self.logged: set[int] = set()
        self.lock = threading.Lock()
        self.down_since: float | None = None

    def _connect(self) -> None:
        if self.client is not None:
            return
        with schema_lock(self.uri):  # a new SQLite store gets its tables, and a new experiment is made once, not by each search
            client = MlflowClient(tracking_uri=self.uri)
            found = client.get_experiment_by_name(self.experiment)
            self.experiment_id = found.experiment_id if found else _create_experiment(client, self.experiment)
        client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        self.parent_run_id = self._parent_run_id(client)
        self._log_search(client)
        self.logged = set(self._trial_runs(client))
        self.client = client

    def _guarded(self, what: str, action: Callable[[], Any]) -> Any:
        with self.lock:
            try:
                self._connect()
                result = action()
            except Exception as error:  # the study holds everything; the next call or `autocompress sync` catches up
                self.client = None
                if self.down_since is None:
                    self.down_since = time.time()
                    log.warning("MLflow at %s failed to %s (%s); the study keeps every trial, "
                                "the next trial retries and `autocompress sync` catches up", masked(self.uri), what, _first_line(error))
                return None
            if self.down_since is not None:
                log.warning("MLflow at %s is back; trials since %s synced", masked(self.uri), time.strftime("%H:%M:%S", time.localtime(self.down_since)))
                self.down_since = None
            return result

    def _parent_run_id(self, client: MlflowClient) -> str:
        known = self.study.user_attrs.get(PARENT_RUN_ATTR)
        if known:
            try:
                run = client.get_run(known)
                if run.info.experiment_id == self.experiment_id:
                    client.update_run(known, status="RUNNING")
                    return known
            except mlflow.exceptions.MlflowException:
                pass
        run = client.create_run(self.experiment_id, run_name=f"search-{self.study.study_name}", tags={"optuna.study_name": self.study.study_name})
        self.study.set_user_attr(PARENT_RUN_ATTR, run.info.run_id)
        return run.info.run_id

    def _log_search(self, client: MlflowClient) -> None:
        search = self.study.user_attrs.get(SEARCH_RUN_ATTR)
        if not search:
            return
        run_id = self.parent_run_id
        existing = client.get_run(run_id).data.params
        _log_params(client, run_id, {k: v for k, v in search["params"].items() if k not in existing})
        now = int(time.time() * 1000)
        metrics = [mlflow.entities.Metric(k, float(v), now, 0) for k, v in search["metrics"].items()]
        tags = [mlflow.entities.RunTag(k, str(v)) for k, v in search["tags"].items()]
        client.log_batch(run_id, metrics=metrics, tags=tags)
        client.log_dict(run_id, search["config"], "config.json")

    def sync(self) -> int | None:
        """Write a child run for every finished trial MLflow lacks; how many (None: MLflow unreachable)."""

        def write() -> int:
            missing = [t for t in self.study.get_trials(deepcopy=False) if t.state.is_finished() and t.number not in self.logged]
            for trial in missing:
                self._log_trial(trial)
                self.logged.add(trial.number)
            return len(missing)

        return self._guarded("log trials", write)

    def callback(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna callback: after each trial, sync (which retries anything a down server missed)."""
        self.sync()

    def _log_trial(self, trial: FrozenTrial) -> None:
        attrs = trial.user_attrs
        tags = {"mlflow.parentRunId": self.parent_run_id, TRIAL_TAG: str(trial.number), "optuna.state": trial.state.name}
        if trial.state == TrialState.PRUNED:
            tags["pruned"] = "true"
        for key in (FAIL_REASON_ATTR, PRUNE_REASON_ATTR, RETRY_OF_ATTR, "worker", "rejected_by_cost_model", "pruned_at_step", FINAL_OF_ATTR,
                    "trained_model"):
            if key in attrs:
                tags[key] = str(attrs[key]).lower() if isinstance(attrs[key], bool) else str(attrs[key])
        if trial.state == TrialState.FAIL and FAIL_REASON_ATTR not in attrs:
            tags[FAIL_REASON_ATTR] = "interrupted: its process stopped beating (Optuna heartbeat)"
        if attrs.get(INTERRUPTED_ATTR):
            tags[INTERRUPTED_ATTR] = "true"
        if attrs.get("artifact") and trial.state == TrialState.COMPLETE:
            tags[ARTIFACT_TAG] = attrs["artifact"]
        reason = tags.get(FAIL_REASON_ATTR) or tags.get(PRUNE_REASON_ATTR)
        if reason:
            tags[NOTE_TAG] = f"{trial.state.name.lower()}: {reason}"  # the run's description in the UI
        start = int(trial.datetime_start.timestamp() * 1000) if trial.datetime_start else None
        client = self.client
        run_id = client.create_run(self.experiment_id, run_name=f"trial-{trial.number}", start_time=start, tags=tags).info.run_id
        _log_params(client, run_id, attrs.get(PARAMS_ATTR, trial.params))
        end = int(trial.datetime_complete.timestamp() * 1000) if trial.datetime_complete else int(time.time() * 1000)
        metrics = [mlflow.entities.Metric(k, float(v), end, 0) for k, v in attrs.get(METRICS_ATTR, {}).items()]
        for start_index in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[start_index : start_index + 1000])
        for key, series in attrs.get(CURVES_ATTR, {}).items():
            _log_series(client, run_id, key, series)
        if "policy" in attrs:
            client.log_dict(run_id, attrs["policy"], "policy.json")
        client.set_terminated(run_id, status=TRIAL_STATUS.get(trial.state, "FINISHED"), end_time=end)

    def _trial_runs(self, client: MlflowClient) -> dict[int, str]:
        """Child runs of this parent, by trial number (the latest run wins)."""
        runs = client.search_runs([self.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}'", max_results=50000)
        found: dict[int, str] = {}
        for run in sorted(runs, key=lambda r: r.info.start_time):
            if TRIAL_TAG in run.data.tags:
                found[int(run.data.tags[TRIAL_TAG])] = run.info.run_id
        return found

    def log_front(
        self, front_numbers: set[int], table: list[dict[str, Any]], reports: list[Path], progress: list[dict[str, Any]] = ()
    ) -> None:
        """Tag every child ``pareto=true|false``; attach the table and the reports to the parent, progress as step metrics.

        ``progress`` (``reports.progress_series``) becomes the parent's
        ``search_*`` metrics with the trial number as step, so the UI charts it.
        """

        def write() -> None:
            now = int(time.time() * 1000)
            steps = [mlflow.entities.Metric(f"search_{k}", float(v), now, int(step["trial"]))
                     for step in progress for k, v in step.items() if k != "trial" and v is not None]
            for start in range(0, len(steps), 1000):
                self.client.log_batch(self.parent_run_id, metrics=steps[start : start + 1000])
            for number, run_id in self._trial_runs(self.client).items():
                self.client.set_tag(run_id, PARETO_TAG, str(number in front_numbers).lower())
            self.client.log_dict(self.parent_run_id, table, "pareto.json")
            if table:
                self.client.log_table(self.parent_run_id, _columns(table), "pareto_table.json")
            for path in reports:
                self.client.log_artifact(self.parent_run_id, str(path), "reports")

        self._guarded("tag the Pareto front", write)

    def log_export(self, number: int, folder: Path) -> None:
        """Attach an exported folder to trial ``number``'s run as ``exports/FORMAT``, for taking it from the UI."""

        def write() -> None:
            self.client.log_artifacts(self._trial_runs(self.client)[number], str(folder), f"exports/{folder.name}")

        self._guarded("log the exports", write)

    def register(self, numbers: list[int], *, champion: int | None, name: str) -> list[Registered]:
        """Register the models of these trials under ``name``; the ``champion`` alias goes to the chosen trial."""

        def write() -> list[Registered]:
            runs, registered = self._trial_runs(self.client), []
            for number in numbers:
                try:
                    alias = CHAMPION if number == champion else None
                    registered.append(register_run(runs[number], name=name, alias=alias, tracking_uri=self.uri))
                except ConfigError as error:  # e.g. its file is gone: the others still register
                    log.warning("trial %d not registered: %s", number, error)
            return registered

        return self._guarded("register the chosen model", write) or []

    def register_sentence_transformers(self, number: int, folder: Path, *, name: str) -> Registered | None:
        """Register trial ``number``'s sentence-transformers export (``folder``) with MLflow's flavor, as the ``champion``."""

        def write() -> Registered:
            run = self._trial_runs(self.client)[number]
            return register_sentence_transformers(run, folder, name=name, alias=CHAMPION, tracking_uri=self.uri)

        return self._guarded("register the sentence-transformers model", write)

    def register_genai(self, numbers: list[int], folders: dict[int, Path], *, champion: int | None, name: str) -> list[Registered]:
        """Register these decoder trials' GenAI folders under ``name``; the ``champion`` alias goes to the chosen trial."""

        def write() -> list[Registered]:
            runs = self._trial_runs(self.client)
            return [register_genai(runs[n], folders[n], name=name, alias=CHAMPION if n == champion else None, tracking_uri=self.uri)
                    for n in numbers]

        return self._guarded("register the chosen model", write) or []

    def log_teacher(self, teacher: Teacher) -> None:
        """A nested run for a freshly fine-tuned teacher: its loss curve and its model folder."""

        def write() -> None:
            run = self.client.create_run(
                self.experiment_id, run_name="teacher", tags={"mlflow.parentRunId": self.parent_run_id, "teacher_key": teacher.key}
            )
            _log_series(self.client, run.info.run_id, "train_loss", list(enumerate(teacher.losses)))
            self.client.log_artifacts(run.info.run_id, str(teacher.path), "model")
            self.client.set_terminated(run.info.run_id)

        self._guarded("log the teacher", write)

    def where(self) -> str:
        """Where to look: the experiment page in the MLflow UI (its model-training view), for a server or a local store."""
        if not self.experiment_id:
            return f"MLflow at {masked(self.uri)} was not reached; `autocompress sync` catches up"
        page = f"#/experiments/{self.experiment_id}/runs/{self.parent_run_id}?workflowType=machine_learning"
        if self.uri.startswith(("http://", "https://")):
            return f"MLflow: {masked(self.uri).rstrip('/')}/{page}"
        return f"MLflow: `mlflow ui --backend-store-uri {masked(self.uri)}`, then open http://127.0.0.1:5000/{page}"

    def finish(self) -> None:
        """End the parent run with the status of how the search ended (the study's ``autocompress.state``)."""
        state = self.study.user_attrs.get(STATE_ATTR, "finished")
        if state in RUN_STATUS:
            self._guarded("end the search run", lambda: self.client.set_terminated(self.parent_run_id, status=RUN_STATUS[state]))


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    keys = [k for k in rows[0] if not isinstance(rows[0][k], dict)]
    return {key: [row.get(key) for row in rows] for key in keys}


def _log_series(client: MlflowClient, run_id: str, key: str, series: list[tuple[int, float]] | list[list[float]]) -> None:
    now = int(time.time() * 1000)
    metrics = [mlflow.entities.Metric(key, float(value), now, int(step)) for step, value in series]
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])


def _log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    items = [mlflow.entities.Param(str(k), json.dumps(v) if isinstance(v, (dict, list)) else str(v)) for k, v in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100])

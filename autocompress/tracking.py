"""MLflow tracking: a parent run per study, a nested child run per trial.

The default store is MLflow's own local default (``sqlite:///mlflow.db`` in the
working folder, no server); ``--tracking-uri`` or ``MLFLOW_TRACKING_URI`` point
at a server. The parent run's id is kept in the Optuna study's user attributes,
so resuming a study appends to the same parent run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import optuna
from mlflow.tracking import MlflowClient

if TYPE_CHECKING:
    from autocompress.teacher import Teacher

PARENT_RUN_ATTR = "mlflow_parent_run_id"
PARETO_TAG = "pareto"
TRIAL_TAG = "optuna.trial_number"
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
"""MLflow 3 opens an experiment on its GenAI page unless tagged as model training."""


class Tracker:
    """Writes one study's runs; every method is a complete, self-contained MLflow write."""

    def __init__(self, *, study: optuna.Study, experiment: str, tracking_uri: str | None = None) -> None:
        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        self.client = MlflowClient()
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        self.study = study
        self.parent_run_id = self._parent_run_id()

    def _parent_run_id(self) -> str:
        known = self.study.user_attrs.get(PARENT_RUN_ATTR)
        if known:
            try:
                run = self.client.get_run(known)
                if run.info.experiment_id == self.experiment_id:
                    self.client.update_run(known, status="RUNNING")
                    return known
            except mlflow.exceptions.MlflowException:
                pass
        run = self.client.create_run(
            self.experiment_id, run_name=f"search-{self.study.study_name}", tags={"optuna.study_name": self.study.study_name}
        )
        self.study.set_user_attr(PARENT_RUN_ATTR, run.info.run_id)
        return run.info.run_id

    def log_search(self, *, params: Mapping[str, Any], metrics: Mapping[str, float], tags: Mapping[str, str], config: Mapping[str, Any]) -> None:
        """Config, teacher metrics and hardware description on the parent run."""
        run_id = self.parent_run_id
        existing = self.client.get_run(run_id).data.params
        new_params = {k: v for k, v in params.items() if k not in existing}
        _log_params(self.client, run_id, new_params)
        for key, value in metrics.items():
            self.client.log_metric(run_id, key, value)
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)
        self.client.log_dict(run_id, dict(config), "config.json")

    def log_trial(
        self,
        number: int,
        *,
        params: Mapping[str, Any],
        metrics: Mapping[str, float],
        artifacts: Mapping[str, Any],
        tags: Mapping[str, str] | None = None,
        steps: Mapping[str, list[tuple[int, float]]] | None = None,
        status: str = "FINISHED",
    ) -> str:
        """One nested child run holding a trial's policy, metrics and JSON artifacts, ended with ``status``."""
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"trial-{number}",
            tags={"mlflow.parentRunId": self.parent_run_id, TRIAL_TAG: str(number), **(tags or {})},
        )
        run_id = run.info.run_id
        _log_params(self.client, run_id, params)
        for key, value in metrics.items():
            self.client.log_metric(run_id, key, value)
        for key, series in (steps or {}).items():
            _log_series(self.client, run_id, key, series)
        for name, content in artifacts.items():
            self.client.log_dict(run_id, content, name)
        self.client.set_terminated(run_id, status=status)
        return run_id

    def trial_runs(self) -> dict[int, str]:
        """Child runs of this parent, by trial number (the latest run wins)."""
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}'", max_results=5000
        )
        found: dict[int, str] = {}
        for run in sorted(runs, key=lambda r: r.info.start_time):
            if TRIAL_TAG in run.data.tags:
                found[int(run.data.tags[TRIAL_TAG])] = run.info.run_id
        return found

    def log_front(self, front_numbers: set[int], table: list[dict[str, Any]], plot: Path | None) -> None:
        """Tag every child ``pareto=true|false`` and attach the table and plot to the parent."""
        for number, run_id in self.trial_runs().items():
            self.client.set_tag(run_id, PARETO_TAG, str(number in front_numbers).lower())
        self.client.log_dict(self.parent_run_id, table, "pareto.json")
        if table:
            self.client.log_table(self.parent_run_id, _columns(table), "pareto_table.json")
        if plot is not None:
            self.client.log_artifact(self.parent_run_id, str(plot))

    def log_teacher(self, teacher: "Teacher") -> None:
        """A nested run for a freshly fine-tuned teacher: its loss curve and its model folder."""
        run = self.client.create_run(
            self.experiment_id, run_name="teacher", tags={"mlflow.parentRunId": self.parent_run_id, "teacher_key": teacher.key}
        )
        _log_series(self.client, run.info.run_id, "train_loss", list(enumerate(teacher.losses)))
        self.client.log_artifacts(run.info.run_id, str(teacher.path), "model")
        self.client.set_terminated(run.info.run_id)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.parent_run_id, status=status)


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    keys = [k for k in rows[0] if not isinstance(rows[0][k], dict)]
    return {key: [row.get(key) for row in rows] for key in keys}


def _log_series(client: MlflowClient, run_id: str, key: str, series: list[tuple[int, float]]) -> None:
    now = int(time.time() * 1000)
    metrics = [mlflow.entities.Metric(key, float(value), now, step) for step, value in series]
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])


def _log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    items = [mlflow.entities.Param(str(k), json.dumps(v) if isinstance(v, (dict, list)) else str(v)) for k, v in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100])



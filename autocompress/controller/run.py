"""The search: an Optuna study whose trials each compress, measure and record one policy.

The objective samples a policy in the search process, checks it against the
cost model and hands it to a worker (this process or a Ray actor, see
``workers``); ``trial.run_trial`` does the rest. Everything an MLflow run
needs is stored on the Optuna trial, and the tracker replays finished trials
into MLflow, so the study storage is the one source of truth: a re-run or
``autocompress resume`` completes the study's budget, interrupted trials are
retried once, and a tracking server that was down is caught up later.
"""

from __future__ import annotations

import logging
import math
import platform
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import optuna

from autocompress.config import Registration, SearchConfig, parse_config
from autocompress.controller.fidelity import Fidelity
from autocompress.controller.final_training import enqueue_finals, final_stage_left
from autocompress.controller.pareto import BASELINE_ATTR, MB, accuracy_drops, format_table, front_rows, score_drops, select
from autocompress.controller.preflight import preflight
from autocompress.controller.progress import LiveLine
from autocompress.controller.study import (
    BUDGET_ATTR,
    FAIL_REASON_ATTR,
    FINAL_OF_ATTR,
    INTERRUPTED_ATTR,
    OWNER_ATTR,
    PRUNE_REASON_ATTR,
    RETRY_OF_ATTR,
    STATE_ATTR,
    STOP_ATTR,
    absolute_storage,
    fail_orphans,
    open_study,
    planned_total,
    redacted,
    retry_all_interrupted,
    study_uid,
    trial_owner,
    trial_seed,
    trials_done,
)
from autocompress.controller.trial import Measurement, SearchContext, TrialRequest
from autocompress.controller.workers import Interrupted, Workers, make_workers
from autocompress.cost import is_clearly_infeasible, policy_features
from autocompress.distill import RecoveryResult
from autocompress.models.families import ffn_width
from autocompress.models.loading import block_linears, encoder_list_name
from autocompress.paths import study_work_dir
from autocompress.space import sample_policy, uniform_starts
from autocompress.tracking.registry import MODEL_NAME_TAG, TOKENIZER_TAG, default_model_name
from autocompress.tracking.reports import progress_series, write_reports
from autocompress.tracking.runs import CURVES_ATTR, METRICS_ATTR, PARAMS_ATTR, SEARCH_RUN_ATTR, TRACKING_ATTR, Tracker

log = logging.getLogger("autocompress")
MIN_COST_SAMPLES = 3
"""Measurements before the cost model is first fit (it only rejects after 8, see cost.is_clearly_infeasible)."""


def _constraints(measurement: Measurement, baseline: dict[str, Any], config: SearchConfig) -> dict[str, float]:
    """Optuna constraint values, feasible when <= 0; ``max_accuracy_drop`` limits the drop of ``task.metric`` on the dev split."""
    limits, metric = config.search.constraints, config.task.metric
    values = {}
    if limits.max_accuracy_drop is not None:
        values[f"{metric}_drop"] = (baseline[f"dev_{metric}"] - measurement.score(f"dev_{metric}")) - limits.max_accuracy_drop
    if limits.max_latency_ms is not None:
        values["latency_ms"] = measurement.latency_ms - limits.max_latency_ms
    if limits.max_size_mb is not None:
        values["size_mb"] = measurement.size_bytes / MB - limits.max_size_mb
    return {key: round(value, 9) for key, value in values.items()}  # a drop of exactly the budget is within it


def trial_metrics(measurement: Measurement, baseline: dict[str, Any]) -> dict[str, float]:
    """The numbers logged for a trial: its own (every task metric on dev and test), drops from the teacher, ratios to it and ORT int8."""
    own = {k: float(v) for k, v in asdict(measurement).items() if isinstance(v, (int, float))}
    return {
        **own,
        **measurement.scores,
        **accuracy_drops(measurement, baseline),
        **score_drops(measurement.scores, baseline),
        "size_mb": measurement.size_bytes / MB,
        "compression": baseline["size_bytes"] / measurement.size_bytes,
        "size_vs_int8": baseline["int8"]["size_bytes"] / measurement.size_bytes,
    }


def make_objective(context: SearchContext, workers: Workers, progress: LiveLine | None = None):
    prefix = encoder_list_name(context.model)
    blocks = [list(block) for block in block_linears(context.model)]
    num_blocks = len(blocks)
    shape = {"heads": context.model.config.num_attention_heads, "ffn": ffn_width(context.model.config)}
    baseline = context.baseline

    def objective(trial: optuna.Trial) -> tuple[float, float, float]:
        trial.set_user_attr(OWNER_ATTR, trial_owner())  # first: a process killed while sampling leaves a trial resume can fail
        policy = sample_policy(trial, context.config.space, prefix=prefix, num_blocks=num_blocks, task=context.config.task.type)
        final = FINAL_OF_ATTR in trial.user_attrs  # the same student, trained again on the final budget
        if final:
            policy = replace(policy, recovery_steps=context.config.search.final_training.recovery_steps)
        seed = trial_seed(context.config.search.seed, trial.user_attrs.get(RETRY_OF_ATTR, trial.number))  # a retry rebuilds the same model
        trial.set_user_attr("policy", policy.to_dict())
        trial.set_user_attr("seed", seed)
        trial.set_user_attr(PARAMS_ATTR, {**policy.params(blocks, **shape), "seed": seed})
        features = policy_features(policy, context.model, seq_len=context.seq_len)
        trial.set_user_attr("features", features)
        predicted = predict_latency(context, features, trial)
        if progress is not None:
            progress.refresh()
        started = time.perf_counter()
        depth = len(policy.kept_blocks) if policy.kept_blocks is not None else num_blocks
        twin = context.fidelity.twin(trial.number, f"blocks{depth}") if context.fidelity and policy.recovery_steps and not final else None
        request = TrialRequest(policy.to_dict(), f"trial-{trial.number}", seed, (twin.study.study_name, twin._trial_id) if twin else None, final)
        try:
            outcome = workers.run(request)
            if outcome.measurement is not None:
                check_finite(outcome.measurement)
        except (Exception, KeyboardInterrupt) as error:  # fails this trial alone, with its reason; the search goes on
            interrupted = isinstance(error, (Interrupted, KeyboardInterrupt))
            reason = f"interrupted: {failure_reason(error)}" if interrupted else failure_reason(error)
            log.warning("trial %d failed: %s", trial.number, reason)
            log.info("trial %d failed here:", trial.number, exc_info=error)
            trial.set_user_attr(FAIL_REASON_ATTR, reason)
            trial.set_user_attr(INTERRUPTED_ATTR, interrupted)
            trial.set_user_attr(METRICS_ATTR, {"trial_seconds": time.perf_counter() - started})
            if twin is not None:
                Fidelity.finish(twin, None, failed=True)
            raise
        trial.set_user_attr("worker", outcome.worker)
        curves = _curves(outcome.recovery, context.config.task.metric) if outcome.recovery else {}
        trial.set_user_attr(CURVES_ATTR, curves)
        if outcome.measurement is None:
            if twin is not None:
                Fidelity.finish(twin, None)
            trial.set_user_attr("pruned_at_step", outcome.recovery.steps)
            trial.set_user_attr(PRUNE_REASON_ATTR, outcome.stopped)
            trial.set_user_attr(METRICS_ATTR, {"trial_seconds": time.perf_counter() - started})
            raise optuna.TrialPruned(outcome.stopped)
        measurement = outcome.measurement
        if twin is not None:
            Fidelity.finish(twin, outcome.recovery.evaluations[-1][1])
        if context.costs.add(*context.latency_target, features, measurement.relative_latency) >= MIN_COST_SAMPLES:
            context.costs.fit(*context.latency_target)
        for key, value in asdict(measurement).items():
            trial.set_user_attr(key, value)
        for key, value in _constraints(measurement, baseline, context.config).items():
            trial.set_constraint(key, value)
        metrics = {**trial_metrics(measurement, baseline), "trial_seconds": time.perf_counter() - started, "worker_seconds": outcome.seconds}
        if predicted is not None:
            metrics["predicted_relative_latency"] = predicted
            metrics["predicted_latency_ms"] = predicted * baseline["latency_ms"]
            metrics["latency_prediction_error_pct"] = 100 * abs(predicted - measurement.relative_latency) / measurement.relative_latency
        trial.set_user_attr(METRICS_ATTR, metrics)
        return measurement.score(f"dev_{context.config.task.metric}"), measurement.relative_latency, measurement.size_bytes / MB

    return objective


def check_finite(measurement: Measurement) -> None:
    """Refuse a measurement Optuna could not rank: NaN or infinite scores, latency or size fails the trial by name."""
    values = {k: getattr(measurement, k) for k in ("dev_accuracy", "test_accuracy", "relative_latency", "latency_ms")} | measurement.scores
    values = {k: value for k, value in values.items() if value is not None}  # a task without accuracy
    bad = [k for k, value in values.items() if not math.isfinite(value)]
    if bad:
        raise FloatingPointError(f"{', '.join(bad)} not finite ({', '.join(str(values[k]) for k in bad)})")


def failure_reason(error: BaseException) -> str:
    """One line naming the exception and its message, for Optuna and MLflow."""
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[0] if message else ''}"[:500]


def _curves(result: RecoveryResult, metric: str = "accuracy") -> dict[str, list[tuple[int, float]]]:
    """Recovery loss per step and the intermediate dev ``metric`` (``recovery_accuracy``, ...), as MLflow step metrics."""
    return {"recovery_loss": list(enumerate(result.losses)), f"recovery_{metric}": list(result.evaluations)}


def predict_latency(context: SearchContext, features: dict[str, float], trial: optuna.Trial) -> float | None:
    """The cost model's paired ratio to the teacher for this candidate; prune the trial when it confidently breaks the limit.

    ``max_latency_ms`` is compared as a ratio to the teacher's latency timed at
    the start of the study, the same scale the model learns on.
    """
    model = context.costs.load(*context.latency_target)
    if model is None:
        return None
    limit = context.config.search.constraints.max_latency_ms
    if limit is None:
        return float(model.predict([features])[0])
    teacher_ms = context.baseline["latency_ms"]
    reject, predicted = is_clearly_infeasible(model, features, limit=limit / teacher_ms)
    trial.set_user_attr("predicted_relative_latency", predicted)
    if reject:
        trial.set_user_attr("rejected_by_cost_model", True)
        trial.set_user_attr(METRICS_ATTR, {"predicted_relative_latency": predicted, "predicted_latency_ms": predicted * teacher_ms})
        reason = (f"cost model predicts {predicted:.2f}x the teacher's latency ({predicted * teacher_ms:.2f} ms), "
                  f"confidently above max_latency_ms={limit}")
        trial.set_user_attr(PRUNE_REASON_ATTR, reason)
        raise optuna.TrialPruned(reason)
    return predicted


@dataclass(frozen=True)
class SearchResult:
    study_name: str
    front: list[dict[str, Any]]
    chosen: dict[str, Any] | None
    output: Path

    @property
    def feasible(self) -> bool:
        """Whether any trial met the constraints (the CLI exits with status 3 when none did)."""
        return any(row["feasible"] for row in self.front)


def resolved(config: SearchConfig) -> SearchConfig:
    """``config`` with its data root, file and SQLite stores as absolute paths, so workers, jobs and exports find them."""
    data = config.model_dump(mode="json")
    data["task"]["data_root"] = str(config.data_path("."))  # kept in the study: export rebuilds trials from it
    data["search"]["storage"] = absolute_storage(config.search.storage)
    if config.tracking.uri:
        data["tracking"]["uri"] = absolute_storage(config.tracking.uri)
    return parse_config(data, source=str(Path(config.source).resolve()) if config.source and Path(config.source).exists() else config.source or "<dict>")


def one_ask_at_a_time(study: optuna.Study) -> None:
    """Serialize ``study.ask`` across the optimize threads of this process.

    SQLite cannot lock a row, so two threads asking at once could both pop the
    same enqueued trial (seen: one policy built twice into one folder, one
    copy failing on the other's deleted file). Asking takes milliseconds.
    """
    lock, ask = threading.Lock(), study.ask

    def locked_ask(*args: Any, **kwargs: Any) -> optuna.Trial:
        with lock:
            return ask(*args, **kwargs)

    study.ask = locked_ask


def stop_when_asked(workers: Workers):
    """Optuna callback: start no new trial once ``autocompress stop`` set the study's flag or a signal cancelled the workers."""

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if workers.cancelled.is_set() or study.user_attrs.get(STOP_ATTR):
            study.stop()

    return callback


@contextmanager
def interruptible(workers: Workers) -> Iterator[None]:
    """Ctrl-C and SIGTERM (``kill``, ``stop --now``, Ray's job stop) stop the running trials now, as interrupted.

    The first signal cancels the workers and, if a trial is at work, interrupts
    it; a second one interrupts whatever runs.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        again = workers.cancelled.is_set()
        workers.cancel()
        if again or workers.interrupts_now():
            raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def enqueue_uniform_starts(study: optuna.Study, config: SearchConfig, model: Any) -> None:
    """Queue the space's uniform policies (``search.start_uniform``) as a new study's first trials."""
    if config.search.start_uniform and not study.trials:
        for params in uniform_starts(config.space, num_blocks=len(block_linears(model))):
            study.enqueue_trial(params, skip_if_exists=True)


def run_search(config: SearchConfig, *, added: int | None = None, total: int | None = None) -> SearchResult:
    """Run or resume the configured search until the study holds its budget of finished trials, and write its front.

    ``added`` (--n-trials) sets the budget to the trials done plus ``added``;
    ``total`` (resume) to a given total; else it is ``search.n_trials``. Every
    check that can fail without training runs before the teacher is fine-tuned.
    """
    config = resolved(config)
    checked = preflight(config)
    study = open_study(config, checked.signature)
    orphans, retried = fail_orphans(study), retry_all_interrupted(study)
    if orphans or retried:
        log.warning("trials %s were interrupted (their process is gone); retrying %s", orphans or retried, retried)
    budget = planned_total(study, config, added=added, total=total)
    remaining = None if budget is None else max(0, budget - trials_done(study.get_trials(deepcopy=False)))
    study.set_user_attr(BUDGET_ATTR, budget)
    study.set_user_attr(STOP_ATTR, False)
    study.set_user_attr(STATE_ATTR, "running")
    log.info("preparing teacher, data and references")
    context = SearchContext.build(config, study_work_dir(study_uid(study)))
    references = context.baseline  # this run's reference files, timed beside every trial
    if BASELINE_ATTR not in study.user_attrs:
        study.set_user_attr(BASELINE_ATTR, references)
    context.baseline = study.user_attrs[BASELINE_ATTR]
    study.set_user_attr(TRACKING_ATTR, {"uri": config.tracking.uri, "experiment": config.tracking.experiment})
    study.set_user_attr(SEARCH_RUN_ATTR, {
        "params": {"model": config.model, "teacher_key": context.teacher.key, "sampler": config.search.sampler.value,
                   "storage": redacted(config.search.storage), "workers": config.execution.workers},
        "metrics": _baseline_metrics(context.baseline),
        "tags": {f"hardware.{k}": str(v) for k, v in context.fingerprint.items()} | {"python": sys.version.split()[0], "platform": platform.platform(),
                 TOKENIZER_TAG: str(context.teacher.path), MODEL_NAME_TAG: config.tracking.registered_model or default_model_name(study.study_name)},
        "config": _without_passwords(config.model_dump(mode="json")),
    })
    tracker = Tracker(study=study, experiment=config.tracking.experiment, tracking_uri=config.tracking.uri)
    tracker.sync()
    if context.teacher.trained_now:
        tracker.log_teacher(context.teacher)
    enqueue_uniform_starts(study, config, context.model)
    if remaining == 0 and final_stage_left(study, config):
        log.info("study %r has finished its %s trials; only the final training is left", study.study_name, budget)
    elif remaining == 0:
        log.warning("study %r already holds %d finished trials of its budget %s; pass --n-trials N to add more", study.study_name, budget, budget)
    state = "failed"
    try:
        workers = make_workers(config, context, references)
        progress = LiveLine(study, workers=workers.size)
        one_ask_at_a_time(study)
        objective = make_objective(context, workers, progress)

        def optimize(n_trials: int | None, timeout: float | None) -> None:
            study.optimize(objective, n_trials=n_trials, timeout=timeout, n_jobs=workers.size, gc_after_trial=True, catch=(Exception,),
                           callbacks=[tracker.callback, progress.callback, stop_when_asked(workers)])

        try:
            with interruptible(workers):
                if remaining != 0:
                    optimize(remaining, config.search.timeout)
                if budget is not None and trials_done(study.trials) >= budget and not workers.cancelled.is_set() and not study.user_attrs.get(STOP_ATTR):
                    finals = enqueue_finals(study, config)
                    if finals:
                        log.info("final training: %d front student(s), %d steps each", finals, config.search.final_training.recovery_steps)
                        optimize(finals, None)
            if workers.cancelled.is_set():
                raise KeyboardInterrupt("a signal cancelled the search between trials")
        finally:
            progress.close()
            workers.close()
        state = "stopped" if study.user_attrs.get(STOP_ATTR) else "finished"
    except KeyboardInterrupt:
        state = "interrupted"
        raise
    finally:
        study.set_user_attr(STATE_ATTR, state)
        tracker.sync()
        result = finish_search(study, config, tracker, tokenizer_dir=context.teacher.path)
        tracker.finish()
    return result


def _without_passwords(config: dict[str, Any]) -> dict[str, Any]:
    """The config as logged to MLflow: database passwords in the storage and tracking URIs masked."""
    config["search"]["storage"] = redacted(config["search"]["storage"])
    if config["tracking"]["uri"]:
        config["tracking"]["uri"] = redacted(config["tracking"]["uri"])
    return config


def _baseline_metrics(baseline: dict[str, Any]) -> dict[str, float]:
    teacher = {f"teacher_{k}": float(v) for k, v in baseline.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    int8 = {f"int8_{k}": float(v) for k, v in baseline["int8"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return teacher | int8


def drop_dominated_weights(study: optuna.Study, front: set[int]) -> None:
    """Delete the kept float weights of distilled trials off the front: a dominated trial never returns to it, so none is exported."""
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        kept = trial.user_attrs.get("trained_model")
        if kept and trial.number not in front and Path(kept).is_dir():
            shutil.rmtree(kept)


def finish_search(study: optuna.Study, config: SearchConfig, tracker: Tracker | None = None, *, tokenizer_dir: Path | None = None) -> SearchResult:
    """Write pareto.json, the front's ONNX files, the chosen model and policy, and the reports; tag the front in MLflow.

    The chosen trial is picked among feasible front trials only; with none
    feasible nothing is chosen and no ``best_policy.json`` is left behind.
    The chosen model (or every feasible front model, ``tracking.registry``)
    is registered in MLflow's model registry, the chosen one as ``champion``.
    """
    from autocompress.controller.pareto import write_front
    from autocompress.exporters.workflow import export_chosen

    output = Path(config.output)
    rows = front_rows(study) if any(t.state.is_finished() for t in study.trials) else []
    drop_dominated_weights(study, {row["trial"] for row in rows})
    metric = config.task.metric
    chosen = select([r for r in rows if r["feasible"]], config.search.selection, config.search.constraints.max_accuracy_drop, metric)
    rows, chosen = write_front(output, rows, chosen, tokenizer_dir=tokenizer_dir)
    reports = write_reports(study, rows, output) if rows else []
    print(format_table(rows, study.user_attrs.get(BASELINE_ATTR), metric))
    if tracker is not None:
        tracker.log_front({row["trial"] for row in rows}, rows, reports, progress_series(study) if rows else [])
        register = config.tracking.registry
        numbers = [] if chosen is None or register is Registration.NONE else [chosen["trial"]]
        if register is Registration.FRONT:
            numbers = [row["trial"] for row in rows if row["feasible"]]
        name = config.tracking.registered_model or default_model_name(study.study_name)
        for registered in tracker.register(numbers, champion=chosen["trial"] if chosen else None, name=name):
            print(f"registered {registered.uri} (version {registered.version})")
    if chosen is not None and config.tracking.export_formats and study.user_attrs.get(STATE_ATTR) != "interrupted":
        for report in export_chosen(study, chosen["trial"], config.tracking.export_formats, output):
            print(report.line())
            if tracker is not None:
                tracker.log_export(chosen["trial"], Path(report.folder))
        print(tracker.where())
    result = SearchResult(study.study_name, rows, chosen, output)
    if not result.feasible:
        limits = config.search.constraints.model_dump(exclude_none=True)
        print(f"\nno trial met the constraints {limits}: nothing chosen, no best_policy.json written")
    return result

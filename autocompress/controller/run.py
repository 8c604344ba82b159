"""The search: an Optuna study whose trials each compress, measure and record one policy.

The objective (``objective``) samples a policy in the search process, checks
it against the cost model and hands it to a worker (this process or a Ray
actor, see ``workers``); ``trial.run_trial`` does the rest. Everything an MLflow run
needs is stored on the Optuna trial, and the tracker replays finished trials
into MLflow, so the study storage is the one source of truth: a re-run or
``autocompress resume`` completes the study's budget, interrupted trials are
retried once, and a tracking server that was down is caught up later.
"""

from __future__ import annotations

import logging
import platform
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from autocompress.config import Registration, SearchConfig, parse_config
from autocompress.controller.final_training import enqueue_finals, final_stage_left
from autocompress.controller.objective import make_objective
from autocompress.controller.pareto import BASELINE_ATTR, format_table, front_rows, select
from autocompress.controller.preflight import preflight
from autocompress.controller.progress import LiveLine
from autocompress.controller.retention import record_study, release_dominated, retention_callback
from autocompress.controller.study import (
    BUDGET_ATTR,
    STATE_ATTR,
    STOP_ATTR,
    UID_ATTR,
    absolute_storage,
    fail_orphans,
    open_study,
    planned_total,
    retry_all_interrupted,
    study_uid,
    trials_done,
)
from autocompress.controller.trial import SearchContext
from autocompress.controller.workers import Workers, make_workers
from autocompress.credentials import masked
from autocompress.models.loading import block_linears
from autocompress.paths import study_work_dir
from autocompress.space import uniform_starts
from autocompress.tracking.registry import MODEL_NAME_TAG, TOKENIZER_TAG, default_model_name
from autocompress.tracking.reports import progress_series, write_reports
from autocompress.tracking.runs import SEARCH_RUN_ATTR, TRACKING_ATTR, Tracker

log = logging.getLogger("autocompress")


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
    if config.task.type == "causal-lm":
        from autocompress.controller.decoder_search import run_decoder_search

        rows, chosen = run_decoder_search(config, added=added, total=total)
        return SearchResult(config.search.study_name, rows, chosen, Path(config.output))
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
    workdir = study_work_dir(study_uid(study))
    record_study(workdir, study, config)
    context = SearchContext.build(config, workdir)
    references = context.baseline  # this run's reference files, timed beside every trial
    if BASELINE_ATTR not in study.user_attrs:
        study.set_user_attr(BASELINE_ATTR, references)
    context.baseline = study.user_attrs[BASELINE_ATTR]
    study.set_user_attr(TRACKING_ATTR, {"uri": config.tracking.uri, "experiment": config.tracking.experiment})
    study.set_user_attr(SEARCH_RUN_ATTR, {
        "params": {"model": config.model, "teacher_key": context.teacher.key, "sampler": config.search.sampler.value,
                   "storage": masked(config.search.storage), "workers": config.execution.workers},
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
            retention = [retention_callback(workdir)] if config.tracking.keep_artifacts == "front" else []
            study.optimize(objective, n_trials=n_trials, timeout=timeout, n_jobs=workers.size, gc_after_trial=True, catch=(Exception,),
                           callbacks=[tracker.callback, progress.callback, stop_when_asked(workers), *retention])

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
    config["search"]["storage"] = masked(config["search"]["storage"])
    if config["tracking"]["uri"]:
        config["tracking"]["uri"] = masked(config["tracking"]["uri"])
    return config


def _baseline_metrics(baseline: dict[str, Any]) -> dict[str, float]:
    teacher = {f"teacher_{k}": float(v) for k, v in baseline.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    int8 = {f"int8_{k}": float(v) for k, v in baseline["int8"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return teacher | int8


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
    if config.tracking.keep_artifacts == "front" and UID_ATTR in study.user_attrs:
        release_dominated(study, study_work_dir(study_uid(study)))
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
                if numbers and (Path(report.folder) / "modules.json").is_file():  # a sentence-transformers folder: its own flavor
                    registered = tracker.register_sentence_transformers(chosen["trial"], Path(report.folder), name=name)
                    if registered:
                        print(f"registered {registered.uri} (version {registered.version})")
        print(tracker.where())
    result = SearchResult(study.study_name, rows, chosen, output)
    if not result.feasible:
        limits = config.search.constraints.model_dump(exclude_none=True)
        print(f"\nno trial met the constraints {limits}: nothing chosen, no best_policy.json written")
    return result

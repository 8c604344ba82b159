"""The objective: what the study calls once per trial, in the search process.

It samples a policy, asks the cost model whether it can meet the latency
limit, hands the trial to a worker (``workers``), and stores what came back
on the Optuna trial (measurement, constraints, metrics for MLflow, recovery
curves, why it failed or was pruned): the study storage is the one source of
truth the tracker and ``resume`` read.
"""

from __future__ import annotations

import errno
import logging
import math
import time
from dataclasses import asdict
from typing import Any

import optuna

from autocompress.config import SearchConfig
from autocompress.controller.fidelity import Fidelity
from autocompress.controller.pareto import MB, accuracy_drops, score_drops
from autocompress.controller.progress import LiveLine
from autocompress.controller.study import (
    FAIL_REASON_ATTR,
    FINAL_OF_ATTR,
    INTERRUPTED_ATTR,
    OWNER_ATTR,
    PRUNE_REASON_ATTR,
    RETRY_OF_ATTR,
    STOP_ATTR,
    trial_name,
    trial_owner,
    trial_seed,
)
from autocompress.controller.trial import Measurement, SearchContext, TrialRequest
from autocompress.controller.workers import Interrupted, Workers
from autocompress.cost import is_clearly_infeasible, policy_features
from autocompress.distill import RecoveryResult
from autocompress.models.families import ffn_width
from autocompress.models.loading import block_linears, encoder_list_name
from autocompress.space import sample_policy
from autocompress.tracking.runs import CURVES_ATTR, METRICS_ATTR, PARAMS_ATTR

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
            policy = policy.replace(recovery_steps=context.config.search.final_training.recovery_steps)
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
        request = TrialRequest(policy.to_dict(), trial_name(trial.number), seed, (twin.study.study_name, twin._trial_id) if twin else None, final)
        try:
            outcome = workers.run(request)
            if outcome.measurement is not None:
                check_finite(outcome.measurement)
        except (Exception, KeyboardInterrupt) as error:  # fails this trial alone, with its reason; the search goes on
            full = disk_full(error)
            interrupted = full or isinstance(error, (Interrupted, KeyboardInterrupt))  # not the policy's fault: retried on resume
            reason = f"interrupted: {failure_reason(error)}" if interrupted else failure_reason(error)
            log.warning("trial %d failed: %s", trial.number, reason)
            if full:  # every next trial would fail the same way: stop cleanly, the study intact
                trial.study.set_user_attr(STOP_ATTR, True)
                log.error("the disk is full (%s): no new trials; free space (`autocompress gc`), then run the same command "
                          "or `autocompress resume JOB` to go on", failure_reason(error))
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


def disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or what it wraps: ONNX Runtime and torch re-raise as their own errors) is a full disk (ENOSPC)."""
    seen: BaseException | None = error
    while seen is not None:
        if (isinstance(seen, OSError) and seen.errno == errno.ENOSPC) or "No space left on device" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


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

"""The search: an Optuna study whose trials compress, measure and track one policy each.

``evaluate(policy, context)`` is the whole trial; the Optuna objective only
samples the policy, records constraints and hands the numbers to the tracker,
so parallel executors can run ``evaluate`` anywhere. The study storage is the
source of truth: re-running with the same name and storage adds trials to it.
"""

from __future__ import annotations

import logging
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from transformers import PreTrainedModel

from autocompress.compress import compress, layer_plan
from autocompress.config import SamplerName, SearchConfig
from autocompress.cost import FEATURES_VERSION, CostModelStore, is_clearly_infeasible, policy_features
from autocompress.data import Examples, batches, load_split
from autocompress.distill import RecoveryResult, cached_teacher_logits
from autocompress.fidelity import Fidelity
from autocompress.measure import (
    deploy_and_measure,
    fingerprint_id,
    hardware_fingerprint,
    latency_inputs,
    model_size_bytes,
    pick_sentences,
)
from autocompress.models import block_linears, encoder_list_name, load_tokenizer
from autocompress.pareto import BASELINE_ATTR, format_table, front_rows, plot_front, select
from autocompress.paths import cost_models_dir, study_work_dir
from autocompress.policy import Policy
from autocompress.runtime import LoweringMismatch, NotDeployable
from autocompress.space import sample_policy, uniform_starts
from autocompress.teacher import Teacher, get_teacher
from autocompress.techniques import Distillation, MagnitudePruning, Quantization, Recovery, RecoveryStopped, StructuredPruning
from autocompress.tracking import Tracker

log = logging.getLogger("autocompress")
DIRECTIONS = ("maximize", "minimize", "minimize")  # accuracy, latency_ms, size_mb
MIN_COST_SAMPLES = 3
"""Measurements before the cost model is first fit (it only rejects after 8, see cost.is_clearly_infeasible)."""


@dataclass(frozen=True)
class Measurement:
    """What one compressed model measured."""

    accuracy: float
    simulated_accuracy: float
    latency_ms: float
    latency_p90_ms: float
    latency_ci_low_ms: float
    latency_ci_high_ms: float
    size_bytes: int
    artifact_bytes: int | None
    artifact: str | None = None
    """The lowered ONNX file that was verified and timed (kept under the study's work folder)."""


@dataclass
class SearchContext:
    """Everything a trial needs, built once per search."""

    config: SearchConfig
    teacher: Teacher
    model: PreTrainedModel
    tokenizer: Any
    validation: list[dict[str, torch.Tensor]]
    latency_inputs: list[dict[str, torch.Tensor]]
    calibration: dict[str, torch.Tensor]
    workdir: Path
    costs: CostModelStore
    fingerprint: dict[str, Any]
    distillation: Distillation | None = None
    fidelity: Fidelity | None = None
    baseline: Measurement | None = None

    @property
    def seq_len(self) -> float:
        """Mean token count of the timed sentences: the cost model's input length."""
        return sum(x["input_ids"].shape[-1] for x in self.latency_inputs) / len(self.latency_inputs)

    @property
    def latency_target(self) -> tuple[str, str]:
        """Cost-model key: this hardware and runtime."""
        return fingerprint_id(self.fingerprint), f"latency_ms.{self.config.latency.backend}.features{FEATURES_VERSION}"

    @classmethod
    def build(cls, config: SearchConfig) -> "SearchContext":
        torch.manual_seed(config.search.seed)
        teacher = get_teacher(config)
        tokenizer = load_tokenizer(str(teacher.path))
        validation_examples = load_split(config, "validation")
        validation = batches(by_length(validation_examples), tokenizer, batch_size=64, max_length=config.task.max_length)
        sentences = pick_sentences(validation_examples.texts, n=min(config.latency.sentences, len(validation_examples)))
        timing_inputs = latency_inputs(tokenizer, sentences, max_length=config.task.max_length)
        calibration = batches(load_split(config, "train").sample(32, seed=config.search.seed), tokenizer, batch_size=32, max_length=config.task.max_length)[0]
        workdir = study_work_dir(config.search.study_name)
        workdir.mkdir(parents=True, exist_ok=True)
        costs = CostModelStore(cost_models_dir())
        fingerprint = hardware_fingerprint(threads=config.latency.threads)
        context = cls(config, teacher, teacher.load(), tokenizer, validation, timing_inputs, calibration, workdir, costs, fingerprint)
        if max(config.space.recovery_steps) > 0:
            context.distillation = distillation_setup(config, context.model, teacher, tokenizer)
            context.fidelity = Fidelity(config)
        context.baseline = measure(context.model, Policy(), context, name="teacher")
        return context


def distillation_setup(config: SearchConfig, model: PreTrainedModel, teacher: Teacher, tokenizer: Any) -> Distillation:
    """Training batches for recovery, the teacher's logits on them (cached on disk) and scoring batches."""
    settings, length = config.recovery, config.task.max_length
    train = batches(load_split(config, "train").sample(settings.train_subset, seed=config.search.seed), tokenizer, batch_size=settings.batch_size, max_length=length)
    scoring = batches(by_length(load_split(config, "validation").head(settings.eval_subset)), tokenizer, batch_size=64, max_length=length)
    logits = cached_teacher_logits(model, train, teacher_key=teacher.key)
    return Distillation(teacher=model, train_batches=train, teacher_logits=logits, eval_batches=scoring, settings=settings)


def by_length(examples: Examples) -> Examples:
    """Sort by length so validation batches carry little padding (accuracy is order-free)."""
    order = sorted(range(len(examples)), key=lambda i: len(examples.texts[i]))
    return Examples(tuple(examples.texts[i] for i in order), tuple(examples.labels[i] for i in order))


def measure(model: PreTrainedModel, policy: Policy, context: SearchContext, *, name: str) -> Measurement:
    """Accuracy on the validation split, storage size and real latency of the deployed ``model``."""
    settings = context.config.latency
    deployed = deploy_and_measure(
        model,
        latency_inputs=context.latency_inputs,
        validation=context.validation,
        backend=settings.backend,
        threads=settings.threads,
        warmup=settings.warmup,
        repeats=settings.repeats,
        workdir=context.workdir / name,
    )
    return Measurement(
        accuracy=deployed.accuracy,
        simulated_accuracy=deployed.simulated_accuracy,
        latency_ms=deployed.latency.median_ms,
        latency_p90_ms=deployed.latency.p90_ms,
        latency_ci_low_ms=deployed.latency.ci_low_ms,
        latency_ci_high_ms=deployed.latency.ci_high_ms,
        size_bytes=model_size_bytes(model, layer_plan(model, policy), scheme=policy.scheme),
        artifact_bytes=deployed.artifact_bytes,
        artifact=str(deployed.artifact) if deployed.artifact is not None else None,
    )


def evaluate(policy: Policy, context: SearchContext, *, name: str = "trial", recovery: Recovery | None = None) -> Measurement:
    """One trial: compress the teacher under ``policy`` (recovering with ``recovery``) and measure the result."""
    techniques = (StructuredPruning(), MagnitudePruning(), *([recovery] if recovery else []), Quantization())
    compressed = compress(context.model, policy, techniques=techniques, calibration=context.calibration)
    return measure(compressed, policy, context, name=name)


def make_sampler(config: SearchConfig) -> optuna.samplers.BaseSampler:
    seed = config.search.seed
    if config.search.sampler is SamplerName.NSGA2:
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=config.search.population_size)
    if config.search.sampler is SamplerName.TPE:
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    return optuna.samplers.RandomSampler(seed=seed)


def open_study(config: SearchConfig) -> optuna.Study:
    return optuna.create_study(
        study_name=config.search.study_name,
        storage=config.search.storage,
        directions=list(DIRECTIONS),
        sampler=make_sampler(config),
        load_if_exists=True,
    )


def _constraints(measurement: Measurement, baseline: Measurement, config: SearchConfig) -> dict[str, float]:
    """Optuna constraint values: feasible when <= 0."""
    limits = config.search.constraints
    values = {}
    if limits.max_accuracy_drop is not None:
        values["accuracy_drop"] = (baseline.accuracy - measurement.accuracy) - limits.max_accuracy_drop
    if limits.max_latency_ms is not None:
        values["latency_ms"] = measurement.latency_ms - limits.max_latency_ms
    if limits.max_size_mb is not None:
        values["size_mb"] = measurement.size_bytes / 1e6 - limits.max_size_mb
    return values


def make_objective(context: SearchContext, tracker: Tracker):
    prefix = encoder_list_name(context.model)
    num_blocks = len(block_linears(context.model))
    baseline = context.baseline

    def objective(trial: optuna.Trial) -> tuple[float, float, float]:
        policy = sample_policy(trial, context.config.space, prefix=prefix, num_blocks=num_blocks)
        trial.set_user_attr("policy", policy.to_dict())
        names = [name for block in block_linears(context.model) for name in block]
        params = {**policy.flat_params(), **{f"{n}.{k}": v for n, s in policy.resolve(names).items() for k, v in asdict(s).items()}}
        params = {k: v for k, v in params.items() if not k.startswith("re:")}
        features = policy_features(policy, context.model, seq_len=context.seq_len)
        trial.set_user_attr("features", features)
        predicted = predict_latency(context, features, trial, tracker, params, policy)
        started = time.perf_counter()
        depth = len(policy.kept_blocks) if policy.kept_blocks is not None else num_blocks
        twin = context.fidelity.twin(trial.number, f"blocks{depth}") if context.fidelity and policy.recovery_steps else None
        recovery = Recovery(context.distillation, report=Fidelity.reporter(twin) if twin else None) if context.distillation else None
        try:
            measurement = evaluate(policy, context, name=f"trial-{trial.number}", recovery=recovery)
        except RecoveryStopped as stop:
            Fidelity.finish(twin, None)
            trial.set_user_attr("pruned_at_step", stop.result.steps)
            tracker.log_trial(trial.number, params=params, metrics={"trial_seconds": time.perf_counter() - started},
                              artifacts={"policy.json": policy.to_dict()}, tags={"pruned": "true"}, steps=_curves(stop.result))
            raise optuna.TrialPruned(str(stop)) from None
        except BaseException:
            if twin is not None:
                Fidelity.finish(twin, None, failed=True)
            raise
        if twin is not None:
            Fidelity.finish(twin, recovery.result.evaluations[-1][1])
        if context.costs.add(*context.latency_target, features, measurement.latency_ms) >= MIN_COST_SAMPLES:
            context.costs.fit(*context.latency_target)
        for key, value in asdict(measurement).items():
            trial.set_user_attr(key, value)
        for key, value in _constraints(measurement, baseline, context.config).items():
            trial.set_constraint(key, value)
        metrics = {
            **{k: v for k, v in asdict(measurement).items() if isinstance(v, (int, float))},
            "accuracy_drop": baseline.accuracy - measurement.accuracy,
            "speedup": baseline.latency_ms / measurement.latency_ms,
            "compression": baseline.size_bytes / measurement.size_bytes,
            "size_mb": measurement.size_bytes / 1e6,
            "trial_seconds": time.perf_counter() - started,
        }
        if predicted is not None:
            metrics["predicted_latency_ms"] = predicted
            metrics["latency_prediction_error_pct"] = 100 * abs(predicted - measurement.latency_ms) / measurement.latency_ms
        curves = _curves(recovery.result) if recovery and recovery.result else None
        tracker.log_trial(trial.number, params=params, metrics=metrics, artifacts={"policy.json": policy.to_dict()}, steps=curves)
        return measurement.accuracy, measurement.latency_ms, measurement.size_bytes / 1e6

    return objective


def _curves(result: RecoveryResult) -> dict[str, list[tuple[int, float]]]:
    """Recovery loss per step and intermediate validation accuracy, as MLflow step metrics."""
    return {"recovery_loss": list(enumerate(result.losses)), "recovery_accuracy": list(result.evaluations)}


def predict_latency(
    context: SearchContext, features: dict[str, float], trial: optuna.Trial, tracker: Tracker, params: dict[str, Any], policy: Policy
) -> float | None:
    """The cost model's latency for this candidate; prune the trial when it confidently breaks the limit."""
    model = context.costs.load(*context.latency_target)
    if model is None:
        return None
    limit = context.config.search.constraints.max_latency_ms
    if limit is None:
        return float(model.predict([features])[0])
    reject, predicted = is_clearly_infeasible(model, features, limit=limit)
    trial.set_user_attr("predicted_latency_ms", predicted)
    if reject:
        trial.set_user_attr("rejected_by_cost_model", True)
        tracker.log_trial(
            trial.number,
            params=params,
            metrics={"predicted_latency_ms": predicted},
            artifacts={"policy.json": policy.to_dict()},
            tags={"rejected_by_cost_model": "true"},
        )
        raise optuna.TrialPruned(f"cost model predicts {predicted:.2f} ms, confidently above max_latency_ms={limit}")
    return predicted


@dataclass(frozen=True)
class SearchResult:
    study_name: str
    front: list[dict[str, Any]]
    chosen: dict[str, Any] | None
    output: Path


def run_search(config: SearchConfig) -> SearchResult:
    """Run (or resume) the configured search and write its front; see module docstring."""
    log.info("preparing teacher, data and baseline")
    context = SearchContext.build(config)
    study = open_study(config)
    baseline = asdict(context.baseline)
    study.set_user_attr(BASELINE_ATTR, baseline)
    tracker = Tracker(study=study, experiment=config.tracking.experiment, tracking_uri=config.tracking.uri)
    fingerprint = context.fingerprint
    tracker.log_search(
        params={"model": config.model, "teacher_key": context.teacher.key, "sampler": config.search.sampler.value, "storage": config.search.storage},
        metrics={f"teacher_{k}": float(v) for k, v in baseline.items() if isinstance(v, (int, float))},
        tags={f"hardware.{k}": str(v) for k, v in fingerprint.items()} | {"python": sys.version.split()[0], "platform": platform.platform()},
        config=config.model_dump(mode="json"),
    )
    if context.teacher.trained_now:
        tracker.log_teacher(context.teacher)
    if config.search.start_uniform and not study.trials:
        for params in uniform_starts(config.space, num_blocks=len(block_linears(context.model))):
            study.enqueue_trial(params, skip_if_exists=True)
    status = "FAILED"
    try:
        study.optimize(
            make_objective(context, tracker),
            n_trials=config.search.n_trials,
            timeout=config.search.timeout,
            gc_after_trial=True,
            catch=(NotDeployable, LoweringMismatch),
        )
        status = "FINISHED"
    finally:
        result = finish_search(study, config, tracker)
        tracker.finish(status)
    return result


def finish_search(study: optuna.Study, config: SearchConfig, tracker: Tracker | None = None) -> SearchResult:
    """Write pareto.json, best_policy.json and the plot; tag the front in MLflow."""
    from autocompress.export import write_front

    output = Path(config.output)
    rows = front_rows(study) if any(t.state.is_finished() for t in study.trials) else []
    chosen = select(rows, config.search.selection, config.search.constraints.max_accuracy_drop)
    plot = plot_front(study, rows, output / "pareto.png") if rows else None
    write_front(output, rows, chosen)
    if tracker is not None:
        tracker.log_front({row["trial"] for row in rows}, rows, plot)
    print(format_table(rows, study.user_attrs.get(BASELINE_ATTR)))
    return SearchResult(study.study_name, rows, chosen, output)

"""The search: an Optuna study whose trials compress, measure and track one policy each.

``evaluate(policy, context)`` is the whole trial; the Optuna objective only
samples the policy, seeds the trial, records constraints and hands the numbers
to the tracker, so parallel executors can run ``evaluate`` anywhere. The
study storage is the source of truth: re-running with the same name and
storage adds trials to it.

Every number a trial reports is what a user would get: accuracy of the
lowered artifact on the dev split (search decisions) and on the untouched test
split (the report), latency timed interleaved with the teacher and ORT's
dynamic int8 in the same probe (the objective is the ratio), and size as the
bytes of the file that ships.
"""

from __future__ import annotations

import logging
import platform
import random
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from transformers import PreTrainedModel

from autocompress.compress import compress, layer_plan
from autocompress.config import SearchConfig
from autocompress.cost import FEATURES_VERSION, CostModelStore, architecture_id, is_clearly_infeasible, policy_features
from autocompress.data import Examples, batches, load_split
from autocompress.distill import RecoveryResult, cached_teacher_logits
from autocompress.fidelity import Fidelity
from autocompress.measure import (
    LatencyProbe,
    OrtProbe,
    TorchProbe,
    accuracy,
    deploy_and_measure,
    estimated_size_bytes,
    fingerprint_id,
    hardware_fingerprint,
    latency_inputs,
    measure_paired,
    pick_sentences,
    shipped_bytes,
    sparsity,
)
from autocompress.measure._deployed import deploy, onnx_accuracy
from autocompress.models import block_linears, encoder_list_name, load_tokenizer
from autocompress.pareto import BASELINE_ATTR, MB, format_table, front_rows, plot_front, select
from autocompress.paths import cost_models_dir, study_work_dir
from autocompress.policy import Policy
from autocompress.preflight import preflight
from autocompress.runtime import dynamic_int8, export_onnx
from autocompress.space import sample_policy, uniform_starts
from autocompress.study import open_study, study_uid, trial_seed
from autocompress.teacher import Teacher, get_teacher
from autocompress.techniques import Distillation, MagnitudePruning, Quantization, Recovery, RecoveryStopped, StructuredPruning
from autocompress.tracking import Tracker

log = logging.getLogger("autocompress")
MIN_COST_SAMPLES = 3
"""Measurements before the cost model is first fit (it only rejects after 8, see cost.is_clearly_infeasible)."""
REFERENCES = ("teacher", "int8")
"""Models every trial is timed beside: the uncompressed teacher and ONNX Runtime's dynamic int8 of it."""


@dataclass(frozen=True)
class Measurement:
    """What one compressed model measured; ratios come from one paired probe with the references."""

    dev_accuracy: float
    test_accuracy: float
    simulated_dev_accuracy: float
    latency_ms: float
    latency_p90_ms: float
    latency_ci_low_ms: float
    latency_ci_high_ms: float
    reference_latency_ms: float
    int8_latency_ms: float
    relative_latency: float
    relative_latency_ci_low: float
    relative_latency_ci_high: float
    speedup: float
    speedup_vs_int8: float
    size_bytes: int
    size_is_estimate: bool
    sparsity: float
    artifact: str | None = None
    """The lowered ONNX file that was verified and timed (under the study's work folder)."""


@dataclass
class SearchContext:
    """Everything a trial needs, built once per search."""

    config: SearchConfig
    teacher: Teacher
    model: PreTrainedModel
    tokenizer: Any
    dev: list[dict[str, torch.Tensor]]
    test: list[dict[str, torch.Tensor]]
    latency_inputs: list[dict[str, torch.Tensor]]
    calibration: dict[str, torch.Tensor]
    workdir: Path
    costs: CostModelStore
    fingerprint: dict[str, Any]
    references: dict[str, LatencyProbe]
    baseline: dict[str, Any]
    distillation: Distillation | None = None
    fidelity: Fidelity | None = None

    @property
    def seq_len(self) -> float:
        """Mean token count of the timed sentences: the cost model's input length."""
        return sum(x["input_ids"].shape[-1] for x in self.latency_inputs) / len(self.latency_inputs)

    @property
    def latency_target(self) -> tuple[str, str]:
        """Cost-model key: this hardware, this runtime and this model's architecture."""
        return fingerprint_id(self.fingerprint), cost_target(self.model, self.config.latency.backend)

    @classmethod
    def build(cls, config: SearchConfig, workdir: Path) -> SearchContext:
        torch.manual_seed(config.search.seed)
        teacher = get_teacher(config)
        tokenizer = load_tokenizer(str(teacher.path))
        length = config.task.max_length
        dev_examples, test_examples = load_split(config, "dev"), load_split(config, "test")
        dev = batches(by_length(dev_examples), tokenizer, batch_size=64, max_length=length)
        test = batches(by_length(test_examples), tokenizer, batch_size=64, max_length=length)
        sentences = pick_sentences(dev_examples.texts, n=min(config.latency.sentences, len(dev_examples)))
        timing_inputs = latency_inputs(tokenizer, sentences, max_length=length)
        calibration = batches(load_split(config, "train").sample(32, seed=config.search.seed), tokenizer, batch_size=32, max_length=length)[0]
        model = teacher.load()
        references, baseline = measure_references(model, config, dev=dev, test=test, timing_inputs=timing_inputs, workdir=workdir / "references")
        fingerprint = hardware_fingerprint(threads=config.latency.threads)
        context = cls(config, teacher, model, tokenizer, dev, test, timing_inputs, calibration, workdir, CostModelStore(cost_models_dir()), fingerprint, references, baseline)
        if max(config.space.recovery_steps) > 0:
            context.distillation = distillation_setup(config, model, teacher, tokenizer)
            context.fidelity = Fidelity(config)
        return context


def cost_target(model: PreTrainedModel, backend: str) -> str:
    """The cost-model target name for ``model`` on ``backend``: samples of other models never mix in."""
    return f"latency_ms.{backend}.{architecture_id(model)}.features{FEATURES_VERSION}"


def measure_references(
    model: PreTrainedModel, config: SearchConfig, *, dev: list, test: list, timing_inputs: list, workdir: Path
) -> tuple[dict[str, LatencyProbe], dict[str, Any]]:
    """Deploy the teacher and ORT's dynamic int8 of it, score both, and time them side by side once.

    Returns their probes (timed again beside every trial) and the study's
    baseline: accuracies, file sizes and this first paired timing.
    """
    settings = config.latency
    if settings.backend == "onnxruntime":
        report, check = deploy(model, dev=dev, threads=settings.threads, workdir=workdir / "teacher")
        fp32, teacher_dev = Path(report.path), check.onnx_accuracy
        teacher = {"dev_accuracy": teacher_dev, "test_accuracy": onnx_accuracy(fp32, test, threads=settings.threads), "size_bytes": shipped_bytes(fp32)}
        teacher_probe: LatencyProbe = OrtProbe(fp32, threads=settings.threads)
    else:
        example = {k: v[:2] for k, v in dev[0].items() if k != "labels"}
        fp32 = export_onnx(model, workdir / "teacher" / "model.onnx", example=example)
        size = estimated_size_bytes(model, layer_plan(model, Policy()))
        teacher = {"dev_accuracy": accuracy(model, dev), "test_accuracy": accuracy(model, test), "size_bytes": size, "size_is_estimate": True}
        teacher_probe = TorchProbe(model, threads=settings.threads)
    int8_path = dynamic_int8(fp32, workdir / "int8" / "model.onnx")
    int8 = {
        "dev_accuracy": onnx_accuracy(int8_path, dev, threads=settings.threads),
        "test_accuracy": onnx_accuracy(int8_path, test, threads=settings.threads),
        "size_bytes": shipped_bytes(int8_path),
    }
    probes = {"teacher": teacher_probe, "int8": OrtProbe(int8_path, threads=settings.threads)}
    paired = measure_paired(probes, timing_inputs, candidate="teacher", warmup=settings.warmup, repeats=settings.repeats, rounds=settings.rounds)
    teacher["latency_ms"] = paired.results["teacher"].median_ms
    int8["latency_ms"] = paired.results["int8"].median_ms
    int8["speedup"] = paired.ratios["int8"]  # the teacher's latency over int8's: int8's speed-up
    return probes, {**teacher, "int8": int8, "artifact": str(fp32)}


def distillation_setup(config: SearchConfig, model: PreTrainedModel, teacher: Teacher, tokenizer: Any) -> Distillation:
    """Training batches for recovery, the teacher's logits on them (cached on disk) and dev scoring batches."""
    settings, length = config.recovery, config.task.max_length
    train = batches(load_split(config, "train").sample(settings.train_subset, seed=config.search.seed), tokenizer, batch_size=settings.batch_size, max_length=length)
    scoring = batches(by_length(load_split(config, "dev").head(settings.eval_subset)), tokenizer, batch_size=64, max_length=length)
    logits = cached_teacher_logits(model, train, teacher_key=teacher.key)
    return Distillation(teacher=model, train_batches=train, teacher_logits=logits, eval_batches=scoring, settings=settings)


def by_length(examples: Examples) -> Examples:
    """Sort by length so batches carry little padding (accuracy is order-free)."""
    return examples.subset(sorted(range(len(examples)), key=lambda i: len(examples.texts[i])))


def measure(model: PreTrainedModel, policy: Policy, context: SearchContext, *, name: str) -> Measurement:
    """Dev and test accuracy, shipped size and paired latency of the deployed ``model``."""
    settings = context.config.latency
    deployed = deploy_and_measure(
        model,
        dev=context.dev,
        test=context.test,
        latency_inputs=context.latency_inputs,
        references=context.references,
        backend=settings.backend,
        threads=settings.threads,
        warmup=settings.warmup,
        repeats=settings.repeats,
        rounds=settings.rounds,
        workdir=context.workdir / name,
    )
    timing = deployed.latency
    own = timing.results["candidate"]
    low, high = timing.ratio_ci["teacher"]
    plan = layer_plan(model, policy)
    estimate = deployed.artifact_bytes is None
    return Measurement(
        dev_accuracy=deployed.dev_accuracy,
        test_accuracy=deployed.test_accuracy,
        simulated_dev_accuracy=deployed.simulated_dev_accuracy,
        latency_ms=own.median_ms,
        latency_p90_ms=own.p90_ms,
        latency_ci_low_ms=own.ci_low_ms,
        latency_ci_high_ms=own.ci_high_ms,
        reference_latency_ms=timing.results["teacher"].median_ms,
        int8_latency_ms=timing.results["int8"].median_ms,
        relative_latency=timing.ratios["teacher"],
        relative_latency_ci_low=low,
        relative_latency_ci_high=high,
        speedup=1 / timing.ratios["teacher"],
        speedup_vs_int8=1 / timing.ratios["int8"],
        size_bytes=estimated_size_bytes(model, plan, scheme=policy.scheme) if estimate else deployed.artifact_bytes,
        size_is_estimate=estimate,
        sparsity=sparsity(model, list(plan)),
        artifact=str(deployed.artifact) if deployed.artifact is not None else None,
    )


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch, numpy and ``random`` for one trial, restoring torch's RNG afterwards."""
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(state)


def evaluate(
    policy: Policy, context: SearchContext, *, name: str = "trial", recovery: Recovery | None = None, seed: int = 0
) -> Measurement:
    """One trial: compress the teacher under ``policy`` (recovering with ``recovery``) with ``seed``, and measure it.

    The same policy and seed rebuild the same model.
    """
    techniques = (StructuredPruning(), MagnitudePruning(), *([recovery] if recovery else []), Quantization())
    with seeded(seed):
        compressed = compress(context.model, policy, techniques=techniques, calibration=context.calibration)
    return measure(compressed, policy, context, name=name)


def _constraints(measurement: Measurement, baseline: dict[str, Any], config: SearchConfig) -> dict[str, float]:
    """Optuna constraint values, feasible when <= 0; accuracy is the dev split's."""
    limits = config.search.constraints
    values = {}
    if limits.max_accuracy_drop is not None:
        values["accuracy_drop"] = (baseline["dev_accuracy"] - measurement.dev_accuracy) - limits.max_accuracy_drop
    if limits.max_latency_ms is not None:
        values["latency_ms"] = measurement.latency_ms - limits.max_latency_ms
    if limits.max_size_mb is not None:
        values["size_mb"] = measurement.size_bytes / MB - limits.max_size_mb
    return {key: round(value, 9) for key, value in values.items()}  # a drop of exactly the budget is within it


def trial_metrics(measurement: Measurement, baseline: dict[str, Any]) -> dict[str, float]:
    """The numbers logged for a trial: its own, and ratios to the teacher and ORT int8."""
    own = {k: float(v) for k, v in asdict(measurement).items() if isinstance(v, (int, float))}
    return {
        **own,
        "accuracy_drop": baseline["dev_accuracy"] - measurement.dev_accuracy,
        "test_accuracy_drop": baseline["test_accuracy"] - measurement.test_accuracy,
        "size_mb": measurement.size_bytes / MB,
        "compression": baseline["size_bytes"] / measurement.size_bytes,
        "size_vs_int8": baseline["int8"]["size_bytes"] / measurement.size_bytes,
    }


def make_objective(context: SearchContext, tracker: Tracker):
    prefix = encoder_list_name(context.model)
    num_blocks = len(block_linears(context.model))
    baseline = context.baseline

    def objective(trial: optuna.Trial) -> tuple[float, float, float]:
        policy = sample_policy(trial, context.config.space, prefix=prefix, num_blocks=num_blocks)
        seed = trial_seed(context.config.search.seed, trial.number)
        trial.set_user_attr("policy", policy.to_dict())
        trial.set_user_attr("seed", seed)
        names = [name for block in block_linears(context.model) for name in block]
        params = {**policy.flat_params(), **{f"{n}.{k}": v for n, s in policy.resolve(names).items() for k, v in asdict(s).items()}, "seed": seed}
        params = {k: v for k, v in params.items() if not k.startswith("re:")}
        features = policy_features(policy, context.model, seq_len=context.seq_len)
        trial.set_user_attr("features", features)
        predicted = predict_latency(context, features, trial, tracker, params, policy)
        started = time.perf_counter()
        depth = len(policy.kept_blocks) if policy.kept_blocks is not None else num_blocks
        twin = context.fidelity.twin(trial.number, f"blocks{depth}") if context.fidelity and policy.recovery_steps else None
        recovery = Recovery(context.distillation, report=Fidelity.reporter(twin) if twin else None) if context.distillation else None
        try:
            measurement = evaluate(policy, context, name=f"trial-{trial.number}", recovery=recovery, seed=seed)
        except RecoveryStopped as stop:
            Fidelity.finish(twin, None)
            trial.set_user_attr("pruned_at_step", stop.result.steps)
            tracker.log_trial(trial.number, params=params, metrics={"trial_seconds": time.perf_counter() - started},
                              artifacts={"policy.json": policy.to_dict()}, tags={"pruned": "true"}, steps=_curves(stop.result))
            raise optuna.TrialPruned(str(stop)) from None
        except Exception as error:  # any fault fails this trial alone, with its reason; the search goes on
            reason = failure_reason(error)
            log.warning("trial %d failed: %s", trial.number, reason)
            trial.set_user_attr("fail_reason", reason)
            if twin is not None:
                Fidelity.finish(twin, None, failed=True)
            tracker.log_trial(trial.number, params=params, metrics={"trial_seconds": time.perf_counter() - started},
                              artifacts={"policy.json": policy.to_dict()}, tags={"fail_reason": reason}, status="FAILED")
            raise
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
        metrics = {**trial_metrics(measurement, baseline), "trial_seconds": time.perf_counter() - started}
        if predicted is not None:
            metrics["predicted_latency_ms"] = predicted
            metrics["latency_prediction_error_pct"] = 100 * abs(predicted - measurement.latency_ms) / measurement.latency_ms
        curves = _curves(recovery.result) if recovery and recovery.result else None
        tracker.log_trial(trial.number, params=params, metrics=metrics, artifacts={"policy.json": policy.to_dict()}, steps=curves)
        return measurement.dev_accuracy, measurement.relative_latency, measurement.size_bytes / MB

    return objective


def failure_reason(error: BaseException) -> str:
    """One line naming the exception and its message, for Optuna and MLflow."""
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[0] if message else ''}"[:500]


def _curves(result: RecoveryResult) -> dict[str, list[tuple[int, float]]]:
    """Recovery loss per step and intermediate dev accuracy, as MLflow step metrics."""
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

    @property
    def feasible(self) -> bool:
        """Whether any trial met the constraints (the CLI exits with status 3 when none did)."""
        return any(row["feasible"] for row in self.front)


def run_search(config: SearchConfig) -> SearchResult:
    """Run (or resume) the configured search and write its front; see module docstring.

    Every check that can fail without training (space against the model,
    study signature, data) runs before the teacher is fine-tuned.
    """
    checked = preflight(config)
    study = open_study(config, checked.signature)
    log.info("preparing teacher, data and references")
    context = SearchContext.build(config, study_work_dir(study_uid(study)))
    if BASELINE_ATTR not in study.user_attrs:
        study.set_user_attr(BASELINE_ATTR, context.baseline)
    baseline = study.user_attrs[BASELINE_ATTR]
    context.baseline = baseline
    tracker = Tracker(study=study, experiment=config.tracking.experiment, tracking_uri=config.tracking.uri)
    tracker.log_search(
        params={"model": config.model, "teacher_key": context.teacher.key, "sampler": config.search.sampler.value, "storage": config.search.storage},
        metrics=_baseline_metrics(baseline),
        tags={f"hardware.{k}": str(v) for k, v in context.fingerprint.items()} | {"python": sys.version.split()[0], "platform": platform.platform()},
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
            catch=(Exception,),
        )
        status = "FINISHED"
    finally:
        result = finish_search(study, config, tracker, tokenizer_dir=context.teacher.path)
        tracker.finish(status)
    return result


def _baseline_metrics(baseline: dict[str, Any]) -> dict[str, float]:
    teacher = {f"teacher_{k}": float(v) for k, v in baseline.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    int8 = {f"int8_{k}": float(v) for k, v in baseline["int8"].items()}
    return teacher | int8


def finish_search(study: optuna.Study, config: SearchConfig, tracker: Tracker | None = None, *, tokenizer_dir: Path | None = None) -> SearchResult:
    """Write pareto.json, the front's ONNX files, the chosen model and policy, and the plot; tag the front in MLflow.

    The chosen trial is picked among feasible front trials only; with none
    feasible nothing is chosen and no ``best_policy.json`` is left behind.
    """
    from autocompress.export import write_front

    output = Path(config.output)
    rows = front_rows(study) if any(t.state.is_finished() for t in study.trials) else []
    chosen = select([r for r in rows if r["feasible"]], config.search.selection, config.search.constraints.max_accuracy_drop)
    plot = plot_front(study, rows, output / "pareto.png") if rows else None
    rows, chosen = write_front(output, rows, chosen, tokenizer_dir=tokenizer_dir)
    if tracker is not None:
        tracker.log_front({row["trial"] for row in rows}, rows, plot)
    print(format_table(rows, study.user_attrs.get(BASELINE_ATTR)))
    result = SearchResult(study.study_name, rows, chosen, output)
    if not result.feasible:
        limits = config.search.constraints.model_dump(exclude_none=True)
        print(f"\nno trial met the constraints {limits}: nothing chosen, no best_policy.json written")
    return result

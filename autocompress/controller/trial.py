"""One trial: compress the teacher under a policy, deploy it and measure what a user would get.

``run_trial(context, request)`` is the whole trial and runs wherever the
search puts it: in the search's own process or on a Ray worker (see
``workers``). Every number is what a user would get: accuracy and the task's
other metrics (``task.metric`` among them) of the lowered artifact on the dev
split (search decisions) and on the untouched test split (the report),
latency timed interleaved with the teacher and ORT's dynamic int8 in the same
probe (the objective is the ratio), and size as the bytes of the file that
ships.
"""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from autocompress.config import SearchConfig
from autocompress.controller.fidelity import Fidelity
from autocompress.cost import FEATURES_VERSION, CostModelStore, architecture_id
from autocompress.distill import RecoveryResult, cached_teacher_logits
from autocompress.measurement import (
    LatencyProbe,
    OrtProbe,
    TorchProbe,
    deploy_and_measure,
    deploy_and_score,
    estimated_size_bytes,
    fingerprint_id,
    hardware_fingerprint,
    measure_paired,
    onnx_scores,
    shipped_bytes,
    sparsity,
    split_scores,
)
from autocompress.models.loading import load_tokenizer
from autocompress.models.shrunk import save_shrunk
from autocompress.paths import cost_models_dir
from autocompress.policy import Policy
from autocompress.runtime import dynamic_int8, export_onnx
from autocompress.tasks.data import Examples
from autocompress.tasks.heads import Head, SentenceEmbedding
from autocompress.tasks.registry import task_for
from autocompress.tasks.teacher import Teacher
from autocompress.techniques import (
    Distillation,
    Quantization,
    Recovery,
    RecoveryStopped,
    Technique,
    compress,
    float_techniques,
    layer_plan,
)


@dataclass(frozen=True)
class Measurement:
    """What one compressed model measured; ratios come from one paired probe with the references."""

    dev_accuracy: float | None
    """A classifier's accuracy; None for a task without it (an embedding task: its metrics are all in ``scores``)."""
    test_accuracy: float | None
    simulated_dev_score: float
    """``task.metric`` of the torch simulation on dev, which the lowered artifact was verified against."""
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
    timed_from: float
    timed_until: float
    """Epoch seconds the paired timing held this machine's latency lock: no two trials' windows overlap."""
    artifact: str | None = None
    """The lowered ONNX file that was verified and timed (under the study's work folder)."""
    scores: dict[str, float] = field(default_factory=dict)
    """The task's metrics other than accuracy, by split: ``dev_f1``, ``test_f1`` (binary), ``dev_macro_f1``, ``dev_cosine``, ..."""
    index_bytes_per_vector: int | None = None
    """An embedding model's: the bytes a search index stores per text at the policy's ``output_precision``."""
    trained_model: str | None = None
    """A distilled student's float weights (``save_shrunk`` folder), so exports reuse them instead of training it again."""

    def score(self, name: str) -> float:
        """``dev_accuracy``, ``test_macro_f1``, ...: accuracy from its own fields, the other metrics from ``scores``."""
        return getattr(self, name) if name in ("dev_accuracy", "test_accuracy") else self.scores[name]


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
    head: Head
    costs: CostModelStore
    fingerprint: dict[str, Any]
    references: dict[str, LatencyProbe]
    baseline: dict[str, Any]
    distillation: Distillation | None = None
    fidelity: Fidelity | None = None
    scoring_threads: int | None = None
    """Threads for verifying and scoring a trial's artifact (a worker's share); timing always uses ``latency.threads``."""
    prepared: dict[type[Technique], Technique] = field(default_factory=dict, repr=False)
    """Techniques built for this task, each the first time a policy asks for it (``technique``)."""

    @cached_property
    def final_distillation(self) -> Distillation:
        """The final trainings' batches, teacher logits and loss weights (``search.final_training``), made the first time one runs."""
        return distillation_setup(self.config, self.model, self.teacher, self.tokenizer, final=True)

    def technique(self, technique: type[Technique]) -> Technique:
        """``technique`` ready for this search's task (a vocabulary's token counts, ...), built the first time a policy asks for it."""
        if technique not in self.prepared:
            self.prepared[technique] = technique.for_task(self.config, self.tokenizer)
        return self.prepared[technique]

    @property
    def seq_len(self) -> float:
        """Mean token count of the timed sentences: the cost model's input length."""
        return sum(x["input_ids"].shape[-1] for x in self.latency_inputs) / len(self.latency_inputs)

    @property
    def latency_target(self) -> tuple[str, str]:
        """Cost-model key: this hardware, this runtime and this model's architecture."""
        return fingerprint_id(self.fingerprint), cost_target(self.model, self.config.latency.backend, self.config.latency.batch_size)

    @classmethod
    def build(cls, config: SearchConfig, workdir: Path, *, references: dict[str, Any] | None = None) -> SearchContext:
        """Load teacher and splits; deploy, score and time the references, or, on a worker, reuse ``references``.

        ``references`` is the search process's baseline: its files (teacher
        ONNX, ORT int8) are timed beside every trial, so all workers compare
        against the same artifacts.
        """
        torch.manual_seed(config.search.seed)
        task = task_for(config)
        teacher = task.teacher()
        tokenizer = load_tokenizer(str(teacher.path))
        dev_examples = task.load_split("dev")
        dev, test, calibration = task_batches(config, tokenizer, dev_examples)
        timing_inputs = task.latency_inputs(dev_examples, tokenizer, count=config.latency.sentences)
        model, head = teacher.load(), task.head()
        if references is None:
            probes, baseline = measure_references(
                model, config, dev=dev, test=test, timing_inputs=timing_inputs, workdir=workdir / "references", head=head)
        else:
            probes, baseline = reference_probes(model, config, references), references
        fingerprint = hardware_fingerprint(threads=config.latency.threads)
        context = cls(config, teacher, model, tokenizer, dev, test, timing_inputs, calibration, workdir, head,
                      CostModelStore(cost_models_dir()), fingerprint, probes, baseline)
        if max(config.space.recovery_steps) > 0:
            context.distillation = distillation_setup(config, model, teacher, tokenizer)
            context.fidelity = Fidelity(config)
        return context


def task_batches(config: SearchConfig, tokenizer: Any, dev: Examples | None = None) -> tuple[list, list, dict[str, torch.Tensor]]:
    """Dev and test batches (sorted by length) and the calibration batch (with the task head's loss), as every trial of ``config`` sees them."""
    task = task_for(config)
    dev = task.load_split("dev") if dev is None else dev
    scored = [task.batches(by_length(split), tokenizer, batch_size=64) for split in (dev, task.load_split("test"))]
    calibration = task.batches(task.load_split("train").sample(32, seed=config.search.seed), tokenizer, batch_size=32)[0]
    return scored[0], scored[1], task.head().calibration(calibration)


def cost_target(model: PreTrainedModel, backend: str, batch_size: int = 1) -> str:
    """The cost-model target name for ``model`` on ``backend`` at ``batch_size``: samples of other models or batch sizes never mix in.

    The target is the paired ratio (the candidate's latency over the teacher's,
    timed in one probe), not milliseconds: the ratio cancels the machine's
    drift between trials, which raw times carry into the fit.
    """
    return f"relative_latency.{backend}.{architecture_id(model)}.features{FEATURES_VERSION}{f'.batch{batch_size}' if batch_size > 1 else ''}"


def measure_references(
    model: PreTrainedModel, config: SearchConfig, *, dev: list, test: list, timing_inputs: list, workdir: Path, head: Head
) -> tuple[dict[str, LatencyProbe], dict[str, Any]]:
    """Deploy the teacher and ORT's dynamic int8 of it, score both through ``head``, and time them side by side once.

    Returns their probes (timed again beside every trial) and the study's
    baseline: the task's metrics (``dev_accuracy``, ``dev_f1``, ``dev_cosine``, ...),
    file sizes and this first paired timing.
    """
    settings = config.latency
    scored = deploy_and_score(model, backend=settings.backend, dev=dev, test=test, threads=settings.threads,
                              scoring_threads=settings.threads, workdir=workdir / "teacher", head=head)
    if scored.artifact is not None:
        fp32, size = scored.artifact, {"size_bytes": shipped_bytes(scored.artifact)}
    else:  # timed in torch: ORT's dynamic int8 still needs the teacher as ONNX
        example = {k: v[:2] for k, v in head.inputs(dev[0]).items()}
        fp32 = export_onnx(model, workdir / "teacher" / "model.onnx", example=example, head=head)
        size = {"size_bytes": estimated_size_bytes(model, layer_plan(model, Policy())), "size_is_estimate": True}
    teacher = {**baseline_scores(scored.dev, scored.test), **size}
    teacher_probe = scored.probe
    int8_path = dynamic_int8(fp32, workdir / "int8" / "model.onnx")
    int8 = {
        **baseline_scores(*(onnx_scores(int8_path, split, threads=settings.threads, head=head) for split in (dev, test))),
        "size_bytes": shipped_bytes(int8_path),
        "artifact": str(int8_path),
    }
    probes = {"teacher": teacher_probe, "int8": OrtProbe(int8_path, threads=settings.threads)}
    paired = measure_paired(probes, timing_inputs, candidate="teacher", warmup=settings.warmup, repeats=settings.repeats, rounds=settings.rounds)
    teacher["latency_ms"] = paired.results["teacher"].median_ms
    int8["latency_ms"] = paired.results["int8"].median_ms
    int8["speedup"] = paired.ratios["int8"]  # the teacher's latency over int8's: int8's speed-up
    return probes, {**teacher, "int8": int8, "artifact": str(fp32)}


def baseline_scores(dev: dict[str, float], test: dict[str, float]) -> dict[str, float]:
    """A reference's baseline entries from its dev and test scores: ``dev_accuracy``, ``test_accuracy`` (a classifier's), then ``dev_f1``, ..."""
    accuracy = {"dev_accuracy": dev["accuracy"], "test_accuracy": test["accuracy"]} if "accuracy" in dev else {}
    return {**accuracy, **split_scores("dev", dev), **split_scores("test", test)}


def reference_probes(model: PreTrainedModel, config: SearchConfig, baseline: dict[str, Any]) -> dict[str, LatencyProbe]:
    """Probes of the references ``measure_references`` deployed, for a worker that times trials beside them."""
    threads = config.latency.threads
    teacher = OrtProbe(baseline["artifact"], threads=threads) if config.latency.backend == "onnxruntime" else TorchProbe(model, threads=threads)
    return {"teacher": teacher, "int8": OrtProbe(baseline["int8"]["artifact"], threads=threads)}


def distillation_setup(config: SearchConfig, model: PreTrainedModel, teacher: Teacher, tokenizer: Any, *, final: bool = False) -> Distillation:
    """Training batches for recovery (its ``train_subset`` rows, seeded; None: all), the teacher's logits on them (cached on disk) and dev scoring batches.

    ``final``: a final training's rows and loss weights (``search.final_training``) instead of ``recovery``'s.
    """
    task, stage = task_for(config), config.search.final_training
    settings = stage.recovery(config.recovery) if final else config.recovery
    train_subset = stage.train_subset if final else settings.train_subset
    rows = task.load_split("train")
    train = task.batches(rows.sample(train_subset or len(rows), seed=config.search.seed), tokenizer, batch_size=settings.batch_size)
    head = task.head()
    scoring = head.metric_batches(task.batches(by_length(task.load_split("dev").head(settings.eval_subset)), tokenizer, batch_size=64))
    outputs = cached_teacher_logits(model, train, teacher_key=teacher.key, head=head)
    return Distillation(teacher=model, train_batches=train, teacher_logits=outputs, eval_batches=scoring, settings=settings, head=head)


def by_length(examples: Examples) -> Examples:
    """Sort by length so batches carry little padding (accuracy is order-free)."""
    return examples.subset(sorted(range(len(examples)), key=examples.chars))


def measure(model: PreTrainedModel, policy: Policy, context: SearchContext, *, name: str) -> Measurement:
    """The task's metrics on dev and test (as the policy reads the output), shipped size and paired latency of the deployed ``model``."""
    head = context.head.for_policy(policy)
    deployed = deploy_and_measure(
        model,
        dev=context.dev,
        test=context.test,
        latency_inputs=context.latency_inputs,
        references=context.references,
        latency=context.config.latency,
        workdir=context.workdir / name,
        scoring_threads=context.scoring_threads,
        head=head,
    )
    timing = deployed.latency
    own = timing.results["candidate"]
    low, high = timing.ratio_ci["teacher"]
    plan = layer_plan(model, policy)
    estimate = deployed.artifact_bytes is None
    return Measurement(
        dev_accuracy=deployed.dev_accuracy,
        test_accuracy=deployed.test_accuracy,
        simulated_dev_score=deployed.simulated_dev_score,
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
        timed_from=min(result.started for result in timing.results.values()),
        timed_until=max(result.finished for result in timing.results.values()),
        artifact=str(deployed.artifact) if deployed.artifact is not None else None,
        scores=deployed.scores,
        index_bytes_per_vector=head.index_bytes(model.config.hidden_size) if isinstance(head, SentenceEmbedding) else None,
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

    The same policy and seed rebuild the same model. A student that was
    distilled keeps its float weights beside its ONNX file (``trained/``), so
    exporting it later costs no second training.
    """
    with seeded(seed):
        techniques = float_techniques(policy, prepare=context.technique, recovery=recovery)
        float_model = compress(context.model, policy, techniques=techniques, calibration=context.calibration)
        compressed = compress(float_model, policy, techniques=(Quantization(),))
    measurement = measure(compressed, policy, context, name=name)
    if recovery is None:
        return measurement
    trained = save_shrunk(float_model, context.workdir / name / TRAINED_DIR)
    return replace(measurement, trained_model=str(trained))


TRAINED_DIR = "trained"


@dataclass(frozen=True)
class TrialRequest:
    """What a worker needs to run one trial: the sampled policy, its name and seed, and its fidelity twin."""

    policy: dict[str, Any]
    name: str
    seed: int
    twin: tuple[str, int] | None = None
    """(companion study name, trial id) that recovery reports its accuracy to, in the search's storage."""
    final: bool = False
    """A final training (``search.final_training``): distilled on its own rows, never pruned."""


@dataclass(frozen=True)
class TrialOutcome:
    """What came back: the measurement, or the recovery that the pruner stopped; and which worker ran it."""

    measurement: Measurement | None
    recovery: RecoveryResult | None
    stopped: str | None
    worker: str
    seconds: float = 0.0
    """Wall time of the trial on its worker: what the search's own overhead (sampling, storage, Ray, MLflow) is compared with."""


def run_trial(context: SearchContext, request: TrialRequest) -> TrialOutcome:
    """Compress, deploy and measure one policy (see ``evaluate``); a pruned recovery returns its curves instead of raising."""
    policy = Policy.from_dict(request.policy)
    twin = Fidelity.attach(context.config, *request.twin) if request.twin else None
    distillation = context.final_distillation if request.final else context.distillation
    recovery = Recovery(distillation, report=Fidelity.reporter(twin) if twin else None) if distillation else None
    worker, started = f"{socket.gethostname()}:{os.getpid()}", time.perf_counter()
    try:
        measurement = evaluate(policy, context, name=request.name, recovery=recovery, seed=request.seed)
    except RecoveryStopped as stop:
        return TrialOutcome(None, stop.result, str(stop), worker, time.perf_counter() - started)
    return TrialOutcome(measurement, recovery.result if recovery else None, None, worker, time.perf_counter() - started)

"""Measure what would really be deployed: the lowered ONNX artifact, or the torch model.

With the ONNX Runtime backend the compressed model is exported, its
quantization lowered to ORT's integer kernels, the artifact checked against
the torch simulation on the dev split (a mismatch raises), scored on the
untouched test split, and timed interleaved with its reference models (the
teacher, ORT's dynamic int8) in one paired probe. The task's metrics (its
head's: accuracy and F1, or an embedding's agreement with the teacher's) are
the artifact's own; the size is the file's bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel

from autocompress.config import LatencyConfig
from autocompress.cores import cores
from autocompress.measurement._accuracy import model_scores
from autocompress.measurement._latency import LatencyProbe, OrtProbe, PairedLatency, TorchProbe, measure_paired
from autocompress.measurement._size import shipped_bytes
from autocompress.runtime import LoweringReport, VerifyReport, export_onnx, lower, ort_feed, ort_session, verify
from autocompress.tasks.heads import Head, Logits
from autocompress.tasks.metrics import split_scores

Batches = Sequence[Mapping[str, torch.Tensor]]
CANDIDATE = "candidate"


@dataclass(frozen=True)
class Deployment:
    """A measured model: paired latency, the task's metrics on dev and test, and (for ONNX) its file and check."""

    latency: PairedLatency
    dev_accuracy: float | None
    """Accuracy of a classifier; None for a task without it (its metrics are all in ``scores``)."""
    test_accuracy: float | None
    simulated_dev_score: float
    """``task.metric`` of the torch simulation on dev: what the lowered graph was checked against."""
    artifact: Path | None = None
    artifact_bytes: int | None = None
    check: VerifyReport | None = None
    lowering: LoweringReport | None = None
    scores: dict[str, float] = field(default_factory=dict)
    """The task's metrics other than accuracy, by split: ``dev_f1``, ``test_f1`` (binary), ``dev_macro_f1``, ``dev_cosine``, ..."""


EXACT_NBITS = 0
"""MatMulNBits accuracy level 0: float math on the dequantized weights, exactly the simulation.
Level 4 (int8 activations) was ~15 % faster here but drifts from the simulation."""


def deploy(
    model: PreTrainedModel, *, dev: Batches, threads: int, workdir: Path, head: Head | None = None
) -> tuple[LoweringReport, VerifyReport]:
    """Export, lower to ORT kernels, verify against torch and score on ``dev`` through ``head``; the artifact is ``workdir/model.onnx``."""
    head = head or Logits("accuracy")
    workdir.mkdir(parents=True, exist_ok=True)
    example = {k: v[:2] for k, v in head.inputs(dev[0]).items()}
    exported = export_onnx(model, workdir / "model.fp32.onnx", example=example, lean=True, head=head)
    report = lower(model, exported, workdir / "model.onnx", accuracy_level=EXACT_NBITS)
    exported.unlink()
    return report, verify(report.path, model, dev, threads=threads, head=head)


def onnx_scores(path: str | Path, batches: Batches, *, threads: int, head: Head | None = None) -> dict[str, float]:
    """The task's metrics (``head``'s; default: a classifier's accuracy and F1) of an ONNX graph on batches carrying their targets."""
    head = head or Logits("accuracy")
    session = ort_session(path, threads=threads)
    outputs = [session.run([head.output_name], ort_feed(session, batch))[0] for batch in batches]
    return head.scores(np.concatenate(outputs), batches)


DEFAULT_LATENCY = LatencyConfig()
"""The ``latency`` section's defaults: ONNX Runtime, 2 threads, 10 warm-up calls, 10 rounds of 100 timed calls."""

def deploy_and_measure(
    model: PreTrainedModel,
    *,
    dev: Batches,
    test: Batches,
    latency_inputs: Sequence[Mapping[str, torch.Tensor]],
    references: Mapping[str, LatencyProbe] | None = None,
    latency: LatencyConfig = DEFAULT_LATENCY,
    workdir: Path,
    scoring_threads: int | None = None,
    head: Head | None = None,
) -> Deployment:
    """Lower (for ``onnxruntime``), verify on ``dev``, score on ``test``, then time ``model`` beside ``references``.

    ``latency`` (the config's ``latency`` section) names the backend, its
    threads and the timing budget (warm-up, repeats, rounds). Its threads are
    the deployment target's, used for timing; verification and scoring run
    with ``scoring_threads`` (default: the same), a parallel worker's share of
    the machine.

    ``references`` are probes of the models every ratio is taken against
    (e.g. ``{"teacher": ..., "int8": ...}``); the candidate and they share
    every timing round, so a noisy minute slows all of them alike.
    ``head`` (default: a classifier's logits) reads, scores and verifies the
    task's output; its ``metric`` (``task.metric``) is among the scores.
    """
    head = head or Logits("accuracy")
    threads = latency.threads
    budget = {"warmup": latency.warmup, "repeats": latency.repeats, "rounds": latency.rounds}
    timing = dict(references or {})
    if CANDIDATE in timing:
        raise ValueError(f"reference name {CANDIDATE!r} is reserved for the model being measured")
    scored = deploy_and_score(model, backend=latency.backend, dev=dev, test=test, threads=threads,
                              scoring_threads=scoring_threads or threads, workdir=workdir, head=head)
    timing[CANDIDATE] = scored.probe
    paired = measure_paired(timing, latency_inputs, candidate=CANDIDATE, **budget)
    return Deployment(
        latency=paired,
        dev_accuracy=scored.dev.get("accuracy"),
        test_accuracy=scored.test.get("accuracy"),
        simulated_dev_score=scored.simulated_dev_score,
        artifact=scored.artifact,
        artifact_bytes=shipped_bytes(scored.artifact) if scored.artifact is not None else None,
        check=scored.check,
        lowering=scored.lowering,
        scores=split_scores("dev", scored.dev) | split_scores("test", scored.test),
    )


@dataclass(frozen=True)
class Scored:
    """A model made ready on the latency backend and scored on dev and test: what a trial and the references both need."""

    probe: LatencyProbe
    """Times what ships: the lowered ONNX file on ONNX Runtime, or the torch model itself."""
    dev: dict[str, float]
    test: dict[str, float]
    simulated_dev_score: float
    """``head.metric`` of the torch simulation on dev (the lowered graph was verified against it)."""
    artifact: Path | None = None
    check: VerifyReport | None = None
    lowering: LoweringReport | None = None


def deploy_and_score(
    model: PreTrainedModel, *, backend: str, dev: Batches, test: Batches, threads: int, scoring_threads: int, workdir: Path, head: Head
) -> Scored:
    """On ``onnxruntime``: lower, verify and score on dev (``deploy``), score the artifact on test; on ``torch``: score the
    model itself. The probe times with ``threads``, scoring uses ``scoring_threads``."""
    if backend == "torch":
        with cores(torch.get_num_threads()):
            dev_scores, test_scores = (model_scores(model, list(split), head=head) for split in (dev, test))
        return Scored(TorchProbe(model, threads=threads), dev_scores, test_scores, dev_scores[head.metric])
    with cores(scoring_threads) as held:
        report, check = deploy(model, dev=dev, threads=held, workdir=workdir, head=head)
        test_scores = onnx_scores(report.path, test, threads=held, head=head)
    return Scored(OrtProbe(report.path, threads=threads), check.onnx_scores, test_scores, check.torch_scores[head.metric],
                  Path(report.path), check, report)

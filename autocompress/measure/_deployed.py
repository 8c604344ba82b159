"""Measure what would really be deployed: the lowered ONNX artifact, or the torch model.

With the ONNX Runtime backend the compressed model is exported, its
quantization lowered to ORT's integer kernels, the artifact checked against
the torch simulation on the whole validation split (a mismatch raises), and
only then timed. Accuracy is the artifact's own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel

from autocompress.measure._accuracy import accuracy
from autocompress.measure._latency import LatencyResult, OrtProbe, TorchProbe
from autocompress.runtime import LoweringReport, VerifyReport, export_onnx, lower, verify


@dataclass(frozen=True)
class Deployment:
    """A timed artifact: its latency, its accuracy, and (for ONNX) its file and check."""

    latency: LatencyResult
    accuracy: float
    simulated_accuracy: float
    artifact: Path | None = None
    artifact_bytes: int | None = None
    check: VerifyReport | None = None
    lowering: LoweringReport | None = None


EXACT_NBITS = 0
"""MatMulNBits accuracy level 0: float math on the dequantized weights, exactly the simulation.
Level 4 (int8 activations) was ~15 % faster here but drifts from the simulation."""


def deploy(
    model: PreTrainedModel, *, validation: Sequence[Mapping[str, torch.Tensor]], threads: int, workdir: Path
) -> tuple[LoweringReport, VerifyReport]:
    """Export, lower to ORT kernels and verify against torch on ``validation``; the artifact is ``workdir/model.onnx``."""
    workdir.mkdir(parents=True, exist_ok=True)
    example = {k: v[:2] for k, v in validation[0].items() if k != "labels"}
    exported = export_onnx(model, workdir / "model.fp32.onnx", example=example)
    report = lower(model, exported, workdir / "model.onnx", accuracy_level=EXACT_NBITS)
    exported.unlink()
    return report, verify(report.path, model, validation, threads=threads)


def deploy_and_measure(
    model: PreTrainedModel,
    *,
    latency_inputs: Sequence[Mapping[str, torch.Tensor]],
    validation: Sequence[Mapping[str, torch.Tensor]],
    backend: str,
    threads: int,
    warmup: int,
    repeats: int,
    workdir: Path,
) -> Deployment:
    """Lower (for ``onnxruntime``), verify, then time ``model`` at batch 1 on real sentences."""
    if backend == "torch":
        timing = TorchProbe(model, threads=threads).measure(latency_inputs, warmup=warmup, repeats=repeats)
        simulated = accuracy(model, list(validation))
        return Deployment(latency=timing, accuracy=simulated, simulated_accuracy=simulated)
    report, check = deploy(model, validation=validation, threads=threads, workdir=workdir)
    timing = OrtProbe(report.path, threads=threads).measure(latency_inputs, warmup=warmup, repeats=repeats)
    return Deployment(
        latency=timing,
        accuracy=check.onnx_accuracy,
        simulated_accuracy=check.torch_accuracy,
        artifact=Path(report.path),
        artifact_bytes=report.file_bytes,
        check=check,
        lowering=report,
    )

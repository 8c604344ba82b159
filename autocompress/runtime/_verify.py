"""Check that an ONNX Runtime graph computes what the torch simulation computes.

Like Optimum's exporter check: run both on the same real batches and compare
logits and accuracy, and refuse (``LoweringMismatch``) when they disagree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from transformers import PreTrainedModel


class LoweringMismatch(RuntimeError):
    """The ONNX graph's outputs disagree with the torch model beyond tolerance."""


def ort_session(path: str | Path, *, threads: int) -> ort.InferenceSession:
    """A CPU session with fixed intra-op threads, one inter-op thread, sequential, all graph optimizations."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_feed(session: ort.InferenceSession, batch: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The session's inputs taken from a tokenizer batch, as int64 arrays."""
    return {i.name: np.asarray(batch[i.name], dtype=np.int64) for i in session.get_inputs()}


@dataclass(frozen=True)
class VerifyReport:
    """Agreement between the ONNX graph and the torch model on real batches."""

    n: int
    max_abs_diff: float
    max_abs_logit: float
    torch_accuracy: float
    onnx_accuracy: float
    argmax_agreement: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def verify(
    onnx_path: str | Path,
    model: PreTrainedModel,
    batches: Sequence[Mapping[str, torch.Tensor]],
    *,
    max_accuracy_drop: float = 0.005,
    atol: float = 1e-3,
    rtol: float = 0.2,
    threads: int = 2,
) -> VerifyReport:
    """Run ONNX Runtime and torch on ``batches`` (dicts with ``labels``); raise ``LoweringMismatch`` on disagreement.

    Logits are close when ``max|onnx - torch| <= atol + rtol * max|torch|``.
    The relative term leaves room for the run-time int8 rounding of
    activations (per tensor in MatMulInteger layers, ~13 % of the largest
    logit on MiniLM; per block in MatMulNBits at accuracy_level 4), which the
    weight-only torch simulation does not do; a wrong scale or packing moves
    logits by their own magnitude. Pass ``rtol=0`` to demand exact agreement.
    Accuracies may differ by at most ``max_accuracy_drop`` in either direction.
    """
    if not batches:
        raise ValueError("batches is empty; verify needs at least one batch of real inputs with labels")
    session = ort_session(onnx_path, threads=threads)
    torch_logits, onnx_logits, labels = [], [], []
    model.eval()
    for batch in batches:
        if "labels" not in batch:
            raise ValueError(f"every batch needs 'labels'; got keys {sorted(batch)}")
        feed = ort_feed(session, batch)
        with torch.no_grad():
            torch_logits.append(model(**{name: batch[name] for name in feed}).logits.numpy())
        onnx_logits.append(session.run(["logits"], feed)[0])
        labels.append(np.asarray(batch["labels"]))
    reference, lowered, truth = np.concatenate(torch_logits), np.concatenate(onnx_logits), np.concatenate(labels)
    report = VerifyReport(
        n=len(truth),
        max_abs_diff=float(np.abs(lowered - reference).max()),
        max_abs_logit=float(np.abs(reference).max()),
        torch_accuracy=float((reference.argmax(-1) == truth).mean()),
        onnx_accuracy=float((lowered.argmax(-1) == truth).mean()),
        argmax_agreement=float((reference.argmax(-1) == lowered.argmax(-1)).mean()),
    )
    bound = atol + rtol * report.max_abs_logit
    if report.max_abs_diff > bound:
        raise LoweringMismatch(
            f"{onnx_path}: logits differ from torch by up to {report.max_abs_diff:.3g} > {bound:.3g} "
            f"(atol={atol} + rtol={rtol} * max|logit| {report.max_abs_logit:.3g})"
        )
    if abs(report.onnx_accuracy - report.torch_accuracy) > max_accuracy_drop:
        raise LoweringMismatch(
            f"{onnx_path}: accuracy {report.onnx_accuracy:.4f} vs torch {report.torch_accuracy:.4f} on {report.n} "
            f"examples differs by more than max_accuracy_drop={max_accuracy_drop}"
        )
    return report

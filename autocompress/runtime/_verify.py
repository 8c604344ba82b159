"""Check that an ONNX Runtime graph computes what the torch simulation computes.

Like Optimum's exporter check: run both on the same real batches and compare
their outputs (logits, embeddings: the task head's) and scores, and refuse
(``LoweringMismatch``) when they disagree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from transformers import PreTrainedModel

from autocompress.tasks.heads import Head, Logits

MATMUL_INTEGER_RTOL = 0.2
"""Relative output tolerance for graphs with MatMulInteger layers (see ``verify``); others must be exact."""


class LoweringMismatch(RuntimeError):
    """The ONNX graph's outputs disagree with the torch model beyond tolerance."""


def ort_session(path: str | Path, *, threads: int, spinning: bool = True) -> ort.InferenceSession:
    """A CPU session with fixed intra-op threads, one inter-op thread, sequential, all graph optimizations.

    ``spinning=False`` stops its idle worker threads from busy-waiting
    (``session.intra_op.allow_spinning``): sessions timed in turn on the same
    cores need it, or one session's spinning threads slow the next one down.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_feed(session: ort.InferenceSession, batch: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The session's inputs taken from a tokenizer batch, as int64 arrays."""
    return {i.name: np.asarray(batch[i.name], dtype=np.int64) for i in session.get_inputs()}


@dataclass(frozen=True)
class VerifyReport:
    """Agreement between the ONNX graph and the torch model on real batches."""

    n: int
    max_abs_diff: float
    max_abs_output: float
    agreement: float
    """The head's: the share of rows predicting the same class, or the lowest cosine between two embeddings of a row."""
    torch_scores: dict[str, float] = field(default_factory=dict)
    onnx_scores: dict[str, float] = field(default_factory=dict)
    """The task's metrics on these batches, of the simulation and of the ONNX graph (``head.scores``)."""

    def to_dict(self) -> dict[str, float | int | dict[str, float]]:
        return asdict(self)


def rounds_activations(onnx_path: str | Path) -> bool:
    """Whether the graph rounds activations to integers at run time (MatMulInteger, or MatMulNBits at accuracy_level > 0)."""
    for node in onnx.load(str(onnx_path), load_external_data=False).graph.node:
        level = next((a.i for a in node.attribute if a.name == "accuracy_level"), 0)
        if node.op_type == "MatMulInteger" or (node.op_type == "MatMulNBits" and level > 0):
            return True
    return False


def verify(
    onnx_path: str | Path,
    model: PreTrainedModel,
    batches: Sequence[Mapping[str, torch.Tensor]],
    *,
    max_accuracy_drop: float = 0.005,
    atol: float = 1e-4,
    rtol: float | None = None,
    threads: int = 2,
    head: Head | None = None,
) -> VerifyReport:
    """Run ONNX Runtime and torch on ``batches`` (with the targets of ``head``, default a classifier's ``labels``); raise
    ``LoweringMismatch`` on disagreement.

    Outputs are close when ``max|onnx - torch| <= atol + rtol * max|torch|``;
    then the head judges the rest (``Head.mismatch``): accuracies may differ by
    at most ``max_accuracy_drop`` in either direction, each embedding's cosine
    with torch's must stay within the head's tolerance. The report scores both
    on the task's metrics (``head.metric`` among them), so a trial needs no second pass.

    What the kernels allow, measured on all-MiniLM-L6-v2 over the search's
    1,000 dev sentences (SST-2, batches of 64, 2 threads; ORT 1.32, torch 2.13):

    - Without 8-bit per-channel layers (MatMulNBits at accuracy_level 0 with
      2, 4 or 8 bits per channel or in groups of 32, fp16 weights, the int8 and
      4-bit embedding tables, mixes of them, structurally shrunk models): float
      math on the very codes, at most 7e-6 apart with logits up to 4.
      ``rtol=0`` demands that, with ``atol=1e-4`` a 14x margin.
    - With 8-bit per-channel layers (DynamicQuantizeLinear + MatMulInteger):
      each layer, given the same input, matches the simulation (which rounds
      activations to uint8 as ORT does) to 1e-6 of its output, but the whole
      model does not, and cannot: float noise of 1e-7 between torch and ORT
      flips a few uint8 roundings and every later 8-bit layer amplifies them
      (in torch alone, a 1e-6 relative nudge to the embeddings moves logits by
      0.1-0.4). Measured max|onnx - torch| / max|logit|: 0.078 with every
      layer at 8 bits on a fine-tuned teacher (0.044 at 50 % sparsity, 0.037
      shrunk, 0.005 with 7 of the 36 layers at 8 bits; argmax agreement
      >= 99.5 %, accuracy within 0.001); up to 0.18 on a random head.

    ``rtol=None`` (the default) picks by the graph: 0 (exact to ``atol``) unless
    it rounds activations at run time (``rounds_activations``: MatMulInteger,
    or MatMulNBits above accuracy_level 0), then ``MATMUL_INTEGER_RTOL`` = 0.2
    (2.6x the teacher's worst); a wrong scale or packing moves logits by about their
    own magnitude and is caught either way.
    Dropping the activation rounding from the simulation moves whole-model
    logits by only 0.17-0.22 of max|logit| on the teacher, about what the
    flips do, so this check barely or never sees it: it is tested per layer
    (``test_int8_per_channel_layers_lower_exactly``).
    """
    head = head or Logits("accuracy")
    if not batches:
        raise ValueError("batches is empty; verify needs at least one batch of real inputs with their targets")
    missing = [name for name in head.target_names if name not in batches[0]]
    if missing:
        raise ValueError(f"every batch needs {missing}; got keys {sorted(batches[0])}")
    session = ort_session(onnx_path, threads=threads)
    rounding = rounds_activations(onnx_path)
    if rtol is None:
        rtol = MATMUL_INTEGER_RTOL if rounding else 0.0
    simulated, deployed = [], []
    model.eval()
    for batch in batches:
        feed = ort_feed(session, batch)
        with torch.no_grad():
            simulated.append(head(model, batch).numpy())
        deployed.append(session.run([head.output_name], feed)[0])
    reference, lowered = np.concatenate(simulated), np.concatenate(deployed)
    report = VerifyReport(
        n=len(reference),
        max_abs_diff=float(np.abs(lowered - reference).max()),
        max_abs_output=float(np.abs(reference).max()),
        agreement=head.agreement(reference, lowered),
        torch_scores=head.scores(reference, batches),
        onnx_scores=head.scores(lowered, batches),
    )
    bound = atol + rtol * report.max_abs_output
    if report.max_abs_diff > bound:
        raise LoweringMismatch(
            f"{onnx_path}: {head.output_name} differ from torch by up to {report.max_abs_diff:.3g} > {bound:.3g} "
            f"(atol={atol} + rtol={rtol} * max|output| {report.max_abs_output:.3g})"
        )
    problem = head.mismatch(report.torch_scores, report.onnx_scores, report.agreement, rounds_activations=rounding, max_drop=max_accuracy_drop)
    if problem is not None:
        raise LoweringMismatch(f"{onnx_path}: {problem} on {report.n} examples")
    return report

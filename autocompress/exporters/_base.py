"""The plug-in interface of every export format, and the check each one runs on its own output.

An exporter starts from a ``Source``: the policy and the models it builds,
rebuilt as the trial built them, and the task's head. It writes its files,
reloads them in the target tool, and compares that tool's outputs (logits,
sentence embeddings) on the dev batches with the source's; only then does it
report success. A policy the format
cannot express raises ``NotExpressible`` before anything is written.
"""

from __future__ import annotations

import copy
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from transformers import PreTrainedModel

from autocompress.models.loading import copy_tokenizer
from autocompress.policy import Policy
from autocompress.tasks.heads import Head, Logits
from autocompress.techniques import Quantization, Technique, compress, float_techniques

Batches = Sequence[Mapping[str, torch.Tensor]]
MAX_ACCURACY_DROP = 0.005
"""An export may move dev accuracy by at most half a point from its source's (an embedding: its head's cosine tolerance)."""


class NotExpressible(ValueError):
    """The policy uses something the target format cannot express; the message names it."""


class ExportMismatch(RuntimeError):
    """The exported output, reloaded in its tool, disagrees with the source beyond the format's tolerance."""


@dataclass
class Source:
    """What every exporter starts from.

    ``float_model`` has the policy's structure, pruning and recovery, in
    float: what other tools quantize themselves. ``model`` is it with the
    policy's quantization simulated: what autocompress measured.
    """

    policy: Policy
    float_model: PreTrainedModel
    model: PreTrainedModel
    tokenizer_dir: Path
    dev: Batches
    head: Head = field(default_factory=lambda: Logits("accuracy"))
    """How the task reads and scores the models' outputs."""

    @classmethod
    def build(
        cls,
        teacher: PreTrainedModel,
        policy: Policy,
        *,
        dev: Batches,
        tokenizer_dir: Path,
        calibration: Mapping[str, torch.Tensor] | None = None,
        recovery: Technique | None = None,
        prepare: Callable[[type[Technique]], Technique] | None = None,
        head: Head | None = None,
    ) -> Source:
        """Apply ``policy`` to ``teacher`` with the search's techniques, in its order (seed the caller's RNG as the trial did).

        ``prepare`` builds the techniques that need the task's data, as ``float_techniques`` says.
        """
        techniques = float_techniques(policy, prepare=prepare, recovery=recovery)
        float_model = compress(teacher, policy, techniques=techniques, calibration=calibration)
        return cls.from_float(float_model, policy, dev=dev, tokenizer_dir=tokenizer_dir, head=head)

    @classmethod
    def from_float(
        cls, float_model: PreTrainedModel, policy: Policy, *, dev: Batches, tokenizer_dir: Path, head: Head | None = None
    ) -> Source:
        """From ``float_model``, the policy's float techniques already applied (a trial's kept weights): quantize it as the trial did."""
        model = compress(float_model, policy, techniques=(Quantization(),))
        return cls(policy, float_model.eval(), model, Path(tokenizer_dir), dev, head or Logits("accuracy"))

    @cached_property
    def outputs(self) -> np.ndarray:
        """The source model's outputs on ``dev`` (the simulation autocompress measured)."""
        return self.head.outputs(self.model, self.dev)

    @cached_property
    def scores(self) -> dict[str, float]:
        """The task's metrics of the source on ``dev``."""
        return self.head.scores(self.outputs, self.dev)

    @cached_property
    def float_activation_outputs(self) -> np.ndarray:
        """``model``'s outputs without the run-time activation rounding of its 8-bit per-channel layers: what a float runtime computes."""
        from autocompress.techniques.quantizer import float_activations

        with float_activations():
            return self.head.outputs(self.model, self.dev)

    def float_copy(self) -> PreTrainedModel:
        """A fresh copy of ``float_model`` that a tool may quantize in place."""
        return copy.deepcopy(self.float_model)

    def write_common(self, folder: Path) -> list[str]:
        """``policy.json`` and the tokenizer files, which every format ships beside its model."""
        folder.mkdir(parents=True, exist_ok=True)
        self.policy.save(folder / "policy.json")
        return ["policy.json", *copy_tokenizer(self.tokenizer_dir, folder)]


@dataclass(frozen=True)
class ExportReport:
    """What an exporter wrote and how its reloaded output compared with the source on the dev batches."""

    format: str
    folder: str
    files: list[str]
    rows: int
    metric: str
    """The task's searched metric (``task.metric``), which ``score`` and ``source_score`` are."""
    score: float
    source_score: float
    agreement: float
    """The head's: the share of dev rows where the reloaded output predicts the source's class, or the lowest cosine of an embedding with the source's."""
    max_abs_diff: float
    """Largest absolute difference of an output value (logit, embedding component) from the source's."""
    tolerance: float
    notes: list[str] = field(default_factory=list)
    origin: dict[str, Any] = field(default_factory=dict)
    """Where the model came from (``autocompress export`` fills it: study and trial, run or policy file, what its trial measured)."""

    def save(self) -> Path:
        path = Path(self.folder) / "export_report.json"
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    def line(self) -> str:
        return (f"{self.format}: {self.folder} | {self.metric} {self.score:.4f} vs source {self.source_score:.4f} on {self.rows} dev rows | "
                f"agreement {self.agreement:.4f} | max |Δoutput| {self.max_abs_diff:.2e} (tolerance {self.tolerance:g})")


class Exporter(ABC):
    """One export format: ``check`` refuses what it cannot express, ``export`` writes and verifies.

    ``tolerance`` is the largest absolute output difference from the source
    the format accepts: tiny where it reproduces the source's arithmetic,
    larger where the target tool rounds weights or activations its own way.
    """

    name: ClassVar[str]
    tolerance: ClassVar[float]
    tasks: ClassVar[tuple[str, ...]] = ("sequence-classification",)
    """The tasks (``task.type``) whose models this format holds."""

    def tolerance_for(self, source: Source, files: Path) -> float:
        """The tolerance for this source and written output; formats whose error depends on the graph override it."""
        return self.tolerance

    def reference(self, source: Source) -> np.ndarray:
        """The outputs the export must reproduce: the simulation's, unless a format computes otherwise by design."""
        return source.outputs

    def check(self, policy: Policy) -> None:  # noqa: B027 - formats that express every policy keep this
        """Raise ``NotExpressible`` naming what ``policy`` uses that this format cannot hold."""

    def check_task(self, policy: Policy) -> None:
        """Raise ``NotExpressible`` when the policy's task is not one this format holds."""
        if policy.task not in self.tasks:
            raise NotExpressible(f"the {self.name} format holds {' and '.join(self.tasks)} models, not {policy.task}")

    @abstractmethod
    def write(self, source: Source, folder: Path) -> tuple[list[str], np.ndarray, list[str]]:
        """Write the format into ``folder``; return its files, the reloaded output's outputs on ``source.dev``, and notes."""

    def export(self, source: Source, folder: Path, *, origin: dict[str, Any] | None = None) -> ExportReport:
        """Write, reload and compare; the report (``export_report.json``) records ``origin``, where the model was found."""
        self.check_task(source.policy)
        self.check(source.policy)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        files, outputs, notes = self.write(source, folder)
        report = compare(self.name, folder, source, outputs, tolerance=self.tolerance_for(source, folder),
                         files=[*source.write_common(folder), *files], notes=notes, reference=self.reference(source))
        report = replace(report, origin=origin or {})
        report.save()
        return report


def compare(
    name: str, folder: Path, source: Source, outputs: np.ndarray, *, tolerance: float, files: list[str], notes: list[str],
    reference: np.ndarray | None = None,
) -> ExportReport:
    """The report of ``outputs`` against ``reference`` (the source's outputs by default).

    Raises ``ExportMismatch`` beyond the tolerance, or where the task's head
    finds the scores or the agreement off (half a point of accuracy; an
    embedding's cosine with the source's).
    """
    reference = source.outputs if reference is None else reference
    if outputs.shape != reference.shape:
        raise ExportMismatch(f"{name}: the reloaded output has shape {outputs.shape}, the source's {reference.shape}")
    head = source.head
    scores, reference_scores = head.scores(outputs, source.dev), head.scores(reference, source.dev)
    report = ExportReport(
        format=name, folder=str(folder), files=sorted(set(files)), rows=len(reference), metric=head.metric,
        score=scores[head.metric], source_score=reference_scores[head.metric], agreement=head.agreement(reference, outputs),
        max_abs_diff=float(np.abs(outputs - reference).max()), tolerance=tolerance, notes=notes,
    )  # fmt: skip
    if report.max_abs_diff > tolerance:
        raise ExportMismatch(f"{name}: reloaded {head.output_name} differ from the source's by up to {report.max_abs_diff:.3g} (tolerance {tolerance:g})")
    problem = head.mismatch(reference_scores, scores, report.agreement, rounds_activations=True, max_drop=MAX_ACCURACY_DROP, drop_only=True)
    if problem is not None:
        raise ExportMismatch(f"{name}: {problem}")
    return report


def torch_outputs(model: PreTrainedModel, source: Source) -> np.ndarray:
    """The outputs of a torch model (a reloaded export) on the source's dev batches, read by the source's head."""
    return source.head.outputs(model, source.dev)


def quantized_layers(source: Source) -> dict[str, Any]:
    """The Linear layers the policy quantizes, by name in ``source.model``, with their ``QuantizedWeight``."""
    from autocompress.techniques.quantizer import QUANT_ATTR

    return {name: getattr(m, QUANT_ATTR) for name, m in source.model.named_modules() if isinstance(m, torch.nn.Linear) and hasattr(m, QUANT_ATTR)}

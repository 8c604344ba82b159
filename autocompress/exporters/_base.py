"""The plug-in interface of every export format, and the check each one runs on its own output.

An exporter starts from a ``Source``: the policy and the models it builds,
rebuilt as the trial built them. It writes its files, reloads them in the
target tool, and compares that tool's predictions on labelled dev batches
with the source's; only then does it report success. A policy the format
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
from autocompress.techniques import Quantization, Technique, compress, float_techniques

Batches = Sequence[Mapping[str, torch.Tensor]]
MAX_ACCURACY_DROP = 0.005
"""An export may lose at most half a point of dev accuracy against its source."""


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
    ) -> Source:
        """Apply ``policy`` to ``teacher`` with the search's techniques, in its order (seed the caller's RNG as the trial did).

        ``prepare`` builds the techniques that need the task's data, as ``float_techniques`` says.
        """
        techniques = float_techniques(policy, prepare=prepare, recovery=recovery)
        float_model = compress(teacher, policy, techniques=techniques, calibration=calibration)
        return cls.from_float(float_model, policy, dev=dev, tokenizer_dir=tokenizer_dir)

    @classmethod
    def from_float(cls, float_model: PreTrainedModel, policy: Policy, *, dev: Batches, tokenizer_dir: Path) -> Source:
        """From ``float_model``, the policy's float techniques already applied (a trial's kept weights): quantize it as the trial did."""
        model = compress(float_model, policy, techniques=(Quantization(),))
        return cls(policy, float_model.eval(), model, Path(tokenizer_dir), dev)

    @cached_property
    def labels(self) -> np.ndarray:
        return torch.cat([batch["labels"] for batch in self.dev]).numpy()

    @cached_property
    def logits(self) -> np.ndarray:
        """The source model's logits on ``dev`` (the simulation autocompress measured)."""
        return torch_logits(self.model, self.dev)

    @property
    def accuracy(self) -> float:
        return float((self.logits.argmax(-1) == self.labels).mean())

    @cached_property
    def float_activation_logits(self) -> np.ndarray:
        """``model``'s logits without the run-time activation rounding of its 8-bit per-channel layers: what a float runtime computes."""
        from autocompress.techniques.quantizer import float_activations

        with float_activations():
            return torch_logits(self.model, self.dev)

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
    accuracy: float
    source_accuracy: float
    agreement: float
    """Share of dev rows where the reloaded output predicts the source's label."""
    max_abs_logit_diff: float
    tolerance: float
    notes: list[str] = field(default_factory=list)
    origin: dict[str, Any] = field(default_factory=dict)
    """Where the model came from (``autocompress export`` fills it: study and trial, run or policy file, what its trial measured)."""

    def save(self) -> Path:
        path = Path(self.folder) / "export_report.json"
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    def line(self) -> str:
        return (f"{self.format}: {self.folder} | accuracy {self.accuracy:.4f} vs source {self.source_accuracy:.4f} on {self.rows} dev rows | "
                f"same prediction on {100 * self.agreement:.1f} % | max |Δlogit| {self.max_abs_logit_diff:.2e} (tolerance {self.tolerance:g})")


class Exporter(ABC):
    """One export format: ``check`` refuses what it cannot express, ``export`` writes and verifies.

    ``tolerance`` is the largest absolute logit difference from the source
    the format accepts: tiny where it reproduces the source's arithmetic,
    larger where the target tool rounds weights or activations its own way.
    """

    name: ClassVar[str]
    tolerance: ClassVar[float]

    def tolerance_for(self, source: Source, files: Path) -> float:
        """The tolerance for this source and written output; formats whose error depends on the graph override it."""
        return self.tolerance

    def reference(self, source: Source) -> np.ndarray:
        """The logits the output must reproduce: the simulation's, unless a format computes otherwise by design."""
        return source.logits

    def check(self, policy: Policy) -> None:  # noqa: B027 - formats that express every policy keep this
        """Raise ``NotExpressible`` naming what ``policy`` uses that this format cannot hold."""

    @abstractmethod
    def write(self, source: Source, folder: Path) -> tuple[list[str], np.ndarray, list[str]]:
        """Write the format into ``folder``; return its files, the reloaded output's logits on ``source.dev``, and notes."""

    def export(self, source: Source, folder: Path, *, origin: dict[str, Any] | None = None) -> ExportReport:
        """Write, reload and compare; the report (``export_report.json``) records ``origin``, where the model was found."""
        self.check(source.policy)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        files, logits, notes = self.write(source, folder)
        report = compare(self.name, folder, source, logits, tolerance=self.tolerance_for(source, folder),
                         files=[*source.write_common(folder), *files], notes=notes, reference=self.reference(source))
        report = replace(report, origin=origin or {})
        report.save()
        return report


def compare(
    name: str, folder: Path, source: Source, logits: np.ndarray, *, tolerance: float, files: list[str], notes: list[str],
    reference: np.ndarray | None = None,
) -> ExportReport:
    """The report of ``logits`` against ``reference`` (the source's logits by default).

    Raises ``ExportMismatch`` beyond the tolerance or half a point of accuracy below the reference's.
    """
    reference = source.logits if reference is None else reference
    if logits.shape != reference.shape:
        raise ExportMismatch(f"{name}: the reloaded output gives logits of shape {logits.shape}, the source {reference.shape}")
    predictions = logits.argmax(-1)
    report = ExportReport(
        format=name, folder=str(folder), files=sorted(set(files)), rows=len(source.labels),
        accuracy=float((predictions == source.labels).mean()), source_accuracy=float((reference.argmax(-1) == source.labels).mean()),
        agreement=float((predictions == reference.argmax(-1)).mean()),
        max_abs_logit_diff=float(np.abs(logits - reference).max()), tolerance=tolerance, notes=notes,
    )  # fmt: skip
    if report.max_abs_logit_diff > tolerance:
        raise ExportMismatch(f"{name}: reloaded logits differ from the source's by up to {report.max_abs_logit_diff:.3g} (tolerance {tolerance:g})")
    if report.accuracy < report.source_accuracy - MAX_ACCURACY_DROP:
        raise ExportMismatch(f"{name}: accuracy {report.accuracy:.4f} is more than 0.5 pt below the source's {report.source_accuracy:.4f}")
    return report


@torch.no_grad()
def torch_logits(model: PreTrainedModel, batches: Batches) -> np.ndarray:
    """Logits of a torch classifier on labelled batches (labels dropped)."""
    model.eval()
    return torch.cat([model(**{k: v for k, v in b.items() if k != "labels"}).logits for b in batches]).float().numpy()


def quantized_layers(source: Source) -> dict[str, Any]:
    """The Linear layers the policy quantizes, by name in ``source.model``, with their ``QuantizedWeight``."""
    from autocompress.techniques.quantizer import QUANT_ATTR

    return {name: getattr(m, QUANT_ATTR) for name, m in source.model.named_modules() if isinstance(m, torch.nn.Linear) and hasattr(m, QUANT_ATTR)}

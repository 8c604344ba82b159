"""The Task seam: what the engine needs to know about a task, in one small base class.

A task says how its data is read and split, what its teacher is (fine-tuned
once and cached, or the model as it is), its head (``heads``: how a model's
output is read, scored against the batches' targets, distilled and verified,
and what the ONNX graph's output is called), which metric the search
maximizes, what a latency probe feeds the model, and what exporters write
beside the weights for it (label names, pooling, a generation config). The search, rebuilding
and exporting ask the task named by ``task.type`` (``TASKS``); a new task is a
subclass in its own module and one line registering it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig

    from autocompress.config import SearchConfig
    from autocompress.tasks.data import Examples
    from autocompress.tasks.heads import Head
    from autocompress.tasks.teacher import Teacher, TeacherLocation

Batch = Mapping[str, "torch.Tensor"]


class Task(ABC):
    """One kind of task, for the search config ``config`` (its ``task`` section names the data and the metric).

    ``splits``: ``train`` (teacher and distillation), ``dev`` (every search
    decision) and ``test`` (the final report only, never read by the search).
    """

    name: ClassVar[str]
    """``task.type`` in a config and ``task`` in a policy."""
    layer_policy: ClassVar[bool] = True
    """Whether its searches write the per-layer ``Policy`` of ``autocompress.policy`` (a decoder's write a ``DecoderPolicy``)."""

    def __init__(self, config: SearchConfig) -> None:
        self.config = config

    @abstractmethod
    def load_split(self, split: str) -> Examples:
        """The rows of ``split`` (``train``, ``dev`` or ``test``), read and carved as the config says."""

    @abstractmethod
    def batches(self, examples: Examples, tokenizer: Any, *, batch_size: int) -> list[dict[str, torch.Tensor]]:
        """Tokenized batches of ``examples`` with the targets the task's metrics and losses read."""

    @abstractmethod
    def teacher(self) -> Teacher:
        """The model every policy compresses: fine-tuned (once, cached) or used as it is."""

    @abstractmethod
    def locate_teacher(self) -> TeacherLocation:
        """Where the teacher is (or will be) and whether it is ready, found without training."""

    @abstractmethod
    def head(self) -> Head:
        """How models of this task are read, scored, distilled and verified (``autocompress.tasks.heads``)."""

    @abstractmethod
    def check(self, model: PretrainedConfig) -> str:
        """Refuse, with a one-line ``ConfigError``, what this task cannot do with the data and ``model``'s config;
        return the task's line for ``--dry-run``."""

    @property
    def metric(self) -> str:
        """The metric the search maximizes (``task.metric``)."""
        return self.config.task.metric

    def latency_inputs(self, examples: Examples, tokenizer: Any, *, count: int) -> list[dict[str, torch.Tensor]]:
        """``count`` real inputs as a latency probe feeds them: one unpadded row each, or ``latency.batch_size`` rows padded together.

        Texts (or pairs) at evenly spaced length quantiles of ``examples``; a task whose model reads other inputs overrides it.
        """
        from autocompress.measurement import latency_inputs, pick_sentences

        batch = self.config.latency.batch_size
        sentences = pick_sentences(examples.inputs(), n=min(count * batch, len(examples)))  # (text, pair) tuples for a pair task
        return latency_inputs(tokenizer, sentences, max_length=self.config.task.max_length, batch_size=batch)

    @abstractmethod
    def export_metadata(self, teacher: Teacher) -> dict[str, Any]:
        """What exporters write beside the weights for this task (label names, ...), as config fields."""


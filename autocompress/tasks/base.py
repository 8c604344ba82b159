"""The Task seam: what the engine needs to know about a task, in one small base class.

A task says how its data is read and split, what its teacher is (fine-tuned
once and cached, or the model as it is), which metrics it records and which
one the search maximizes, what a latency probe feeds the model, which inputs
and outputs its ONNX graph has, and what exporters write beside the weights
for it (label names, pooling, a generation config). The search, rebuilding
and exporting ask the task named by ``task.type`` (``TASKS``); a new task is a
subclass in its own module and one line registering it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import numpy as np
    import torch

    from autocompress.config import SearchConfig
    from autocompress.tasks.data import Examples
    from autocompress.tasks.teacher import Teacher

Batch = Mapping[str, "torch.Tensor"]


class Task(ABC):
    """One kind of task, for the search config ``config`` (its ``task`` section names the data and the metric).

    ``splits``: ``train`` (teacher and distillation), ``dev`` (every search
    decision) and ``test`` (the final report only, never read by the search).
    """

    name: ClassVar[str]
    """``task.type`` in a config and ``task`` in a policy."""
    output_names: ClassVar[tuple[str, ...]]
    """The ONNX graph's outputs, in order."""

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
    def metric_names(self, teacher: Teacher) -> tuple[str, ...]:
        """Every metric recorded for this task; ``self.metric`` among them."""

    @property
    def metric(self) -> str:
        """The metric the search maximizes (``task.metric``)."""
        return self.config.task.metric

    @abstractmethod
    def scores(self, outputs: np.ndarray, targets: np.ndarray, *, teacher: Teacher) -> dict[str, float]:
        """Every metric of ``metric_names`` from the model's outputs and the batches' targets."""

    @abstractmethod
    def latency_inputs(self, examples: Examples, tokenizer: Any, *, count: int) -> list[dict[str, torch.Tensor]]:
        """``count`` real inputs as a latency probe feeds them: one unpadded row each."""

    @abstractmethod
    def export_metadata(self, teacher: Teacher) -> dict[str, Any]:
        """What exporters write beside the weights for this task (label names, ...), as config fields."""

    def input_names(self, batch: Batch) -> list[str]:
        """The ONNX graph's inputs: the batch's model inputs, without its targets."""
        return [name for name in batch if name not in self.target_names]

    target_names: ClassVar[Sequence[str]] = ()
    """Batch keys that hold targets, not model inputs."""

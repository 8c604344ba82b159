"""Task heads: what a model's output means for a task, read the same way in torch, in ONNX Runtime and in training.

A head reads the model's raw output into the task's one output tensor (a
classifier's logits, a pooled sentence embedding), names it in ONNX graphs,
scores a split's outputs against the targets its batches carry, gives the
distillation and calibration losses, and says how far a lowered graph may
drift from the torch simulation. Runtime, measurement and distillation call a
model only through a head, so a new task brings its own and nothing below it
changes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from autocompress.config import LABELLED_METRICS
from autocompress.distill import embedding_loss, kd_loss
from autocompress.models.families import TOKENIZER_INPUTS
from autocompress.models.pooling import Pooling, pool
from autocompress.tasks.embedding_metrics import bytes_per_vector, embedding_scores
from autocompress.tasks.evaluation_sets import EVAL_KIND, evaluation_scores
from autocompress.tasks.metrics import classification_scores

if TYPE_CHECKING:
    from autocompress.config import RecoveryConfig
    from autocompress.policy import Policy

Batch = Mapping[str, torch.Tensor]


class Head(ABC):
    """How one task reads, scores, distils and verifies a model's output; ``metric`` is the one the search maximizes."""

    output_name: ClassVar[str]
    """The output's name in ONNX graphs."""
    target_names: ClassVar[tuple[str, ...]]
    """Batch keys that hold targets, not model inputs."""
    dropout: ClassVar[bool] = True
    """Whether the student trains with its dropout on while distilling."""

    def __init__(self, metric: str) -> None:
        self.metric = metric

    @staticmethod
    def inputs(batch: Batch) -> dict[str, torch.Tensor]:
        """The tokenizer inputs of ``batch``, without its targets."""
        return {name: batch[name] for name in TOKENIZER_INPUTS if name in batch}

    @abstractmethod
    def read(self, output: Any, inputs: Batch) -> torch.Tensor:
        """The task's output from the model's raw ``output`` on ``inputs``."""

    def __call__(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        inputs = self.inputs(batch)
        return self.read(model(**inputs), inputs)

    @torch.no_grad()
    def outputs(self, model: torch.nn.Module, batches: Sequence[Batch]) -> np.ndarray:
        """The outputs of ``model`` (in eval mode) on every batch, concatenated."""
        model.eval()
        return torch.cat([self(model, batch).float() for batch in batches]).numpy()

    def evaluate(self, model: torch.nn.Module, batches: Sequence[Batch]) -> dict[str, float]:
        """Every metric of the task for ``model`` on ``batches``."""
        return self.scores(self.outputs(model, batches), batches)

    @abstractmethod
    def scores(self, outputs: np.ndarray, batches: Sequence[Batch]) -> dict[str, float]:
        """Every metric of the task from ``outputs`` of ``batches`` and the targets they carry; ``self.metric`` among them."""

    @abstractmethod
    def loss(self, student: torch.Tensor, teacher: torch.Tensor, batch: Batch, settings: RecoveryConfig) -> torch.Tensor:
        """The distillation loss of the student's outputs against the teacher's on ``batch``."""

    @abstractmethod
    def calibration_loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """The loss whose gradients rank heads and neurons for structured pruning (first-order Taylor scores)."""

    def calibration(self, batch: Batch) -> Calibration:
        """``batch`` as the calibration batch techniques score importance on, with this head's loss."""
        return Calibration(batch, self)

    def metric_batches(self, batches: Sequence[Batch]) -> list[Batch]:
        """The batches ``self.metric`` alone needs (a distillation's early scoring reads nothing else): all of them by default."""
        return list(batches)

    def for_policy(self, policy: Policy) -> Head:
        """This head as ``policy`` asks to read the output (an index's precision); the same head unless a policy field says otherwise."""
        return self

    @abstractmethod
    def agreement(self, reference: np.ndarray, lowered: np.ndarray) -> float:
        """How closely a lowered graph's outputs follow the simulation's (1: the same)."""

    @abstractmethod
    def mismatch(self, reference: Mapping[str, float], lowered: Mapping[str, float], agreement: float, *, rounds_activations: bool,
                 max_drop: float, drop_only: bool = False) -> str | None:
        """Why a lowered graph's (or an export's) scores and agreement are not the reference's, or None when within tolerance.

        ``drop_only``: only scores below the reference's count (an export may not lose, a lowering may not drift either way).
        """


class Calibration(dict):
    """A batch of real training rows that carries its head: structured pruning ranks units by ``loss(model)``'s gradients."""

    def __init__(self, batch: Batch, head: Head) -> None:
        super().__init__(batch)
        self.head = head

    def loss(self, model: torch.nn.Module) -> torch.Tensor:
        return self.head.calibration_loss(model, self)


class Logits(Head):
    """Sequence classification: the logits; accuracy and F1 against ``labels``; Hinton KD."""

    output_name = "logits"
    target_names = ("labels",)

    def read(self, output: Any, inputs: Batch) -> torch.Tensor:
        return output.logits

    def scores(self, outputs: np.ndarray, batches: Sequence[Batch]) -> dict[str, float]:
        labels = np.concatenate([np.asarray(batch["labels"]) for batch in batches])
        return classification_scores(outputs.argmax(-1), labels, num_labels=outputs.shape[-1], metric=self.metric)

    def loss(self, student: torch.Tensor, teacher: torch.Tensor, batch: Batch, settings: RecoveryConfig) -> torch.Tensor:
        return kd_loss(student, teacher, batch["labels"], temperature=settings.temperature, alpha=settings.alpha)

    def calibration_loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """The model's own loss on the labels (cross-entropy)."""
        return model(**self.inputs(batch), labels=batch["labels"]).loss

    def agreement(self, reference: np.ndarray, lowered: np.ndarray) -> float:
        """The share of rows where both predict the same class."""
        return float((reference.argmax(-1) == lowered.argmax(-1)).mean())

    def mismatch(self, reference: Mapping[str, float], lowered: Mapping[str, float], agreement: float, *, rounds_activations: bool,
                 max_drop: float, drop_only: bool = False) -> str | None:
        drift = reference["accuracy"] - lowered["accuracy"] if drop_only else abs(lowered["accuracy"] - reference["accuracy"])
        if drift > max_drop:
            return f"accuracy {lowered['accuracy']:.4f} vs the reference's {reference['accuracy']:.4f} differs by more than {max_drop}"
        return None


EMBEDDING_TARGET = "teacher_embedding"
"""Batch key of the teacher's embedding of each row: what an embedding task's metrics compare against."""

EXACT_COSINE = 1e-5
"""Lowest cosine a lowered embedding may have with the simulation's is 1 - this, where the graph computes in float."""
ROUNDING_COSINE = 0.1
"""The same where the graph rounds activations to uint8 at run time (MatMulInteger): flipped roundings compound through
the blocks as they do for logits (``runtime.verify``). Measured on all-MiniLM-L6-v2 with every layer 8-bit per channel,
500 SST-2 texts: the lowest cosine 0.977; the elementwise bound of ``runtime.verify`` applies as well."""


class SentenceEmbedding(Head):
    """Sentence embeddings: the pooled (and normalized) last hidden state, scored against the teacher's embedding of each row."""

    output_name = "sentence_embedding"
    target_names = (EMBEDDING_TARGET,)
    dropout = False
    """A student starts next to its teacher's deterministic embeddings, and dropout noise pulls it away: measured on the
    packaged MiniLM at int8, 200 steps at 2e-5 moved dev cosine from 0.9905 to 0.9881 with dropout, to 0.9918 without."""

    def __init__(self, metric: str, pooling: Pooling, precision: str = "float32") -> None:
        super().__init__(metric)
        self.pooling = pooling
        self.precision = precision
        """How the index stores the outputs (``policy.output_precision``): neighbour recall is scored on the stored vectors."""

    def read(self, output: Any, inputs: Batch) -> torch.Tensor:
        return pool(output.last_hidden_state, inputs["attention_mask"], self.pooling)

    def for_policy(self, policy: Policy) -> SentenceEmbedding:
        return self if policy.output_precision == self.precision else SentenceEmbedding(self.metric, self.pooling, policy.output_precision)

    def scores(self, outputs: np.ndarray, batches: Sequence[Batch]) -> dict[str, float]:
        """Cosine and Spearman of the model's own outputs; recall@10 of what the index stores (``self.precision``); then
        the labelled sets' scores (``tasks.evaluation_sets``) from the rows of theirs that ``batches`` carry."""
        starts = np.cumsum([0, *(len(batch["input_ids"]) for batch in batches)])
        texts = [i for i, batch in enumerate(batches) if EVAL_KIND not in batch]
        own = np.concatenate([outputs[starts[i] : starts[i + 1]] for i in texts])
        teacher = np.concatenate([np.asarray(batches[i][EMBEDDING_TARGET], dtype=np.float32) for i in texts])
        scores = embedding_scores(own, teacher, metric="cosine" if self.metric in LABELLED_METRICS else self.metric, precision=self.precision)
        labelled = evaluation_scores(outputs, batches, precision=self.precision) if len(texts) < len(batches) else {}
        if self.metric not in scores | labelled:
            raise ValueError(f"the batches carry no {self.metric} set (task.{LABELLED_METRICS[self.metric]}) to score task.metric on")
        return scores | labelled

    def metric_batches(self, batches: Sequence[Batch]) -> list[Batch]:
        """A label-free metric reads only the split's own texts: the labelled sets' batches (a corpus, say) are left out."""
        return list(batches) if self.metric in LABELLED_METRICS else [batch for batch in batches if EVAL_KIND not in batch]

    def index_bytes(self, dim: int) -> int:
        """Bytes an index stores per vector of ``dim`` dimensions at this head's precision."""
        return bytes_per_vector(dim, self.precision)

    def loss(self, student: torch.Tensor, teacher: torch.Tensor, batch: Batch, settings: RecoveryConfig) -> torch.Tensor:
        return embedding_loss(student, teacher)

    def calibration_loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """Half the squared norm of the pooled embedding before normalization: the teacher is its own target, so a
        distance to it has no gradient; a unit's score is then how much it moves the output along the output itself."""
        inputs = self.inputs(batch)
        unnormalized = replace(self.pooling, normalize=False)
        return 0.5 * pool(model(**inputs).last_hidden_state, inputs["attention_mask"], unnormalized).pow(2).sum(-1).mean()

    def agreement(self, reference: np.ndarray, lowered: np.ndarray) -> float:
        """The lowest cosine between a row's two embeddings."""
        dot = (reference * lowered).sum(-1)
        norms = np.linalg.norm(reference, axis=-1) * np.linalg.norm(lowered, axis=-1)
        return float((dot / np.maximum(norms, 1e-12)).min())

    def mismatch(self, reference: Mapping[str, float], lowered: Mapping[str, float], agreement: float, *, rounds_activations: bool,
                 max_drop: float, drop_only: bool = False) -> str | None:
        tolerance = ROUNDING_COSINE if rounds_activations else EXACT_COSINE
        if agreement < 1 - tolerance:
            return f"an embedding's cosine with the reference's is {agreement:.6f} < {1 - tolerance:g}"
        return None

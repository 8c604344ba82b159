"""Recovery training as a technique: distil the teacher into the pruned model before it is quantized.

When the policy quantizes, the forward pass sees the weights on the very grid
the quantization step will use (straight-through estimator), so the model is
trained for the grid it will run on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from transformers import PreTrainedModel

from autocompress.config import RecoveryConfig
from autocompress.distill import RecoveryResult, kept_layer_map, recover
from autocompress.tasks.heads import Head, Logits
from autocompress.techniques._base import Technique

if TYPE_CHECKING:
    import optuna

    from autocompress.config import SpaceConfig
    from autocompress.policy import LayerSpec, Policy

Batch = Mapping[str, torch.Tensor]


class RecoveryStopped(RuntimeError):
    """The fidelity callback asked to stop: the candidate is not worth its full budget."""

    def __init__(self, result: RecoveryResult, metric: str = "accuracy") -> None:
        super().__init__(f"recovery stopped at step {result.steps} ({metric} {result.evaluations[-1][1]:.4f})")
        self.result = result


@dataclass(frozen=True)
class Distillation:
    """What every trial's recovery shares: the teacher, its cached outputs and the data, and the task's head."""

    teacher: PreTrainedModel
    train_batches: Sequence[Batch]
    teacher_logits: Sequence[torch.Tensor]
    """The teacher's outputs (the head's: logits, embeddings) on ``train_batches``."""
    eval_batches: Sequence[Batch]
    settings: RecoveryConfig
    head: Head = field(default_factory=lambda: Logits("accuracy"))
    """Reads, scores and distils the task's output; intermediate checks score its ``metric`` (``task.metric``), what the pruner compares."""


class Recovery(Technique):
    """A KD fine-tune of ``policy.recovery_steps`` steps; ``report(step, score) -> stop?`` sees progress on the task metric."""

    name = "recovery"
    stage = 40
    needs_data = True
    fields = {
        "recovery_steps": {"type": "integer", "minimum": 0, "default": 0,
                           "description": "distillation steps from the teacher after pruning, before quantization (see recovery); 0: none; "
                           "in a search, any value above 0 turns on the multi-fidelity pruner"},
    }

    @classmethod
    def sample(cls, trial: optuna.Trial, space: SpaceConfig, *, num_blocks: int) -> dict[str, Any]:
        return {"recovery_steps": trial.suggest_categorical("recovery_steps", space.recovery_steps)}

    def __init__(self, distillation: Distillation, *, report: Callable[[int, float], bool] | None = None) -> None:
        self.distillation = distillation
        self.report = report
        self.result: RecoveryResult | None = None

    def apply(
        self,
        model: PreTrainedModel,
        policy: Policy,
        plan: Mapping[str, LayerSpec],
        *,
        calibration: Batch | None = None,
    ) -> None:
        if policy.recovery_steps == 0:
            return
        kd, settings = self.distillation, self.distillation.settings
        self.result = recover(
            model,
            kd.teacher,
            kd.train_batches,
            steps=policy.recovery_steps,
            settings=settings,
            layer_map=kept_layer_map(policy.kept_blocks) if policy.kept_blocks is not None else None,
            teacher_logits=kd.teacher_logits,
            fake_quant={n: (s.bits, policy.group_size) for n, s in plan.items() if s.bits <= 8 and policy.scheme == "linear"},
            eval_batches=kd.eval_batches,
            report=self.report,
            head=kd.head,
        )
        if self.result.stopped_early:
            raise RecoveryStopped(self.result, kd.head.metric)

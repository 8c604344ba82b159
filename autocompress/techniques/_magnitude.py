"""Unstructured magnitude pruning, local (a ratio per layer) or global (one ratio).

The seed's rule: w' = w if |w| > θ else 0. Exactly ``round(ratio * n)`` weights
are zeroed (ties broken by position), so the zero fraction is what the policy
says. This saves storage only: no CPU runtime here has a sparse kernel.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from transformers import PreTrainedModel

from autocompress.techniques._base import Technique

if TYPE_CHECKING:
    import optuna

    from autocompress.config import SpaceConfig
    from autocompress.policy import LayerSpec, Policy


@torch.no_grad()
def prune_smallest_(weights: Iterable[torch.Tensor], ratio: float) -> None:
    """Zero the ``ratio`` fraction of smallest-magnitude entries across ``weights`` jointly."""
    weights = list(weights)
    if ratio <= 0 or not weights:
        return
    magnitudes = torch.cat([w.detach().abs().flatten() for w in weights])
    count = round(ratio * magnitudes.numel())
    if count == 0:
        return
    drop = torch.zeros(magnitudes.numel(), dtype=torch.bool)
    drop[torch.topk(magnitudes, count, largest=False, sorted=False).indices] = True
    start = 0
    for weight in weights:
        end = start + weight.numel()
        weight.masked_fill_(drop[start:end].view_as(weight), 0.0)
        start = end


class MagnitudePruning(Technique):
    """Local magnitude pruning per the plan's ratios, or global over all planned layers."""

    name = "magnitude_pruning"
    stage = 30
    fields = {
        "global_prune_ratio": {"type": "number", "minimum": 0, "exclusiveMaximum": 1, "default": 0,
                               "description": "magnitude pruning ranked across all layers (exclusive with per-layer prune_ratio)"},
    }

    @classmethod
    def check(cls, policy: Policy) -> None:
        super().check(policy)
        if policy.global_prune_ratio and any(spec.prune_ratio for spec in policy.layers.values()):
            raise ValueError("magnitude_pruning: use either global_prune_ratio or per-layer prune_ratio, not both")

    @classmethod
    def active(cls, policy: Policy) -> bool:
        return policy.global_prune_ratio > 0 or any(spec.prune_ratio for spec in policy.layers.values())

    @classmethod
    def sample(cls, trial: optuna.Trial, space: SpaceConfig, *, num_blocks: int) -> dict[str, Any]:
        from autocompress.config import PruneMode

        ratio = trial.suggest_categorical("global_prune_ratio", space.prune_ratios) if space.prune_mode is PruneMode.GLOBAL else 0.0
        return {"global_prune_ratio": ratio}

    def apply(
        self,
        model: PreTrainedModel,
        policy: Policy,
        plan: Mapping[str, LayerSpec],
        *,
        calibration: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        modules = dict(model.named_modules())
        if policy.global_prune_ratio:
            prune_smallest_((modules[name].weight for name in plan), policy.global_prune_ratio)
            return
        for name, spec in plan.items():
            prune_smallest_([modules[name].weight], spec.prune_ratio)

"""The structured-pruning technique: heads, FFN neurons and whole blocks, physically removed."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from transformers import PreTrainedModel

from autocompress.policy import LayerSpec, Policy
from autocompress.shrunk import shrink_
from autocompress.techniques._base import Technique


class StructuredPruning(Technique):
    """Keep the policy's heads / FFN width per block and its kept blocks (Taylor importance with calibration)."""

    name = "structured_pruning"

    def apply(
        self,
        model: PreTrainedModel,
        policy: Policy,
        plan: Mapping[str, LayerSpec],
        *,
        calibration: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        if policy.heads or policy.ffn or policy.kept_blocks is not None:
            shrink_(model, heads=policy.heads, ffn=policy.ffn, layers=policy.kept_blocks, calibration=calibration)

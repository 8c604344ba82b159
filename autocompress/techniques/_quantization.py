"""The quantization technique: per-layer weight bits, plus the word-embedding table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from transformers import PreTrainedModel

from autocompress.techniques._base import Technique
from autocompress.techniques.quantizer import quantize_embedding_, quantize_linear_

if TYPE_CHECKING:
    import optuna

    from autocompress.config import SpaceConfig
    from autocompress.policy import LayerSpec, Policy


class Quantization(Technique):
    """Simulated weight quantization with the policy's scheme and group size."""

    name = "quantization"
    stage = 50
    fields = {
        "scheme": {"enum": ["linear", "kmeans"], "default": "linear",
                   "description": "linear: symmetric integer grid with per-channel or per-group scales; kmeans: a codebook per layer"},
        "group_size": {"type": ["integer", "null"], "minimum": 1, "default": None,
                       "description": "weight columns sharing one scale (positive); null: one scale per output channel; "
                       "smaller groups: more accurate at low bits, a larger file"},
        "embedding_bits": {"enum": [4, 8, 32], "default": 32,
                           "description": "word-embedding table precision: 32 float; 4 or 8: integer codes with one scale per token row"},
    }

    @classmethod
    def active(cls, policy: Policy) -> bool:
        return policy.embedding_bits < 32 or any(spec.bits < 32 for spec in policy.layers.values())

    @classmethod
    def sample(cls, trial: optuna.Trial, space: SpaceConfig, *, num_blocks: int) -> dict[str, Any]:
        return {"scheme": trial.suggest_categorical("scheme", space.quant_scheme),
                "group_size": trial.suggest_categorical("group_size", space.group_size),
                "embedding_bits": trial.suggest_categorical("embedding_bits", space.embedding_bits)}

    def apply(
        self,
        model: PreTrainedModel,
        policy: Policy,
        plan: Mapping[str, LayerSpec],
        *,
        calibration: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        modules = dict(model.named_modules())
        for name, spec in plan.items():
            quantize_linear_(modules[name], spec.bits, scheme=policy.scheme, group_size=policy.group_size)
        if policy.embedding_bits < 32:
            quantize_embedding_(model.get_input_embeddings(), policy.embedding_bits)

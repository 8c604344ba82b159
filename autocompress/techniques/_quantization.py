"""The quantization technique: per-layer weight bits, plus the word-embedding table."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from transformers import PreTrainedModel

from autocompress.policy import LayerSpec, Policy
from autocompress.techniques._base import Technique
from autocompress.techniques.quantizer import quantize_embedding_, quantize_linear_


class Quantization(Technique):
    """Simulated weight quantization with the policy's scheme and group size."""

    name = "quantization"

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

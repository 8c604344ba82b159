"""Size in bytes of the artifact a compressed model would be stored as.

Each Linear weight costs its packed bits plus its scales (or its k-means
codebook), or, where cheaper, a sparse encoding: a one-bit occupancy bitmap
plus the packed non-zero values. Everything else (embeddings, norms, biases)
is float32, except a quantized embedding table (int8 codes + a scale per row).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from transformers import PreTrainedModel

from autocompress.policy import LayerSpec
from autocompress.quantizer import QUANT_ATTR

FLOAT_BYTES = 4


def linear_weight_bytes(weight: torch.Tensor, spec: LayerSpec, *, scheme: str, scale_count: int) -> float:
    """Bytes of one Linear weight at ``spec.bits``: dense or sparse, whichever is smaller."""
    numel = weight.numel()
    if spec.bits >= 16:
        overhead = 0.0
    elif scheme == "kmeans":
        overhead = FLOAT_BYTES * 2**spec.bits
    else:
        overhead = FLOAT_BYTES * scale_count
    dense = numel * spec.bits / 8
    nonzero = int(torch.count_nonzero(weight))
    sparse = numel / 8 + nonzero * spec.bits / 8
    return min(dense, sparse) + overhead


def model_size_bytes(model: PreTrainedModel, plan: Mapping[str, LayerSpec], *, scheme: str = "linear") -> int:
    """Storage of the whole model under the plan (current module names)."""
    total = 0.0
    counted: set[int] = set()
    modules = dict(model.named_modules())
    for name, spec in plan.items():
        linear = modules[name]
        quantized = getattr(linear, QUANT_ATTR, None)
        scales = quantized.scales.numel() if quantized is not None else linear.out_features
        total += linear_weight_bytes(linear.weight, spec, scheme=scheme, scale_count=scales)
        counted.add(id(linear.weight))
    embedding = model.get_input_embeddings()
    quantized = getattr(embedding, QUANT_ATTR, None)
    if quantized is not None:
        total += embedding.weight.numel() * quantized.bits / 8 + FLOAT_BYTES * quantized.scales.numel()
        counted.add(id(embedding.weight))
    total += sum(p.numel() * FLOAT_BYTES for p in model.parameters() if id(p) not in counted)
    return int(total)

"""A policy as the flat feature dict the cost model reads.

Per block ``i`` of the uncompressed model: whether it is kept, its heads and
FFN width, the fractions of its Linear layers on each ONNX Runtime kernel they
lower to (8-bit per channel: MatMulInteger; 8-bit in groups: MatMulNBits with
8 bits; 2/4 bits: MatMulNBits; 16 bits: fp16 weights cast at run time; the
rest float) and its mean sparsity; globally the mean input length, the
embedding bits and the embedding table's megabytes (bits x kept rows). The kernel, not the bit width, sets the speed: on AVX2 an
8-bit grouped layer runs about twice as slow as an 8-bit per-channel one.
Computed from the policy alone, so a candidate can be priced before it is
compressed.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

from transformers import PreTrainedModel

from autocompress.models.families import ffn_width
from autocompress.models.loading import block_linears
from autocompress.techniques.quantizer import runs_as_matmul_integer

if TYPE_CHECKING:
    from autocompress.policy import LayerSpec, Policy

FEATURES_VERSION = 3
"""Bumped whenever the features change meaning, so stored measurements of an older schema are not mixed in."""


def policy_features(policy: Policy, model: PreTrainedModel, *, seq_len: float) -> dict[str, float]:
    """Features of ``policy`` applied to ``model`` (the uncompressed teacher)."""
    config = model.config
    kept = set(policy.kept_blocks) if policy.kept_blocks is not None else None
    rows, dim = model.get_input_embeddings().weight.shape
    rows = min(rows, policy.vocab_rows or rows)
    features: dict[str, float] = {
        "seq_len": float(seq_len),
        "embedding_bits": float(policy.embedding_bits),
        "embedding_mb": rows * dim * policy.embedding_bits / 8e6,  # the table's weight bytes, what vocab_rows cuts
    }
    for index, linears in enumerate(block_linears(model)):
        specs = policy.resolve(linears)
        kernels = [_kernel(spec, policy, linears[name].in_features) for name, spec in specs.items()]
        count = len(kernels)
        key = f"layer{index}"
        features[f"{key}.kept"] = float(kept is None or index in kept)
        features[f"{key}.heads"] = float(policy.heads.get(index, config.num_attention_heads))
        features[f"{key}.ffn"] = float(policy.ffn.get(index, ffn_width(config)))
        for kernel in KERNELS:
            features[f"{key}.{kernel}"] = kernels.count(kernel) / count
        features[f"{key}.sparsity"] = sum(s.prune_ratio for s in specs.values()) / count + policy.global_prune_ratio
    return features


KERNELS = ("int8", "nbits8", "lowbit", "fp16", "float")


def _kernel(spec: LayerSpec, policy: Policy, in_features: int) -> str:
    """The kernel family a Linear under ``spec`` runs on (see ``autocompress.runtime``)."""
    if spec.bits >= 32 or policy.scheme != "linear":
        return "float"
    if spec.bits == 16:
        return "fp16"
    if runs_as_matmul_integer(spec.bits, policy.group_size, in_features):
        return "int8"
    return "nbits8" if spec.bits == 8 else "lowbit"


def architecture_id(model: PreTrainedModel) -> str:
    """Short hash of what a model's latency depends on besides the policy: its family and shapes.

    Cost-model samples are keyed by it, so a second model searched on the
    same machine never borrows the first one's measurements.
    """
    config = model.config
    shape = {
        "type": type(model).__name__,
        **{key: getattr(config, key, None) for key in ARCHITECTURE_FIELDS},
        "vocab_rows": model.get_input_embeddings().weight.shape[0],
    }
    return hashlib.sha256(json.dumps(shape, sort_keys=True, default=str).encode()).hexdigest()[:10]


ARCHITECTURE_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act", "num_labels")

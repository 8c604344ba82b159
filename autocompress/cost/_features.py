"""A policy as the flat feature dict the cost model reads.

Per block ``i`` of the uncompressed model: whether it is kept, its heads and
FFN width, the fractions of its Linear layers on each kernel family (int8
MatMulInteger, low-bit MatMulNBits, float) and its mean sparsity; globally the
mean input length and the embedding bits. Computed from the policy alone, so a
candidate can be priced before it is compressed.
"""

from __future__ import annotations

from transformers import PreTrainedModel

from autocompress.models import block_linears
from autocompress.policy import Policy


def policy_features(policy: Policy, model: PreTrainedModel, *, seq_len: float) -> dict[str, float]:
    """Features of ``policy`` applied to ``model`` (the uncompressed teacher)."""
    config = model.config
    kept = set(policy.kept_blocks) if policy.kept_blocks is not None else None
    features: dict[str, float] = {"seq_len": float(seq_len), "embedding_bits": float(policy.embedding_bits)}
    for index, linears in enumerate(block_linears(model)):
        specs = policy.resolve(linears).values()
        count = len(specs)
        key = f"layer{index}"
        features[f"{key}.kept"] = float(kept is None or index in kept)
        features[f"{key}.heads"] = float(policy.heads.get(index, config.num_attention_heads))
        features[f"{key}.ffn"] = float(policy.ffn.get(index, config.intermediate_size))
        features[f"{key}.int8"] = sum(s.bits == 8 for s in specs) / count
        features[f"{key}.lowbit"] = sum(s.bits <= 4 for s in specs) / count
        features[f"{key}.float"] = sum(s.bits >= 16 for s in specs) / count
        features[f"{key}.sparsity"] = sum(s.prune_ratio for s in specs) / count + policy.global_prune_ratio
    return features

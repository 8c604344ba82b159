"""Decoder language-model families: where each keeps its blocks, projections, embedding and head.

A policy addresses a decoder per block and per projection family (``attn``:
the query/key/value and output projections, ``mlp``: gate/up/down) plus the
token embedding and ``lm_head``, tied or not. Each family's adapter names its
modules and how ONNX Runtime GenAI's model builder names the MatMul it emits
for them (it fuses query, key and value into one ``qkv_proj``), so a lowering
can put each policy's codes on the right node. A family the builder cannot
convert is refused by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PretrainedConfig, PreTrainedModel

PROJECTION_FAMILIES = ("attn", "mlp")


@dataclass(frozen=True)
class DecoderFamily:
    """One decoder family: its modules per block, by projection family, and the builder's MatMul for each group of them."""

    model_types: tuple[str, ...]
    attn: tuple[str, ...]
    mlp: tuple[str, ...]
    builder_nodes: dict[str, tuple[str, ...]]
    """Builder MatMul (``attn/qkv_proj``) -> the block's modules it holds, concatenated along the output;
    ``module#i/n`` is the i-th of n equal slices of a module's outputs (the builder splits a fused gate/up)."""

    def projections(self, block: torch.nn.Module, family: str) -> dict[str, torch.nn.Linear]:
        """The block's Linear modules of one projection family, by their name inside the block."""
        return {name: block.get_submodule(name) for name in getattr(self, family)}


_LLAMA_LIKE = DecoderFamily(
    model_types=("llama", "mistral", "qwen2", "qwen3"),
    attn=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
    mlp=("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
    builder_nodes={"attn/qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "attn/o_proj": ("self_attn.o_proj",),
                   "mlp/gate_proj": ("mlp.gate_proj",), "mlp/up_proj": ("mlp.up_proj",), "mlp/down_proj": ("mlp.down_proj",)},
)
_PHI3 = DecoderFamily(
    model_types=("phi3",),
    attn=("self_attn.qkv_proj", "self_attn.o_proj"),
    mlp=("mlp.gate_up_proj", "mlp.down_proj"),
    builder_nodes={"attn/qkv_proj": ("self_attn.qkv_proj",), "attn/o_proj": ("self_attn.o_proj",),
                   "mlp/gate_proj": ("mlp.gate_up_proj#0/2",), "mlp/up_proj": ("mlp.gate_up_proj#1/2",), "mlp/down_proj": ("mlp.down_proj",)},
)
DECODER_FAMILIES = {model_type: family for family in (_LLAMA_LIKE, _PHI3) for model_type in family.model_types}
REFUSED = {"gpt2": "GPT-2's Conv1D blocks have no ONNX Runtime GenAI builder; supported decoders: " + ", ".join(sorted(DECODER_FAMILIES))}


def decoder_family(config: PretrainedConfig) -> DecoderFamily:
    """The adapter for ``config.model_type``; a ``ValueError`` naming the supported types otherwise."""
    family = DECODER_FAMILIES.get(config.model_type)
    if family is None:
        reason = REFUSED.get(config.model_type, f"supported decoders: {', '.join(sorted(DECODER_FAMILIES))}")
        raise ValueError(f"model_type {config.model_type!r} is not a supported decoder ({reason})")
    return family


def decoder_blocks(model: PreTrainedModel) -> list[torch.nn.Module]:
    """The decoder's blocks, in order (``model.model.layers`` for every supported family)."""
    decoder_family(model.config)
    return list(model.model.layers)


def tied_embedding(model: PreTrainedModel) -> bool:
    """Whether ``lm_head`` shares the token embedding's matrix (one tensor ships, quantized once)."""
    return model.lm_head.weight is model.get_input_embeddings().weight


def quantizable_linears(model: PreTrainedModel) -> dict[str, tuple[int | None, str, torch.nn.Linear]]:
    """Every Linear a policy sets, by full module name -> (block index or None for ``lm_head``, projection family, module)."""
    family = decoder_family(model.config)
    found: dict[str, tuple[int | None, str, torch.nn.Linear]] = {}
    for index, block in enumerate(decoder_blocks(model)):
        for kind in PROJECTION_FAMILIES:
            for name, linear in family.projections(block, kind).items():
                found[f"model.layers.{index}.{name}"] = (index, kind, linear)
    found["lm_head"] = (None, "lm_head", model.lm_head)
    return found

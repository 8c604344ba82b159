"""The decoder family contract: every adapter finds every Linear of its tiny model and names the builder's MatMuls after real modules."""

from __future__ import annotations

import pytest
import torch
import transformers
from decoder_families import DECODERS, tiny_decoder

from autocompress.models.decoders import decoder_blocks, decoder_family, quantizable_linears, tied_embedding


@pytest.mark.parametrize("family", sorted(DECODERS))
def test_every_linear_is_addressed_once_by_block_and_projection_family(family):
    model = tiny_decoder(family)
    found = quantizable_linears(model)
    every = {name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    assert set(found) == every
    assert {kind for _, kind, _ in found.values()} == {"attn", "mlp", "lm_head"}
    assert sorted({block for block, _, _ in found.values() if block is not None}) == list(range(len(decoder_blocks(model))))
    assert tied_embedding(model)


@pytest.mark.parametrize("family", sorted(DECODERS))
def test_the_builders_matmuls_hold_the_blocks_projections_in_output_order(family):
    """The builder concatenates the modules of one MatMul along the output: their output sizes must add up to the fused layer's."""
    model = tiny_decoder(family)
    adapter, block = decoder_family(model.config), decoder_blocks(model)[0]
    named = set(adapter.attn) | set(adapter.mlp)
    assert {m.partition("#")[0] for modules in adapter.builder_nodes.values() for m in modules} == named
    qkv = sum(block.get_submodule(m).out_features for m in adapter.builder_nodes["attn/qkv_proj"])
    config = model.config
    head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    assert qkv == (config.num_attention_heads + 2 * config.num_key_value_heads) * head


def test_gpt2_is_refused_by_name_with_the_supported_families():
    with pytest.raises(ValueError, match=r"'gpt2' is not a supported decoder \(GPT-2's Conv1D .* llama, mistral, phi3, qwen2, qwen3"):
        decoder_family(transformers.GPT2Config())

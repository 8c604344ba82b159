"""A decoder quantized under a per-block plan: what the plan names is quantized, the rest stays float, GPTQ goes block by block."""

from __future__ import annotations

import copy

import pytest
import torch
from decoder_families import tiny_decoder, token_ids

from autocompress.techniques import decoder_bits
from autocompress.techniques.decoder_bits import quantize_decoder
from autocompress.techniques.weight_only import rtn

PLAN = {(0, "attn"): (4, 32), (1, "mlp"): (2, 64), (None, "lm_head"): (8, 32)}


@pytest.mark.parametrize("family", ["llama", "phi3"])
def test_the_plan_decides_each_layer_and_the_weights_become_the_codes(family):
    teacher = tiny_decoder(family)
    model = copy.deepcopy(teacher)
    codes = quantize_decoder(model, lambda block, kind: PLAN.get((block, kind)))
    attention = {name for name in codes if name.startswith("model.layers.0.self_attn")}
    assert attention and not [n for n in codes if n.startswith(("model.layers.0.mlp", "model.layers.1.self_attn"))]
    assert {codes[n].bits for n in codes if n.startswith("model.layers.1.mlp")} == {2} and codes["lm_head"].bits == 8
    for name, weight in codes.items():
        module = model.get_submodule(name)
        assert torch.equal(module.weight, weight.dequantize())
        assert torch.equal(weight.codes, rtn(teacher.get_submodule(name).weight, weight.bits, weight.group_size).codes)
    assert torch.equal(model.model.layers[1].self_attn.o_proj.weight, teacher.model.layers[1].self_attn.o_proj.weight)


def test_gptq_reads_each_block_through_the_blocks_before_it_already_quantized(monkeypatch):
    """Block 1's Hessians must come from block 0's quantized output: quantizing block 0 differently changes them."""
    seen = []
    real = decoder_bits.gptq

    def recording(weight, hessian, bits, group_size):
        seen.append(hessian.clone())
        return real(weight, hessian, bits, group_size)

    monkeypatch.setattr(decoder_bits, "gptq", recording)
    calibration = [token_ids(32, seed) for seed in range(4)]
    hessians = {}
    for first in (8, 2):
        seen.clear()
        quantize_decoder(tiny_decoder("llama"), lambda block, kind, first=first: (first if block == 0 else 4, 32) if kind != "lm_head" else None,
                         method="gptq", calibration=calibration)
        hessians[first] = seen[7]  # block 1's first projection (block 0 has seven)
    assert not torch.allclose(hessians[8], hessians[2], rtol=1e-3)
    with pytest.raises(ValueError, match="GPTQ needs calibration windows"):
        quantize_decoder(tiny_decoder("llama"), lambda block, kind: (4, 32), method="gptq")

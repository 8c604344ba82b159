"""A quantized decoder written as GGUF: transformers reloads it to the simulated model's logits; what GGUF cannot hold is refused."""

from __future__ import annotations

import pytest
import torch
from decoder_families import write_tiny_gguf
from transformers import AutoModelForCausalLM

from autocompress.exporters.decoder_gguf import GgufRefusal, verify_gguf, write_gguf
from autocompress.models.decoders import quantizable_linears
from autocompress.models.loading import resolve_model_path
from autocompress.techniques.weight_only import rtn


def quantized(model, settings):
    codes = {}
    with torch.no_grad():
        for name, (block, kind, linear) in quantizable_linears(model).items():
            if (block, kind) in settings:
                codes[name] = rtn(linear.weight, *settings[block, kind])
                linear.weight.copy_(codes[name].dequantize())
    return codes


def test_four_bit_groups_of_32_become_q4_1_and_reload_to_the_simulated_logits(tmp_path, monkeypatch):
    import gguf

    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path / "cache"))
    source = write_tiny_gguf(tmp_path / "source.gguf")
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(str(source))).eval()
    codes = quantized(model, {(0, "attn"): (4, 32), (0, "mlp"): (4, 32), (1, "attn"): (4, 32), (None, "lm_head"): (4, 32)})  # block 1's MLP stays float
    out = write_gguf(model, codes, source, tmp_path / "out" / "model.gguf")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(out).tensors}
    assert types["blk.0.attn_q.weight"] == types["blk.1.attn_k.weight"] == types["token_embd.weight"] == "Q4_1"
    assert types["blk.1.ffn_down.weight"] == types["blk.1.attn_norm.weight"] == "F32"
    ids = torch.tensor([[1, 5, 9, 33, 60, 2, 7, 8]])
    largest = float(model(input_ids=ids).logits.abs().max())
    assert verify_gguf(out, model, ids) < 2e-3 * largest  # float16 scales and minimums: close, not exact
    (query,) = [t for t in gguf.GGUFReader(out).tensors if t.name == "blk.0.attn_q.weight"]  # in llama.cpp's row order, as its converter writes
    stored = gguf.quants.dequantize(query.data, query.tensor_type).reshape(64, 64)
    weight = model.model.layers[0].self_attn.q_proj.weight.detach().numpy()
    heads = weight.reshape(4, 2, 8, 64).swapaxes(1, 2).reshape(64, 64)  # each head's two rotary halves interleaved
    assert abs(stored - heads).max() < 1e-3 and abs(stored - weight).max() > 0.05


@pytest.mark.parametrize(("bits", "group"), [(8, 32), (2, 32), (4, 64)])
def test_what_no_gguf_type_holds_exactly_is_refused_by_name(tmp_path, monkeypatch, bits, group):
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path / "cache"))
    source = write_tiny_gguf(tmp_path / "source.gguf")
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(str(source))).eval()
    codes = quantized(model, {(0, "mlp"): (bits, group)})
    with pytest.raises(GgufRefusal, match=f"model.layers.0.mlp.gate_proj: {bits}-bit groups of {group} have no GGUF type .* allowed: 4-bit groups of 32"):
        write_gguf(model, codes, source, tmp_path / "refused.gguf")
    assert not (tmp_path / "refused.gguf").exists()  # refused before a byte is written

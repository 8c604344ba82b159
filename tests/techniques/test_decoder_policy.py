"""A decoder policy: the plan it stands for, its average bits, and its versioned JSON."""

from __future__ import annotations

import json

import pytest
from decoder_families import tiny_decoder

from autocompress.techniques.decoder_policy import DecoderPolicy


def test_the_plan_gives_each_block_and_the_head_their_widths_and_32_keeps_a_layer_float():
    policy = DecoderPolicy("gptq", 64, head_bits=32, attention_bits=(4, 8), mlp_bits=(2, 32))
    assert [policy.plan(0, "attn"), policy.plan(1, "attn"), policy.plan(0, "mlp"), policy.plan(1, "mlp")] == [(4, 64), (8, 64), (2, 64), None]
    assert policy.plan(None, "lm_head") is None


def test_average_bits_weigh_each_width_by_the_weights_it_holds():
    model = tiny_decoder("llama")  # per block: attention 64x(64+32+32+64), MLP 3x64x128; lm_head 512x64
    attention, mlp, head = 64 * 192, 3 * 64 * 128, 512 * 64
    policy = DecoderPolicy("rtn", 32, head_bits=8, attention_bits=(4, 4), mlp_bits=(2, 32))
    expected = (2 * attention * 4 + mlp * 2 + mlp * 32 + head * 8) / (2 * attention + 2 * mlp + head)
    assert policy.average_bits(model) == pytest.approx(expected)


def test_the_json_round_trips_and_another_format_is_refused(tmp_path):
    policy = DecoderPolicy("rtn", 32, head_bits=4, attention_bits=(4, 8), mlp_bits=(8, 4))
    assert DecoderPolicy.from_dict(policy.to_dict()) == policy
    saved = policy.save(tmp_path / "policy.json")
    assert DecoderPolicy.from_dict(json.loads(saved.read_text())) == policy
    with pytest.raises(ValueError, match="not an autocompress.decoder-policy version 1 policy"):
        DecoderPolicy.from_dict({**policy.to_dict(), "version": 2})
    assert policy.params()["block1.mlp_bits"] == 4

"""Each group's measured KL at each width, and the widths allocated from it under an average-bits budget."""

from __future__ import annotations

import copy

import pytest
import torch
from decoder_families import DECODERS, tiny_decoder, token_ids

from autocompress.models.decoders import quantizable_linears
from autocompress.tasks.language_modeling import Window, language_scores, reference_log_probs, torch_logits
from autocompress.techniques.decoder_bits import quantize_decoder
from autocompress.techniques.decoder_sensitivity import (
    allocate,
    allocated_policy,
    average_bits_range,
    group_weights,
    measure_sensitivity,
)


def windows(count: int = 2, length: int = 24) -> list[Window]:
    return [Window(token_ids(length, seed=i), length - 1) for i in range(count)]


@pytest.mark.parametrize("family", sorted(DECODERS))
def test_group_weights_from_the_config_count_the_weights_each_group_holds(family):
    model = tiny_decoder(family)
    counted: dict[str, int] = {}
    for block, kind, linear in quantizable_linears(model).values():
        key = "lm_head" if kind == "lm_head" else f"{block}.{kind}"
        counted[key] = counted.get(key, 0) + linear.weight.numel()
    assert group_weights(model.config) == counted


def test_a_probe_reruns_only_the_blocks_after_the_group_and_scores_what_quantizing_the_group_alone_does():
    model = tiny_decoder("llama")
    before = {name: p.detach().clone() for name, p in model.state_dict().items()}
    texts = windows()
    reference = reference_log_probs(torch_logits(model), texts)
    measured = measure_sensitivity(model, texts, reference, {"attn": [2, 4, 32], "mlp": [2, 8], "lm_head": [4]}, 32)
    assert all(torch.equal(before[name], p) for name, p in model.state_dict().items())  # the teacher is left as it was

    quantized = copy.deepcopy(model)  # block 1's MLP alone at 2 bits, the whole model run again
    quantize_decoder(quantized, lambda block, kind: (2, 32) if (block, kind) == (1, "mlp") else None)
    whole = language_scores(torch_logits(quantized), reference, texts)["kl_to_teacher"]
    assert measured["1.mlp"][2] == pytest.approx(whole, rel=1e-4)
    assert set(measured) == {"0.attn", "0.mlp", "1.attn", "1.mlp", "lm_head"}
    assert measured["0.attn"][32] == 0 and measured["0.attn"][2] > measured["0.attn"][4] > 0
    assert measured["0.mlp"][2] > measured["0.mlp"][8] > 0 and measured["lm_head"][4] > 0


def test_the_allocation_meets_the_budget_and_widens_where_a_bit_saves_the_most_kl():
    weights = {"0.attn": 100, "0.mlp": 300, "lm_head": 100}
    sensitivity = {"0.attn": {2: 1.0, 4: 0.1}, "0.mlp": {2: 0.5, 4: 0.2}, "lm_head": {4: 0.3, 8: 0.0}}
    low, high = average_bits_range(weights, {"attn": [2, 4], "mlp": [2, 4], "lm_head": [4, 8]})
    assert (low, high) == (2.4, 4.8)
    assert allocate(sensitivity, weights, low) == {"0.attn": 2, "0.mlp": 2, "lm_head": 4}
    # 0.2 bits of budget: 0.attn's widening saves 0.9 KL for 200 bits, lm_head's 0.3 for 400, 0.mlp's 0.3 for 600
    assert allocate(sensitivity, weights, 2.8) == {"0.attn": 4, "0.mlp": 2, "lm_head": 4}
    assert allocate(sensitivity, weights, 3.6) == {"0.attn": 4, "0.mlp": 2, "lm_head": 8}
    assert allocate(sensitivity, weights, high) == {"0.attn": 4, "0.mlp": 4, "lm_head": 8}
    for target in (2.4, 2.9, 3.3, 4.1, 4.8):
        chosen = allocate(sensitivity, weights, target)
        assert sum(weights[g] * bits for g, bits in chosen.items()) <= target * 500 + 1e-9
    with pytest.raises(ValueError, match=r"average bits 2\.0 is below the narrowest allocation's 2\.400"):
        allocate(sensitivity, weights, 2.0)
    policy = allocated_policy({"0.attn": 4, "0.mlp": 2, "1.attn": 8, "1.mlp": 4, "lm_head": 8}, method="gptq", group_size=32, blocks=2)
    assert (policy.attention_bits, policy.mlp_bits, policy.head_bits, policy.method) == ((4, 8), (2, 4), 8, "gptq")

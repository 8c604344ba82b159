"""Quantization and magnitude pruning on the real model: exact zero fractions, weights on the grid."""

import pytest
import torch

from autocompress.measurement._size import estimated_size_bytes, sparsity
from autocompress.models.loading import block_linears
from autocompress.policy import LayerSpec, Policy
from autocompress.techniques import compress, layer_plan
from autocompress.techniques.quantizer import QUANT_ATTR, kmeans_codebook, quantize_weight

ALL_BLOCKS = "re:bert\\.encoder\\.layer\\.\\d+\\..*"


def encoder_weights(model):
    return {name: m.weight for block in block_linears(model) for name, m in block.items()}


def test_layers_are_discovered_per_block(model):
    blocks = block_linears(model)
    assert len(blocks) == model.config.num_hidden_layers
    assert all(len(block) == 6 for block in blocks)
    names = [name for block in blocks for name in block]
    assert not any("classifier" in n or "pooler" in n for n in names)


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.9])
def test_local_pruning_zeroes_the_exact_fraction_of_each_layer(model, ratio):
    compressed = compress(model, Policy(layers={ALL_BLOCKS: LayerSpec(prune_ratio=ratio)}))
    for name, weight in encoder_weights(compressed).items():
        assert (weight == 0).sum().item() == round(ratio * weight.numel()), name
        kept = weight[weight != 0].abs().min()
        original = dict(model.named_modules())[name.rsplit(".weight", 1)[0]].weight
        assert kept >= original.abs().flatten().kthvalue(round(ratio * weight.numel())).values
    assert torch.equal(compressed.classifier.weight, model.classifier.weight)
    assert torch.equal(compressed.bert.pooler.dense.weight, model.bert.pooler.dense.weight)


def test_global_pruning_ranks_across_layers(model):
    compressed = compress(model, Policy(global_prune_ratio=0.5))
    weights = encoder_weights(compressed)
    total = sum(w.numel() for w in weights.values())
    zeros = sum((w == 0).sum().item() for w in weights.values())
    assert zeros == round(0.5 * total)
    fractions = [(w == 0).float().mean().item() for w in weights.values()]
    assert max(fractions) - min(fractions) > 0.05  # one threshold, so layers differ
    assert torch.equal(compressed.classifier.weight, model.classifier.weight)


@pytest.mark.parametrize(("bits", "group"), [(8, None), (4, None), (4, 32), (2, 64)])
def test_linear_quantization_puts_every_weight_on_the_grid(model, bits, group):
    compressed = compress(model, Policy(layers={ALL_BLOCKS: LayerSpec(bits=bits)}, group_size=group))
    limit = 2 ** (bits - 1) - 1
    for block in block_linears(compressed):
        for name, linear in block.items():
            quantized = getattr(linear, QUANT_ATTR)
            group_size = group or linear.in_features
            assert quantized.scales.shape == (linear.out_features, linear.in_features // group_size)
            scales = quantized.scales.repeat_interleave(group_size, dim=1)
            codes = linear.weight / scales
            assert torch.allclose(codes, codes.round(), atol=1e-3), name
            assert codes.abs().max() <= limit + 1e-3
            assert torch.equal(linear.weight, quantized.dequantize())
    assert not torch.equal(compressed.bert.encoder.layer[0].output.dense.weight, model.bert.encoder.layer[0].output.dense.weight)


def test_kmeans_quantization_uses_a_codebook_of_2_to_the_bits_values(model):
    compressed = compress(model, Policy(layers={ALL_BLOCKS: LayerSpec(bits=3)}, scheme="kmeans"))
    for block in block_linears(compressed):
        for linear in block.values():
            assert linear.weight.unique().numel() <= 8
    weight = model.bert.encoder.layer[0].intermediate.dense.weight
    codebook, indices = kmeans_codebook(weight, 3)
    uniform = quantize_weight(weight, 3).dequantize()
    # Lloyd's codebook fits the weight distribution better than the uniform grid.
    assert (codebook[indices] - weight).pow(2).mean() < (uniform - weight).pow(2).mean()


def test_pruned_zeros_survive_quantization(model):
    compressed = compress(model, Policy(layers={ALL_BLOCKS: LayerSpec(bits=4, prune_ratio=0.5)}))
    for weight in encoder_weights(compressed).values():
        assert (weight == 0).float().mean().item() >= 0.5


def test_sixteen_bits_round_to_half_precision(model):
    compressed = compress(model, Policy(layers={ALL_BLOCKS: LayerSpec(bits=16)}))
    weight = compressed.bert.encoder.layer[2].attention.self.value.weight
    assert torch.equal(weight, weight.half().float())


def test_compression_changes_outputs_and_size(model, sentence_batches):
    policy = Policy(layers={ALL_BLOCKS: LayerSpec(bits=4, prune_ratio=0.5)}, embedding_bits=8)
    compressed = compress(model, policy)
    batch = {k: v for k, v in sentence_batches[0].items() if k != "labels"}
    with torch.no_grad():
        assert not torch.allclose(model(**batch).logits, compressed(**batch).logits, atol=1e-4)
    full = estimated_size_bytes(model, layer_plan(model, Policy()))
    small = estimated_size_bytes(compressed, layer_plan(compressed, policy))
    assert full == sum(p.numel() for p in model.parameters()) * 4
    linears = [m for b in block_linears(model) for m in b.values()]
    linear_params = sum(m.weight.numel() for m in linears)
    embedding = model.get_input_embeddings().weight
    # encoder weights: 4-bit codes + a float scale per row, stored dense (the zeros still take their 4 bits);
    # embedding: int8 codes + a scale per row
    saved = linear_params * (4 - 0.5) - 4 * sum(m.out_features for m in linears) + embedding.numel() * (4 - 1) - 4 * embedding.shape[0]
    assert full - small == pytest.approx(saved, abs=8)
    names = list(layer_plan(compressed, policy))
    assert sparsity(compressed, names) == pytest.approx(0.5, abs=0.01)  # 4-bit rounding zeroes a few more
    assert sparsity(model, names) < 1e-3


def test_structured_policy_shrinks_and_specs_follow_their_original_blocks(model, sentence_batches):
    policy = Policy(
        layers={"re:bert\\.encoder\\.layer\\.3\\..*": LayerSpec(bits=4), "re:bert\\.encoder\\.layer\\.5\\..*": LayerSpec(prune_ratio=0.5)},
        heads={0: 6},
        ffn={1: 768},
        kept_blocks=(0, 1, 3, 5),
    )
    compressed = compress(model, policy, calibration=sentence_batches[0])
    layers = compressed.bert.encoder.layer
    assert len(layers) == 4 and compressed.config.num_hidden_layers == 4
    assert layers[0].attention.self.query.out_features == 6 * 32
    assert layers[1].intermediate.dense.out_features == 768
    # original block 3 is now block 2 and carries the 4-bit spec; original block 5 (now 3) is half zeros
    assert getattr(layers[2].intermediate.dense, QUANT_ATTR).bits == 4
    assert not hasattr(layers[1].intermediate.dense, QUANT_ATTR)
    assert (layers[3].output.dense.weight == 0).float().mean().item() == pytest.approx(0.5, abs=1e-6)
    from autocompress.models.shrunk import count_parameters

    assert count_parameters(compressed) < count_parameters(model)
    assert estimated_size_bytes(compressed, layer_plan(compressed, policy)) < estimated_size_bytes(model, layer_plan(model, Policy()))


def test_eight_bit_per_channel_layers_round_activations_like_matmulinteger(model):
    from autocompress.techniques.quantizer import float_activations

    compressed = compress(model, Policy(layers={ALL_BLOCKS: LayerSpec(bits=8)}))
    linear = compressed.bert.encoder.layer[0].intermediate.dense
    seen = []
    handle = linear.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x = torch.randn(2, 5, linear.in_features)
    linear(x)
    with float_activations():
        linear(x)
    handle.remove()
    rounded, plain = seen
    assert torch.equal(plain, x)
    scale = (x.max() - x.min()) / 255
    steps = (rounded - rounded.min()) / scale
    assert torch.allclose(steps, steps.round(), atol=1e-3) and rounded.unique().numel() <= 256
    assert (rounded - x).abs().max() <= scale / 2 + 1e-6
    grouped = compress(model, Policy(layers={ALL_BLOCKS: LayerSpec(bits=8)}, group_size=32))
    assert not grouped.bert.encoder.layer[0].intermediate.dense._forward_pre_hooks  # MatMulNBits: weights only

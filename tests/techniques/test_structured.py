"""Structured pruning on the real all-MiniLM-L6-v2 classifier and real SST-2 sentences."""

from __future__ import annotations

import copy
import csv
import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

from autocompress.measurement import OrtProbe, latency_inputs
from autocompress.models.loading import load_classifier, load_tokenizer
from autocompress.models.shrunk import BLOCKS_ATTR, MODELING_FILE, count_parameters, load_shrunk, save_shrunk
from autocompress.runtime import export_onnx
from autocompress.techniques import head_importance, neuron_importance, shrink_

HIDDEN, HEAD, FFN, HEADS, BLOCKS = 384, 32, 1536, 12, 6


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)  # the classifier head is newly initialised
    return load_classifier("default")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("default")


@pytest.fixture(scope="module")
def rows(data_root):
    with open(data_root / "sst2" / "validation.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


@pytest.fixture(scope="module")
def batch(tokenizer, rows):
    rows = rows[:4]
    inputs = tokenizer([r["sentence"] for r in rows], padding=True, truncation=True, max_length=64, return_tensors="pt")
    return {**inputs, "labels": torch.tensor([int(r["label"]) for r in rows])}


@pytest.fixture
def model(base):
    return copy.deepcopy(base)


def logits(model, batch):
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def layers_of(model):
    return model.bert.encoder.layer


def head_rows(heads):
    return (heads[:, None] * HEAD + torch.arange(HEAD)).flatten()


def top(scores, keep):
    return torch.topk(scores, keep).indices.sort().values


def test_shapes_config_and_exact_parameter_drop(model, batch):
    before = count_parameters(model)
    shrink_(model, heads={0: 6, 3: 4}, ffn={1: 768}, layers=[0, 1, 3, 5])

    expected = [(6, FFN), (HEADS, 768), (4, FFN), (HEADS, FFN)]  # blocks 0, 1, 3, 5 of the original
    assert len(layers_of(model)) == 4
    for index, (block, (heads, width)) in enumerate(zip(layers_of(model), expected)):
        attn = block.attention.self
        for linear in (attn.query, attn.key, attn.value):
            assert linear.weight.shape == (heads * HEAD, HIDDEN) and linear.bias.shape == (heads * HEAD,)
        assert block.attention.output.dense.weight.shape == (HIDDEN, heads * HEAD)
        assert block.intermediate.dense.weight.shape == (width, HIDDEN)
        assert block.output.dense.weight.shape == (HIDDEN, width)
        assert (attn.num_attention_heads, attn.all_head_size, attn.layer_idx) == (heads, heads * HEAD, index)
    assert model.config.num_hidden_layers == 4
    assert model.config.intermediate_size == FFN  # widths differ, so the shared value stays the original
    assert getattr(model.config, BLOCKS_ATTR) == [{"heads": h, "intermediate_size": f} for h, f in expected]

    per_head = 3 * (HIDDEN * HEAD + HEAD) + HEAD * HIDDEN  # q/k/v rows + biases, output.dense columns
    per_neuron = HIDDEN + 1 + HIDDEN  # intermediate row + bias, output.dense column
    per_block = 4 * (HIDDEN * HIDDEN + HIDDEN) + 2 * 2 * HIDDEN + 2 * HIDDEN * FFN + FFN + HIDDEN
    removed = (6 + 8) * per_head + 768 * per_neuron + 2 * per_block
    assert before - count_parameters(model) == removed
    assert torch.isfinite(logits(model, batch)).all()


def test_shrunk_model_exports_smaller_and_runs_faster(model, base, batch, rows, tokenizer, tmp_path):
    """Half the heads and FFN neurons in 3 of 6 blocks: a quarter of the encoder's compute.

    Timed side by side in ONNX Runtime, alternating rounds, so the ratio holds
    on a busy machine; the expected ratio is about 0.3, the bound 0.6.
    """
    shrink_(model, heads=dict.fromkeys(range(BLOCKS), 6), ffn=dict.fromkeys(range(BLOCKS), 768), layers=[1, 3, 5])
    example = {k: v for k, v in batch.items() if k != "labels"}
    full = export_onnx(base, tmp_path / "full.onnx", example=example)
    small = export_onnx(model, tmp_path / "small.onnx", example=example)
    assert small.stat().st_size < full.stat().st_size - 4 * 3 * 1e6  # >= 3 M float32 parameters fewer on disk
    inputs = latency_inputs(tokenizer, [r["sentence"] for r in rows[:16]], max_length=64)
    probes = {name: OrtProbe(path, threads=2, lock_path=tmp_path / "lock") for name, path in (("full", full), ("small", small))}
    ratios = []
    for _ in range(5):
        full_ms, small_ms = (probes[name].measure(inputs, warmup=3, repeats=20).median_ms for name in ("full", "small"))
        ratios.append(small_ms / full_ms)
    assert float(np.median(ratios)) < 0.6, ratios


@pytest.mark.parametrize("calibrated", [False, True])
def test_keeping_everything_leaves_logits_unchanged(model, base, batch, calibrated):
    shrink_(
        model,
        heads=dict.fromkeys(range(BLOCKS), HEADS),
        ffn=dict.fromkeys(range(BLOCKS), FFN),
        layers=range(BLOCKS),
        calibration=batch if calibrated else None,
    )
    assert count_parameters(model) == count_parameters(base)
    torch.testing.assert_close(logits(model, batch), logits(base, batch), rtol=0, atol=0)


def test_pruning_equals_zeroing_the_pruned_outputs_including_empty_blocks(model, base, batch):
    """Removing a head or neuron must equal zeroing its output.dense columns; 0 kept leaves only the bias."""
    heads, ffn = {0: 6, 2: 0}, {1: 768, 4: 0}
    head_scores, neuron_scores = head_importance(base), neuron_importance(base)
    reference = copy.deepcopy(base)
    with torch.no_grad():
        for i, keep in heads.items():
            dropped = torch.ones(HEADS * HEAD, dtype=torch.bool)
            dropped[head_rows(top(head_scores[i], keep))] = False
            layers_of(reference)[i].attention.output.dense.weight[:, dropped] = 0
        for i, keep in ffn.items():
            dropped = torch.ones(FFN, dtype=torch.bool)
            dropped[top(neuron_scores[i], keep)] = False
            layers_of(reference)[i].output.dense.weight[:, dropped] = 0

    shrink_(model, heads=heads, ffn=ffn)
    assert layers_of(model)[2].attention.output.dense.weight.shape == (HIDDEN, 0)
    assert layers_of(model)[4].output.dense.weight.shape == (HIDDEN, 0)
    result = logits(model, batch)
    assert torch.isfinite(result).all()
    assert not torch.allclose(result, logits(base, batch))
    torch.testing.assert_close(result, logits(reference, batch), rtol=1e-4, atol=1e-5)


def test_dropping_later_blocks_equals_stopping_early(model, base, batch):
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    shrink_(model, layers=[0, 1, 2])
    with torch.no_grad():
        early = base.bert(**inputs, output_hidden_states=True).hidden_states[3]
        torch.testing.assert_close(model.bert(**inputs).last_hidden_state, early)


@pytest.mark.parametrize("calibrated", [False, True])
def test_most_important_heads_and_neurons_are_kept(model, base, batch, calibrated):
    calibration = batch if calibrated else None
    heads = top(head_importance(base, calibration=calibration)[0], 6)
    neurons = top(neuron_importance(base, calibration=calibration)[1], 768)
    shrink_(model, heads={0: 6}, ffn={1: 768}, calibration=calibration)

    rows = head_rows(heads)
    old, new = layers_of(base)[0], layers_of(model)[0]
    for name in ("query", "key", "value"):
        assert torch.equal(getattr(new.attention.self, name).weight, getattr(old.attention.self, name).weight[rows])
    assert torch.equal(new.attention.output.dense.weight, old.attention.output.dense.weight[:, rows])
    old, new = layers_of(base)[1], layers_of(model)[1]
    assert torch.equal(new.intermediate.dense.weight, old.intermediate.dense.weight[neurons])
    assert torch.equal(new.output.dense.weight, old.output.dense.weight[:, neurons])


def test_taylor_importance_differs_from_norm_and_leaves_the_model_alone(model, batch):
    model.train()
    for p in model.parameters():
        p.requires_grad_(False)
    taylor_heads = head_importance(model, calibration=batch)
    taylor_neurons = neuron_importance(model, calibration=batch)
    norm_heads, norm_neurons = head_importance(model), neuron_importance(model)

    assert [s.shape for s in taylor_heads] == [(HEADS,)] * BLOCKS
    assert [s.shape for s in taylor_neurons] == [(FFN,)] * BLOCKS
    assert all((s >= 0).all() and (s > 0).any() for s in taylor_heads + taylor_neurons)
    assert any(not torch.equal(t.argsort(), n.argsort()) for t, n in zip(taylor_heads, norm_heads))
    assert any(not torch.equal(t.argsort(), n.argsort()) for t, n in zip(taylor_neurons, norm_neurons))
    assert model.training
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())


def test_save_load_round_trip_with_empty_blocks(model, base, batch, tokenizer, tmp_path):
    shrink_(model, heads={0: 6, 3: 4, 5: 0}, ffn={1: 768, 3: 0}, layers=[0, 1, 3, 5], calibration=batch)
    save_shrunk(model, tmp_path / "shrunk", tokenizer=tokenizer)
    base.save_pretrained(tmp_path / "full")
    expected = logits(model, batch)

    loaded = load_shrunk(tmp_path / "shrunk")
    assert type(loaded) is BertForSequenceClassification
    assert count_parameters(loaded) == count_parameters(model)
    assert torch.equal(logits(loaded, batch), expected)
    assert (tmp_path / "shrunk" / "model.safetensors").stat().st_size < (
        tmp_path / "full" / "model.safetensors"
    ).stat().st_size

    assert (tmp_path / "shrunk" / MODELING_FILE).exists()
    remote = AutoModelForSequenceClassification.from_pretrained(tmp_path / "shrunk", trust_remote_code=True).eval()
    assert torch.equal(logits(remote, batch), expected)
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):  # plain BertConfig cannot hold these shapes
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "shrunk")


def test_uniform_shapes_load_without_custom_code(model, batch, tmp_path):
    shrink_(model, ffn=dict.fromkeys(range(BLOCKS), 768), layers=[0, 2, 4])
    assert (model.config.intermediate_size, model.config.num_hidden_layers) == (768, 3)
    save_shrunk(model, tmp_path)
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(plain) is BertForSequenceClassification
    assert torch.equal(logits(plain, batch), logits(model, batch))


def test_load_rejects_weights_that_do_not_fit_the_config(model, tmp_path):
    shrink_(model, heads={0: 6})
    save_shrunk(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config[BLOCKS_ATTR][0]["heads"] = 5
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not fit"):
        load_shrunk(tmp_path)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"heads": {0: 13}}, r"heads\[0\]=13 .*0\.\.12"),
        ({"heads": {0: -1}}, r"heads\[0\]=-1"),
        ({"heads": {6: 4}}, r"heads: block index 6 .*0\.\.5"),
        ({"ffn": {2: 1537}}, r"ffn\[2\]=1537 .*0\.\.1536"),
        ({"ffn": {-1: 8}}, r"ffn: block index -1"),
        ({"layers": [0, 6]}, r"layers: block index 6 .*0\.\.5"),
        ({"layers": [3, 1]}, r"layers=\[3, 1\] must be strictly increasing"),
        ({"layers": []}, r"layers=\[\]"),
        ({"heads": {0: 6}, "calibration": {"input_ids": torch.ones(1, 4, dtype=torch.long)}}, r"calibration.*labels"),
    ],
)
def test_bad_arguments_raise_before_anything_changes(model, options, message):
    shapes = [p.shape for p in model.parameters()]
    with pytest.raises(ValueError, match=message):
        shrink_(model, **{"heads": {1: 6}, **options})
    assert [p.shape for p in model.parameters()] == shapes

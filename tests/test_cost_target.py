"""Cost-model samples are keyed by model architecture, hardware and runtime: two models never mix."""

from __future__ import annotations

import torch
from transformers import BertConfig, BertForSequenceClassification

from autocompress.cost import CostModelStore, policy_features
from autocompress.measure import fingerprint_id, hardware_fingerprint
from autocompress.models import load_classifier
from autocompress.policy import LayerSpec, Policy
from autocompress.trial import cost_target


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=500, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    return BertForSequenceClassification(config).eval()


def test_two_models_searched_on_one_machine_keep_their_own_samples(tmp_path):
    minilm, tiny = load_classifier("default"), tiny_bert()
    hardware = fingerprint_id(hardware_fingerprint(threads=2))
    assert cost_target(minilm, "onnxruntime") != cost_target(tiny, "onnxruntime")
    assert cost_target(minilm, "onnxruntime") != cost_target(minilm, "torch")

    store = CostModelStore(tmp_path)
    for bits in (4, 8, 16, 32):
        policy = Policy(layers={"re:.*": LayerSpec(bits=bits)})
        store.add(hardware, cost_target(minilm, "onnxruntime"), policy_features(policy, minilm, seq_len=20), 2.0 + bits / 10)
    store.fit(hardware, cost_target(minilm, "onnxruntime"))
    assert store.samples(hardware, cost_target(tiny, "onnxruntime")) == ([], [])
    assert store.load(hardware, cost_target(tiny, "onnxruntime")) is None
    assert len(store.samples(hardware, cost_target(minilm, "onnxruntime"))[1]) == 4


def test_same_architecture_with_other_weights_shares_the_key():
    first, second = tiny_bert(), tiny_bert()
    with torch.no_grad():
        second.classifier.weight.add_(1.0)
    assert cost_target(first, "onnxruntime") == cost_target(second, "onnxruntime")

"""Cost-model samples are keyed by model architecture, hardware and runtime: two models never mix."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import torch
from transformers import BertConfig, BertForSequenceClassification

from autocompress.controller.objective import predict_latency
from autocompress.controller.trial import cost_target
from autocompress.cost import CostModelStore, policy_features
from autocompress.measurement import fingerprint_id, hardware_fingerprint
from autocompress.models.loading import load_classifier
from autocompress.policy import LayerSpec, Policy


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=500, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    return BertForSequenceClassification(config).eval()


def test_two_models_searched_on_one_machine_keep_their_own_samples(tmp_path):
    minilm, tiny = load_classifier("default"), tiny_bert()
    hardware = fingerprint_id(hardware_fingerprint(threads=2))
    assert cost_target(minilm, "onnxruntime") != cost_target(tiny, "onnxruntime")
    assert cost_target(minilm, "onnxruntime") != cost_target(minilm, "torch")
    assert cost_target(minilm, "onnxruntime", 32) != cost_target(minilm, "onnxruntime") == cost_target(minilm, "onnxruntime", 1)

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


def test_the_latency_limit_is_priced_as_a_ratio_to_the_teacher(tmp_path):
    """The model learns paired ratios; ``max_latency_ms`` is turned into one with the study's teacher latency."""
    tiny = tiny_bert()
    target = ("cpu-a", cost_target(tiny, "onnxruntime"))
    store = CostModelStore(tmp_path)
    for repeat in range(3):
        for bits in (4, 8, 16, 32):
            ratio = {4: 1.6, 8: 0.5, 16: 1.2, 32: 1.0}[bits] + repeat * 0.001
            store.add(*target, policy_features(Policy(layers={"re:.*": LayerSpec(bits=bits)}), tiny, seq_len=20), ratio)
    store.fit(*target)

    def priced(bits: int, limit_ms: float) -> tuple[float | None, optuna.trial.FrozenTrial]:
        constraints = SimpleNamespace(max_latency_ms=limit_ms)
        context = SimpleNamespace(costs=store, latency_target=target, baseline={"latency_ms": 4.0},
                                  config=SimpleNamespace(search=SimpleNamespace(constraints=constraints)))
        study = optuna.create_study()
        trial = study.ask()
        features = policy_features(Policy(layers={"re:.*": LayerSpec(bits=bits)}), tiny, seq_len=20)
        try:
            return predict_latency(context, features, trial), study.trials[0]
        except optuna.TrialPruned:
            return None, study.trials[0]

    # int8 at 0.5x a 4 ms teacher is 2 ms: within a 3 ms limit, and the prediction is the ratio
    predicted, trial = priced(8, 3.0)
    assert abs(predicted - 0.5) < 0.05 and "rejected_by_cost_model" not in trial.user_attrs
    # 4-bit at 1.6x is 6.4 ms: clearly above 3 ms (0.75x), so it is pruned before it is built, with the ms in the reason
    predicted, trial = priced(4, 3.0)
    assert predicted is None and trial.user_attrs["rejected_by_cost_model"]
    assert "1.60x the teacher's latency (6.40 ms)" in trial.user_attrs["prune_reason"]
    # the same 1.6x under a 7 ms limit (1.75x) is kept: the limit is not compared with the raw ratio
    predicted, trial = priced(4, 7.0)
    assert abs(predicted - 1.6) < 0.05

"""The technique contract: every registered technique passes the same suite (as Optuna's samplers share theirs).

A subclass names the technique, builds an instance ready to apply (stateful
ones need data) and a policy that asks something of it. The suite checks that
its policy section is its own, round-trips through JSON and the assembled
schema, that sampling asks only for its fields, that a default policy leaves
a model as it was and an active one changes it measurably. A new technique
adds one subclass here.
"""

from __future__ import annotations

import copy
import json

import jsonschema
import optuna
import pytest
import torch
from families import tiny_model

from autocompress import techniques
from autocompress.config import PruneMode, RecoveryConfig, SpaceConfig
from autocompress.models.pooling import Pooling
from autocompress.policy import LayerSpec, Policy, assemble_schema
from autocompress.tasks import EMBEDDING_TARGET, SentenceEmbedding
from autocompress.techniques import (
    DEFAULT_TECHNIQUES,
    TECHNIQUES,
    Distillation,
    MagnitudePruning,
    OutputQuantization,
    Quantization,
    Recovery,
    StructuredPruning,
    Technique,
    VocabularyPruning,
    float_techniques,
    layer_plan,
)

OPEN_SPACE = SpaceConfig(weight_bits=[4, 8, 32], group_size=[None, 16], prune_mode=PruneMode.GLOBAL, prune_ratios=[0.0, 0.5],
                         embedding_bits=[4, 8, 32], heads=[2, 4], ffn_widths=[32, 64], num_blocks=[1, 2], recovery_steps=[0, 2],
                         vocab_rows=[None, 2000], output_precision=["float32", "int8", "binary"])
"""A space that leaves every technique's decisions open, for the tiny 2-block model (4 heads, FFN 64)."""


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


class TechniqueContract:
    """Subclasses set ``technique`` and define ``active()``, a policy that asks something of it."""

    technique: type[Technique]

    def make(self, model: torch.nn.Module, batches: list) -> Technique:
        return self.technique()

    def test_it_is_registered(self):
        assert self.technique in techniques.TECHNIQUES  # read when asked: a registration made by a test counts

    def test_the_active_policy_asks_for_it_and_a_default_one_does_not(self):
        assert self.technique.active(self.active()) and not self.technique.active(Policy())

    def test_it_runs_at_its_stage_of_the_pipeline(self, sentence_batches):
        pipeline = float_techniques(self.active(), prepare=lambda technique: self.make(tiny_model("bert"), sentence_batches),
                                    recovery=self.make(tiny_model("bert"), sentence_batches) if self.technique is Recovery else None)
        if self.technique is Quantization:
            assert pipeline == () and type(DEFAULT_TECHNIQUES[-1]) is Quantization  # quantization runs last, on the float result
        else:
            assert [type(technique) for technique in pipeline] == [self.technique]

    def test_its_fields_are_policy_fields_no_other_technique_owns(self):
        assert self.technique.fields and set(self.technique.fields) <= set(Policy().settings)
        assert all("default" in schema for schema in self.technique.fields.values())  # an empty policy holds each default
        others = {name for technique in techniques.TECHNIQUES if technique is not self.technique for name in technique.fields}
        assert not set(self.technique.fields) & others

    def test_its_section_round_trips_through_json_and_the_schema(self):
        policy = self.active()
        section = json.loads(json.dumps(self.technique.section(policy)))
        assert set(section) == set(self.technique.fields)
        restored = self.technique.from_section(section)
        assert {name: restored[name] for name in self.technique.fields} == {name: getattr(policy, name) for name in self.technique.fields}
        document = {"version": 2, "techniques": {self.technique.name: section}}
        jsonschema.validate(document, assemble_schema())
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"version": 2, "techniques": {self.technique.name: {**section, "unknown_knob": 1}}}, assemble_schema())
        assert Policy.from_dict(policy.to_dict()) == policy

    def test_sampling_asks_only_for_its_own_fields(self):
        trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
        decisions = self.technique.sample(trial, OPEN_SPACE, num_blocks=2)
        assert decisions and set(decisions) <= set(self.technique.fields)
        Policy(**decisions)  # valid on its own

    def test_a_space_the_model_can_take_is_not_refused(self):
        assert self.technique.refuse_space(OPEN_SPACE, tiny_model("bert").config) is None

    def test_a_default_policy_leaves_the_model_as_it_was(self, sentence_batches):
        model = tiny_model("bert")
        before = _weights(model)
        policy = Policy()
        self.make(model, sentence_batches).apply(model, policy, layer_plan(model, policy), calibration=sentence_batches[0])
        after = _weights(model)
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)

    def test_an_active_policy_changes_the_model_measurably(self, sentence_batches):
        model = tiny_model("bert")
        before = _weights(model)
        policy = self.active()
        self.make(model, sentence_batches).apply(model, policy, layer_plan(model, policy), calibration=sentence_batches[0])
        after = _weights(model)
        changed = before.keys() != after.keys() or any(before[k].shape != after[k].shape or not torch.equal(before[k], after[k]) for k in before)
        assert changed


ALL_BLOCKS = "re:bert\\.encoder\\.layer\\.\\d+\\..*"


class TestStructuredPruning(TechniqueContract):
    technique = StructuredPruning

    def active(self):
        return Policy(heads={0: 2}, ffn={1: 32}, kept_blocks=(1,))


class TestMagnitudePruning(TechniqueContract):
    technique = MagnitudePruning

    def active(self):
        return Policy(global_prune_ratio=0.5)


class TestQuantization(TechniqueContract):
    technique = Quantization

    def active(self):
        return Policy(layers={ALL_BLOCKS: LayerSpec(bits=4)}, group_size=16, embedding_bits=8)


class TestVocabularyPruning(TechniqueContract):
    technique = VocabularyPruning

    def make(self, model, batches):
        counts = torch.bincount(torch.cat([batch["input_ids"].flatten() for batch in batches]), minlength=model.config.vocab_size)
        return VocabularyPruning(counts, always=[0, 100, 101, 102, 103])

    def active(self):
        return Policy(vocab_rows=2000)


class TestOutputQuantization(TechniqueContract):
    """It leaves the model alone and changes what is measured: the index's vectors, and so neighbour recall and bytes."""

    technique = OutputQuantization

    def active(self):
        return Policy(output_precision="binary", task="embedding")

    def test_an_active_policy_changes_the_model_measurably(self, sentence_batches):
        model = tiny_model("bert").base_model
        head = SentenceEmbedding("recall_at_10", Pooling("mean", normalize=True, declared=False, source="test"))
        batches = [{**b, EMBEDDING_TARGET: head(model, b).detach()} for b in sentence_batches[:2]]
        quantized = head.for_policy(self.active())
        assert head.for_policy(Policy()) is head and quantized.precision == "binary"
        outputs = head.outputs(model, batches)
        assert head.scores(outputs, batches)["recall_at_10"] == 1.0 > quantized.scores(outputs, batches)["recall_at_10"]
        assert head.index_bytes(384) == 4 * 384 and quantized.index_bytes(384) == 384 // 8


class TestRecovery(TechniqueContract):
    technique = Recovery

    def make(self, model, batches):
        teacher = tiny_model("bert", seed=1)
        with torch.no_grad():
            logits = [teacher(**{k: v for k, v in batch.items() if k != "labels"}).logits for batch in batches[:2]]
        settings = RecoveryConfig(eval_every=50, hidden_weight=0.0, attention_weight=0.0)
        return Recovery(Distillation(copy.deepcopy(teacher), batches[:2], logits, batches[:1], settings))

    def active(self):
        return Policy(recovery_steps=2)


def test_the_pipeline_runs_in_stage_order_and_a_technique_that_needs_data_needs_prepare(sentence_batches):
    everything = Policy(layers={ALL_BLOCKS: LayerSpec(bits=8, prune_ratio=0.5)}, heads={0: 2}, vocab_rows=2000, recovery_steps=2)
    vocabulary, recovery = TestVocabularyPruning().make(tiny_model("bert"), sentence_batches), TestRecovery().make(tiny_model("bert"), sentence_batches)
    pipeline = float_techniques(everything, prepare=lambda technique: vocabulary, recovery=recovery)
    assert [type(t) for t in pipeline] == [StructuredPruning, VocabularyPruning, MagnitudePruning, Recovery]
    assert all(t.stage < Quantization.stage for t in TECHNIQUES if t is not Quantization)  # quantization rounds what is left
    with pytest.raises(ValueError, match="asks for vocabulary_pruning, which needs the task's data: pass prepare="):
        float_techniques(everything)
    assert [type(t) for t in DEFAULT_TECHNIQUES] == [StructuredPruning, MagnitudePruning, OutputQuantization, Quantization]


def test_compress_applies_what_the_policy_asks_and_refuses_a_vocabulary_without_the_tasks_data(sentence_batches):
    from autocompress.techniques import compress

    model, policy = tiny_model("bert"), Policy(heads={0: 2}, vocab_rows=2000, layers={ALL_BLOCKS: LayerSpec(bits=8)})
    with pytest.raises(ValueError, match="asks for vocabulary_pruning, which needs the task's data: pass prepare="):
        compress(model, policy)
    vocabulary = TestVocabularyPruning().make(model, sentence_batches)
    compressed = compress(model, policy, prepare=lambda technique: vocabulary, calibration=sentence_batches[0])
    assert compressed.get_input_embeddings().weight.shape[0] == 2000 and compressed.config.num_attention_heads == 4
    assert compressed.bert.encoder.layer[0].attention.self.query.out_features == 2 * 8  # 2 heads of 8 kept


class WeightRounding(Technique):
    """A technique written only here, to show what adding one takes: this class and its registration, nothing else."""

    name = "weight_rounding"
    stage = 35
    fields = {"round_decimals": {"type": ["integer", "null"], "minimum": 0, "default": None,
                                 "description": "decimals each planned Linear's weights keep; null: as they are"}}

    @classmethod
    def sample(cls, trial, space, *, num_blocks):
        return {"round_decimals": trial.suggest_categorical("round_decimals", [None, 1])}

    def apply(self, model, policy, plan, *, calibration=None):
        modules = dict(model.named_modules())
        with torch.no_grad():
            for name in plan if policy.round_decimals is not None else ():
                modules[name].weight.copy_(modules[name].weight.round(decimals=policy.round_decimals))


@pytest.fixture
def weight_rounding_registered(monkeypatch):
    from autocompress import policy as policy_module
    from autocompress.techniques import _compress

    monkeypatch.setattr(_compress, "TECHNIQUES", (*TECHNIQUES, WeightRounding))  # the one registration line
    policy_module._shared_defaults.cache_clear()
    yield
    policy_module._shared_defaults.cache_clear()


class TestWeightRounding(TechniqueContract):
    """The contract suite passes for a technique that exists only in this file, once registered."""

    technique = WeightRounding

    @pytest.fixture(autouse=True)
    def _registered(self, weight_rounding_registered):
        pass

    def active(self):
        return Policy(round_decimals=1)

    def test_the_policy_format_sampler_and_compress_carry_it_with_no_other_edit(self, tmp_path):
        from autocompress.space import sample_policy
        from autocompress.techniques import compress

        policy = Policy(round_decimals=1, vocab_rows=2000)
        assert policy.to_dict()["techniques"]["weight_rounding"] == {"round_decimals": 1}
        assert Policy.load(policy.save(tmp_path / "p.json")) == policy
        assert policy.params([["a"]], heads=4, ffn=64)["round_decimals"] == 1
        trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
        sampled = sample_policy(trial, OPEN_SPACE, prefix="bert.encoder.layer", num_blocks=2)
        assert sampled.round_decimals == trial.params["round_decimals"]
        model = tiny_model("bert")
        rounded = compress(model, Policy(round_decimals=1)).bert.encoder.layer[0].attention.self.query.weight
        assert torch.equal(rounded, rounded.round(decimals=1)) and not torch.equal(rounded, model.bert.encoder.layer[0].attention.self.query.weight)
        with pytest.raises(ValueError, match="weight_rounding: round_decimals: -1 is less than the minimum of 0"):
            Policy(round_decimals=-1)

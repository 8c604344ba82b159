"""Sampling policies from a search space, and the uniform policies a new study starts from."""

from __future__ import annotations

import optuna
import pytest

from autocompress.config import SpaceConfig
from autocompress.space import block_pattern, sample_policy, uniform_starts
from autocompress.techniques import evenly_spaced

PREFIX = "bert.encoder.layer"
SPACE = SpaceConfig(weight_bits=[4, 8, 32], group_size=[None, 32, 64], prune_ratios=[0.0, 0.5], embedding_bits=[4, 8, 32])


def sampled(space: SpaceConfig, enqueued: list[dict]) -> list:
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    for params in enqueued:
        study.enqueue_trial(params)
    policies = []

    def objective(trial):
        policies.append(sample_policy(trial, space, prefix=PREFIX, num_blocks=6))
        return 0.0, 0.0

    study.optimize(objective, n_trials=len(enqueued))
    return policies


def test_sample_policy_addresses_each_block_with_its_own_decisions():
    params = {f"block{i}.bits": [4, 8, 32][i % 3] for i in range(6)} | {f"block{i}.prune_ratio": 0.5 * (i % 2) for i in range(6)}
    trial = optuna.trial.FixedTrial(params | {"scheme": "linear", "group_size": 32, "embedding_bits": 8, "recovery_steps": 0, "vocab_rows": None})
    policy = sample_policy(trial, SPACE, prefix=PREFIX, num_blocks=6)
    assert policy.spec_for(f"{PREFIX}.4.attention.self.query").bits == 8
    assert policy.spec_for(f"{PREFIX}.3.output.dense").prune_ratio == 0.5
    assert policy.layers[block_pattern(PREFIX, 2)].bits == 32
    assert (policy.group_size, policy.embedding_bits, policy.kept_blocks) == (32, 8, None)


def test_uniform_starts_are_the_first_trials_and_fit_the_space():
    starts = uniform_starts(SPACE, num_blocks=6)
    policies = sampled(SPACE, starts)
    assert [{s.bits for s in p.layers.values()} for p in policies] == [{8}, {4}]
    assert all(s.prune_ratio == 0.0 for p in policies for s in p.layers.values())
    int8, int4 = policies
    assert (int8.group_size, int8.embedding_bits) == (None, 8)  # per channel: ONNX Runtime's MatMulInteger
    assert (int4.group_size, int4.embedding_bits) == (32, 4)  # the finest group, the 4-bit embedding


def test_uniform_starts_respect_a_narrow_space():
    space = SpaceConfig(weight_bits=[8, 32], group_size=[64], prune_ratios=[0.25, 0.5], embedding_bits=[32])
    (start,) = uniform_starts(space, num_blocks=6)
    assert start["group_size"] == 64 and start["embedding_bits"] == 32 and "block0.prune_ratio" not in start
    assert sampled(space, [start])[0].layers[block_pattern(PREFIX, 0)].bits == 8


@pytest.mark.parametrize(("count", "kept"), [(1, (5,)), (2, (2, 5)), (3, (1, 3, 5)), (6, (0, 1, 2, 3, 4, 5))])
def test_evenly_spaced_keeps_the_last_block(count, kept):
    assert evenly_spaced(count, 6) == kept


def test_evenly_spaced_rejects_impossible_depths():
    with pytest.raises(ValueError, match="1..6"):
        evenly_spaced(7, 6)


def test_every_scalar_technique_setting_is_a_space_key_read_from_the_shipped_schema():
    """A technique's settings are searchable with no edit to config: the space offers them from the policy schema it ships."""
    from autocompress.config import POLICY_SCHEMA
    from autocompress.config._space import OWN_KEYS, setting_keys
    from autocompress.policy import SCHEMA_PATH, assemble_schema
    from autocompress.techniques import TECHNIQUES

    assert POLICY_SCHEMA == SCHEMA_PATH
    generated = set(setting_keys(assemble_schema()))
    scalar = {name for technique in TECHNIQUES for name, schema in technique.fields.items() if schema.get("type") not in ("object", ["array", "null"])}
    assert generated == scalar - set(OWN_KEYS) and generated <= set(SpaceConfig.model_fields)
    assert {"vocab_rows", "output_precision", "recovery_steps"} <= generated and "global_prune_ratio" not in SpaceConfig.model_fields
    assert SpaceConfig(vocab_rows=[6000, None]).vocab_rows == [6000, None] and SpaceConfig().vocab_rows == [None]
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        SpaceConfig(vocab_rows=[0])

import re

import pytest

from autocompress.policy import LayerSpec, Policy


def test_json_round_trip_keeps_every_field(tmp_path):
    policy = Policy(
        layers={"re:bert\\.encoder\\.layer\\.0\\..*": LayerSpec(bits=4, prune_ratio=0.5), "bert.pooler.dense": LayerSpec(bits=8)},
        scheme="kmeans",
        group_size=32,
        embedding_bits=8,
        heads={0: 6},
        ffn={1: 768},
        kept_blocks=(0, 1, 3),
    )
    assert Policy.from_json(policy.to_json()) == policy
    assert Policy.load(policy.save(tmp_path / "p.json")) == policy


def test_exact_name_wins_over_pattern_and_first_pattern_wins():
    policy = Policy(
        layers={
            "re:.*layer\\.0\\..*": LayerSpec(bits=4),
            "re:.*query": LayerSpec(bits=2),
            "bert.encoder.layer.0.attention.self.query": LayerSpec(bits=8),
        }
    )
    assert policy.spec_for("bert.encoder.layer.0.attention.self.query").bits == 8
    assert policy.spec_for("bert.encoder.layer.0.attention.self.key").bits == 4
    assert policy.spec_for("bert.encoder.layer.1.attention.self.query").bits == 2
    assert policy.spec_for("classifier") == LayerSpec()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": {"x": LayerSpec(bits=4)}, "version": 2}, "version 2"),
        ({"scheme": "fancy"}, "scheme"),
        ({"global_prune_ratio": 1.0}, "global_prune_ratio"),
        ({"embedding_bits": 6}, "embedding_bits"),
        ({"layers": {"x": LayerSpec(prune_ratio=0.5)}, "global_prune_ratio": 0.5}, "not both"),
    ],
)
def test_invalid_policies_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Policy(**kwargs)


def test_layer_spec_rejects_unknown_bits():
    with pytest.raises(ValueError, match="bits"):
        LayerSpec(bits=12)


def test_unknown_field_in_json_is_rejected():
    with pytest.raises(ValueError, match="policy: \(top level\): Additional properties are not allowed \(.bitz. was unexpected\)"):
        Policy.from_dict({"layers": {}, "bitz": 3})


def test_params_have_one_key_set_per_model_whatever_the_policy():
    blocks = [[f"layer.{i}.query", f"layer.{i}.dense"] for i in range(3)]
    plain = Policy().params(blocks, heads=12, ffn=1536)
    student = Policy(
        layers={"re:layer\\.0\\..*": LayerSpec(bits=4), "layer.1.query": LayerSpec(bits=8, prune_ratio=0.5)},
        heads={0: 6}, ffn={2: 768}, kept_blocks=(0, 2),
    ).params(blocks, heads=12, ffn=1536)
    assert set(plain) == set(student)  # MLflow's compare view needs the same keys on every run
    assert (student["block0.bits"], student["block1.bits"], student["block2.bits"]) == (4, "mixed", 32)
    assert (student["block1.prune_ratio"], student["block0.prune_ratio"]) == ("mixed", 0.0)
    assert (student["block0.heads"], student["block1.heads"], student["block2.ffn"], student["block0.ffn"]) == (6, 12, 768, 1536)
    assert [student[f"block{i}.kept"] for i in range(3)] == [True, False, True] and student["kept_blocks"] == 2
    assert plain["kept_blocks"] == 3 and all(plain[f"block{i}.kept"] for i in range(3))


def test_the_shipped_schema_describes_every_field_and_names_the_one_at_fault(tmp_path):
    import json

    from autocompress.policy import SCHEMA_PATH, PolicyError

    schema = json.loads(SCHEMA_PATH.read_text())
    assert set(schema["properties"]) == set(Policy.__dataclass_fields__)  # the file and the class cannot drift apart
    full = Policy(layers={"re:.*\\.0\\..*": LayerSpec(bits=4, prune_ratio=0.25)}, scheme="linear", group_size=32, embedding_bits=8,
                  heads={0: 6}, ffn={1: 768}, kept_blocks=(0, 2), recovery_steps=100, vocab_rows=8000)
    import jsonschema

    jsonschema.validate(full.to_dict(), schema)  # what we write, the schema accepts
    assert Policy.load(full.save(tmp_path / "p.json")) == full
    for bad, message in [
        ({"layers": {"re:.*": {"bits": 9}}}, "p.json: layers.re:.*.bits: 9 is not one of"),
        ({"version": 2}, "p.json: policy version 2 is not supported"),
        ({"ffn": {"1": -4}}, "p.json: ffn.1: -4 is less than the minimum of 0"),
        ({"group": 32}, "'group' was unexpected"),
    ]:
        (tmp_path / "p.json").write_text(json.dumps(bad))
        with pytest.raises(PolicyError, match=re.escape(message)):
            Policy.load(tmp_path / "p.json")
    (tmp_path / "p.json").write_text("{not json")
    with pytest.raises(PolicyError, match="p.json: not JSON"):
        Policy.load(tmp_path / "p.json")

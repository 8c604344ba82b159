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
        ({"layers": {"x": LayerSpec(bits=4)}, "version": 1}, "not 1"),
        ({"scheme": "fancy"}, "scheme"),
        ({"global_prune_ratio": 1.0}, "global_prune_ratio"),
        ({"embedding_bits": 6}, "embedding_bits"),
        ({"layers": {"x": LayerSpec(prune_ratio=0.5)}, "global_prune_ratio": 0.5}, "not both"),
        ({"vocab_rows": 0}, "vocabulary_pruning: vocab_rows: 0 is less than the minimum of 1"),
        ({"heads": {0: -1}}, "structured_pruning: heads.0: -1 is less than the minimum of 0"),
    ],
)
def test_invalid_policies_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Policy(**kwargs)


def test_a_setting_no_technique_owns_is_refused_and_a_policy_is_frozen():
    with pytest.raises(TypeError, match=r"unknown setting\(s\) \['vocab_row'\]; the registered techniques own \[.*'vocab_rows'"):
        Policy(vocab_row=6000)
    policy = Policy(vocab_rows=6000)
    with pytest.raises(AttributeError, match="frozen"):
        policy.vocab_rows = 7000
    with pytest.raises(AttributeError, match="no setting 'vocab_row'"):
        policy.vocab_row  # noqa: B018
    assert policy.replace(vocab_rows=7000) == Policy(vocab_rows=7000) and policy.vocab_rows == 6000


def test_a_policy_survives_pickling_and_copying_as_ray_and_optuna_move_it():
    import copy
    import pickle

    policy = Policy(layers={"re:.*": LayerSpec(bits=4)}, heads={0: 2}, kept_blocks=(0, 2), vocab_rows=6000, task="embedding")
    assert pickle.loads(pickle.dumps(policy)) == policy == copy.deepcopy(policy)
    assert "vocab_rows=6000" in repr(policy) and "scheme" not in repr(policy)  # a repr shows what differs from the defaults


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


def test_the_shipped_schema_is_assembled_from_the_techniques_and_names_the_field_at_fault(tmp_path):
    import json

    from autocompress.policy import SCHEMA_PATH, PolicyError, assemble_schema
    from autocompress.techniques import TECHNIQUES

    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema == assemble_schema(), 'regenerate it: python -c "from autocompress.policy import write_schema; write_schema()"'
    assert list(schema["properties"]["techniques"]["properties"]) == [technique.name for technique in TECHNIQUES]
    owned = [name for technique in TECHNIQUES for name in technique.fields]
    assert sorted(owned) == sorted(Policy().settings) and len(owned) == len(set(owned))  # each setting in one section
    full = Policy(layers={"re:.*\\.0\\..*": LayerSpec(bits=4, prune_ratio=0.25)}, scheme="linear", group_size=32, embedding_bits=8,
                  heads={0: 6}, ffn={1: 768}, kept_blocks=(0, 2), recovery_steps=100, vocab_rows=8000)
    import jsonschema

    jsonschema.validate(full.to_dict(), schema)  # what we write, the schema accepts
    assert full.to_dict()["techniques"]["vocabulary_pruning"] == {"vocab_rows": 8000}
    assert Policy.load(full.save(tmp_path / "p.json")) == full
    for bad, message in [
        ({"version": 2, "layers": {"re:.*": {"bits": 9}}}, "p.json: layers.re:.*.bits: 9 is not one of"),
        ({"version": 3}, "p.json: policy version 3 is not supported"),
        ({"version": 2, "techniques": {"structured_pruning": {"ffn": {"1": -4}}}}, "p.json: techniques.structured_pruning.ffn.1: -4 is less than the minimum of 0"),
        ({"version": 2, "techniques": {"quantization": {"group": 32}}}, "'group' was unexpected"),
        ({"version": 2, "techniques": {"pruning": {}}}, "'pruning' was unexpected"),
        ({"version": 2, "task": "translation"}, "p.json: task: 'translation' is not one of ['embedding', 'sequence-classification']"),
        ({"group": 32}, "'group' was unexpected"),  # a version-1 file is checked against the version-1 schema
    ]:
        (tmp_path / "p.json").write_text(json.dumps(bad))
        with pytest.raises(PolicyError, match=re.escape(message)):
            Policy.load(tmp_path / "p.json")
    (tmp_path / "p.json").write_text("{not json")
    with pytest.raises(PolicyError, match="p.json: not JSON"):
        Policy.load(tmp_path / "p.json")


def test_a_version_1_file_a_search_wrote_loads_converted_with_a_one_line_warning(tmp_path):
    """The G1 headline's chosen policy, written by the release before version 2, as a user keeps it."""
    import json
    from pathlib import Path

    from autocompress.deprecation import RenamedWarning
    from autocompress.policy import field_of

    headline = json.loads((Path(__file__).resolve().parents[1] / "bench" / "results" / "headline.json").read_text())
    old = headline["g1_within_1pt"]["policy"]
    assert old["version"] == 1 and old["vocab_rows"] and old["heads"]
    (tmp_path / "best_policy.json").write_text(json.dumps(old))
    with pytest.warns(RenamedWarning, match=r"best_policy.json: policy version 1 read as version 2") as caught:
        policy = Policy.load(tmp_path / "best_policy.json")
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert policy.vocab_rows == old["vocab_rows"] and policy.kept_blocks == tuple(old["kept_blocks"])
    assert policy.heads == {int(k): v for k, v in old["heads"].items()} and policy.embedding_bits == old["embedding_bits"]
    assert policy.layers == {name: LayerSpec(**spec) for name, spec in old["layers"].items()}
    assert policy.task == "sequence-classification"
    new = policy.to_dict()
    assert new["version"] == 2 and all(field_of(new, name) == field_of(old, name) for name in old if name not in ("layers", "version", "heads", "ffn", "kept_blocks"))
    assert Policy.from_dict(new) == policy  # and round-trips as version 2


def test_field_of_reads_a_field_from_a_policy_dict_of_either_version():
    from autocompress.policy import field_of

    policy = Policy(recovery_steps=40)
    assert field_of(policy.to_dict(), "recovery_steps") == 40
    assert field_of({"version": 1, "recovery_steps": 40}, "recovery_steps") == 40
    assert field_of({"recovery_steps": 40}, "recovery_steps") == 40  # version 1 wrote no version at first
    assert field_of(Policy().to_dict(), "missing", 7) == 7

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
    with pytest.raises(ValueError, match="unknown policy field"):
        Policy.from_dict({"layers": {}, "bitz": 3})

"""check_space: a space the model cannot satisfy fails before training, in one line naming the field and value."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from transformers import AutoConfig, BertConfig, DebertaConfig

from autocompress.config import ConfigError, load_config, parse_config
from autocompress.controller.space_check import SpaceSummary, check_space
from autocompress.models.loading import resolve_model_path

SPACES = sorted((Path(__file__).resolve().parents[2] / "search_spaces").glob("*.yaml"))


@pytest.fixture(scope="module")
def minilm():
    """all-MiniLM-L6-v2: 6 blocks, 12 heads of 32, hidden 384, FFN 1536."""
    return AutoConfig.from_pretrained(resolve_model_path("default"))


def space(**choices) -> object:
    return parse_config({"space": choices}, source="spaces/bad.yaml")


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_shipped_spaces_pass(path, minilm):
    summary = check_space(load_config(path), minilm)
    assert isinstance(summary, SpaceSummary)
    assert (summary.num_blocks, summary.num_heads, summary.head_dim) == (6, 12, 32)
    assert (summary.hidden_size, summary.ffn_width) == (384, 1536)
    assert summary.policies >= 2 and len(summary.describe().splitlines()) >= 2


@pytest.mark.parametrize(
    "choices, field, value",
    [
        ({"heads": [0, 6], "weight_bits": [4, 32]}, "space.heads", "0"),
        ({"ffn_widths": [0], "weight_bits": [8]}, "space.ffn_widths", "0"),
        ({"heads": [13]}, "space.heads", "13"),
        ({"ffn_widths": [2000]}, "space.ffn_widths", "2000"),
        ({"num_blocks": [3, 7]}, "space.num_blocks", "7"),
        ({"vocab_rows": [None, 30522]}, "space.vocab_rows", "30522"),  # MiniLM has 30,522 rows: keeping all is null
        # 6 heads x 32 = 192 columns: not a multiple of 128 (384 and 1536 are).
        ({"heads": [6], "group_size": [128], "weight_bits": [4]}, "space.group_size", "128"),
        # 4 heads x 32 = 128 columns: not a multiple of 48 (384 and 1536 are).
        ({"heads": [4, 12], "group_size": [48], "weight_bits": [8]}, "space.group_size", "48"),
        # 24 divides every width, but its largest power-of-two factor is 8 < MatMulNBits' minimum block of 16.
        ({"group_size": [24], "weight_bits": [4]}, "space.group_size", "24"),
        # Per channel (group = in_features) at 4 bits: 1000 = 8 x 125, again no block >= 16.
        ({"ffn_widths": [1000, 1536], "group_size": [None], "weight_bits": [4, 8]}, "space.group_size", "null"),
        # The simulation skips the kernel rules, but quantize_weight still needs the group to divide 192.
        (
            {"heads": [6], "group_size": [128], "weight_bits": [3], "simulation_only": True},
            "space.group_size",
            "128",
        ),
    ],
)
def test_bad_spaces_fail_in_one_line(choices, field, value, minilm):
    overrides = {"latency": {"backend": "torch"}} if choices.get("simulation_only") else {}
    config = parse_config({"space": choices, **overrides}, source="spaces/bad.yaml")
    with pytest.raises(ConfigError) as error:
        check_space(config, minilm)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"spaces/bad.yaml: {field}: {value} ")
    assert "allowed" in message


def test_zero_heads_are_fine_without_quantization(minilm):
    check_space(space(heads=[0, 12], ffn_widths=[0, 768], weight_bits=[16, 32]), minilm)


def test_simulation_only_skips_kernel_rules(minilm):
    """group 24 at 4 bits divides every width: the torch simulation runs it, ONNX Runtime would not."""
    config = parse_config(
        {"space": {"group_size": [24], "weight_bits": [4], "simulation_only": True}, "latency": {"backend": "torch"}}
    )
    check_space(config, minilm)


def test_allowed_groups_are_listed(minilm):
    with pytest.raises(ConfigError, match=r"allowed group_size for this space: \[null, 16, 32, 48, 64, 96, 192\]"):
        check_space(space(heads=[6, 12], group_size=[128], weight_bits=[4, 8]), minilm)


def test_structured_choices_need_a_family_with_an_adapter():
    with pytest.raises(ConfigError, match=r"^spaces/bad.yaml: space.heads: \[6\] .*'distilbert'.*not 'deberta'") as error:
        check_space(space(heads=[6]), DebertaConfig())
    assert "\n" not in str(error.value)


def test_4bit_embedding_needs_a_power_of_two_block():
    """A 360-wide row has 8 as its largest power-of-two factor: no GatherBlockQuantized block."""
    model = BertConfig(hidden_size=360, num_attention_heads=12, intermediate_size=1440, num_hidden_layers=2)
    ok = space(weight_bits=[8, 32], embedding_bits=[8, 32])
    check_space(ok, model)
    with pytest.raises(ConfigError, match=r"^spaces/bad.yaml: space.embedding_bits: 4 .*allowed"):
        check_space(space(weight_bits=[8, 32], embedding_bits=[4, 32]), model)


def test_policy_count_is_the_product_of_choice_counts(minilm):
    choices = dict(
        weight_bits=[4, 8],
        group_size=[None, 32],
        prune_ratios=[0.0, 0.5, 0.25],
        embedding_bits=[8, 32],
        heads=[6, 12],
        num_blocks=[3, 6],
        vocab_rows=[None, 8000, 12000],
    )
    summary = check_space(space(**choices), minilm)
    per_block = 2 * 3 * 2  # bits, prune ratio, heads
    once = 2 * 1 * 2 * 2 * 1 * 3  # group, scheme, embedding, num_blocks, recovery_steps, vocab_rows
    assert summary.policies == per_block**6 * once == math.prod([2, 3, 2] * 6 + [2, 1, 2, 2, 1, 3])
    assert summary.decisions == 3 * 6 + 6
    assert summary.in_features == (192, 384, 1536)
    assert "6 blocks" in summary.describe()

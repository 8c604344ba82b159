"""A whole search on a tiny random model of each encoder family: teacher, structured and quantized
trial with distillation (hidden states and attention), lowering, verification, timing, front, ONNX export."""

from __future__ import annotations

import json

import onnx
import pytest
import yaml
from families import FAMILIES, TINY_TASK, TINY_TEACHER, save_tiny

from autocompress.cli import main
from autocompress.models.families import adapter_for
from autocompress.policy import Policy

pytestmark = pytest.mark.slow

SEARCHED = ("bert", "roberta", "distilbert", "albert", "electra", "mpnet", "deberta-v2")
INTEGER_KERNELS = {"MatMulNBits", "MatMulInteger", "DynamicQuantizeMatMul"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One folder (and MLflow store) for every family's search: the store is created once."""
    return tmp_path_factory.mktemp("families")


@pytest.mark.parametrize("family", SEARCHED)
def test_a_short_search_runs_on_every_family(family, workdir, data_root, monkeypatch):
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(workdir / "cache"))
    adapter = adapter_for(FAMILIES[family])
    space = {"weight_bits": [4], "group_size": [16], "prune_ratios": [0.25], "embedding_bits": [8], "ffn_widths": [32],
             "recovery_steps": [2]}
    if adapter.prunes_heads:
        space["heads"] = [2]
    if adapter.drops_blocks:
        space["num_blocks"] = [1]
    config = {
        "model": str(save_tiny(family, workdir / family)),
        "task": {"data_root": str(data_root), **TINY_TASK},
        "teacher": TINY_TEACHER,
        "space": space,
        "recovery": {"train_subset": 16, "batch_size": 8, "eval_every": 2, "eval_subset": 16, "pruner": "none",
                     "hidden_weight": 1.0, "attention_weight": 1.0},
        "search": {"n_trials": 1, "study_name": family, "storage": f"sqlite:///{family}.db", "start_uniform": False,
                   "constraints": {"max_accuracy_drop": None}},
        "latency": {"sentences": 2, "warmup": 1, "repeats": 2, "rounds": 1},
        "tracking": {"uri": "sqlite:///mlflow.db", "experiment": family, "registry": "none", "export_formats": ["onnx"]},
        "output": f"out-{family}",
    }
    path = workdir / f"{family}.yaml"
    path.write_text(yaml.safe_dump(config))

    assert main(["search", str(path)]) == 0
    out = workdir / f"out-{family}"
    (row,) = json.loads((out / "pareto.json").read_text())
    policy = Policy.from_dict(row["policy"])
    assert set(policy.ffn.values()) == {32} and policy.recovery_steps == 2
    assert set(policy.heads.values()) == ({2} if adapter.prunes_heads else set())
    assert policy.kept_blocks == ((1,) if adapter.drops_blocks else None)
    graph = onnx.load(out / row["artifact"])  # the verified artifact the trial was timed on
    assert INTEGER_KERNELS & {node.op_type for node in graph.graph.node}
    assert row["size_bytes"] == (out / row["artifact"]).stat().st_size and row["speedup"] > 0
    assert (out / "exports" / "onnx" / "model.onnx").is_file()

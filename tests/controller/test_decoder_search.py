"""A causal-lm search from YAML end to end on a tiny random Llama: every trial quantized, deployed as an ONNX Runtime
GenAI folder, scored and timed there; the study, MLflow, the front and the chosen folder; resume; bad configs refused
before any weight is loaded."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import mlflow
import numpy as np
import onnx
import optuna
import pytest
import torch
import transformers
import yaml
from decoder_families import SHAPE, write_tiny_gguf
from optuna.trial import TrialState
from transformers import AutoTokenizer

from autocompress.cli import main
from autocompress.controller import decoder_search, decoder_space
from autocompress.controller.pareto import BASELINE_ATTR
from autocompress.controller.study import directions
from autocompress.runtime.genai import genai_logits
from autocompress.tasks.causal_lm import CausalLanguageModeling
from autocompress.tasks.language_modeling import perplexity
from autocompress.techniques.decoder_policy import DecoderPolicy
from autocompress.techniques.decoder_sensitivity import allocate, allocated_policy, group_weights


def write_text(path, letters: int, seed: int) -> None:
    """Letters (one token each for the tiny GGUF's tokenizer) from a noisy recurrence: text a model is more or less surprised by."""
    rng, state, out = random.Random(seed), 0, []
    for _ in range(letters):
        state = (state * 7 + rng.randint(0, 3)) % 26
        out.append(chr(ord("a") + state))
    path.write_text("".join(out))


@pytest.fixture(scope="module")
def decoder_folder(tmp_path_factory):
    """A tiny random Llama of 64 tokens with the tiny GGUF's byte-level BPE tokenizer (which ONNX Runtime GenAI's tokenizer
    reads, so the registered model generates from text), and two texts."""
    folder = tmp_path_factory.mktemp("decoder")
    write_tiny_gguf(folder / "tiny.gguf")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file="tiny.gguf")
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(transformers.LlamaConfig(**SHAPE | {"vocab_size": len(tokenizer)}))
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    write_text(folder / "valid.txt", 1200, seed=0)
    write_text(folder / "test.txt", 600, seed=1)
    return folder


@pytest.fixture
def search_file(decoder_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)

    def write(**sections):
        config = {"model": str(decoder_folder / "model"),
                  "task": {"type": "causal-lm", "data_root": str(decoder_folder), "dev": "valid.txt", "test": "test.txt",
                           "max_length": 64, "dev_subset": 4, "test_subset": 4},
                  "decoder": {"calibration_windows": 4, "prompt_tokens": 16, "new_tokens": 8},
                  "latency": {"rounds": 2},
                  "search": {"n_trials": 3, "study_name": "lm", "storage": f"sqlite:///{tmp_path}/study.db", "sampler": "tpe"},
                  "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "lm"}}  # absolute: MLflow caches stores by URI
        for name, values in sections.items():
            config[name] = {**config.get(name, {}), **values}
        path = tmp_path / "search.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return write


def test_a_decoder_search_deploys_every_trial_to_genai_and_chooses_from_its_front(search_file, tmp_path, capsys, monkeypatch):
    import onnxruntime_genai as og

    study_url, mlflow_url = f"sqlite:///{tmp_path}/study.db", f"sqlite:///{tmp_path}/mlflow.db"
    config = search_file(tracking={"export_formats": ["onnx", "hf", "gguf", "llm-compressor"]})
    assert main(["search", str(config)]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^onnx: .*exports/onnx \| dev perplexity [\d.]+ reloaded vs [\d.]+ recorded \(same as the trial\)$", printed, re.M)
    assert re.search(r"^hf: .*exports/hf \| .*\(same as the trial\)$", printed, re.M)
    assert re.search(r"^llm-compressor: .*exports/llm-compressor \| .*\(same as the trial\)$", printed, re.M)
    assert "gguf: refused: model " in printed and "is not a GGUF file" in printed  # the other formats still exported
    study = optuna.load_study(study_name="lm", storage=study_url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert [d.name for d in study.directions] == [d.upper() for d in directions("perplexity")] == ["MINIMIZE", "MINIMIZE", "MINIMIZE"]
    teacher = study.user_attrs[BASELINE_ATTR]
    for trial in study.trials:
        metrics = trial.user_attrs["metrics"]
        assert trial.values[0] == metrics["dev_perplexity"] and trial.values[2] == pytest.approx(metrics["size_mb"])
        assert metrics["size_mb"] * 1e6 < teacher["size_bytes"] and 2 <= metrics["average_bits"] <= 8  # every layer quantized
        assert abs(metrics["dev_perplexity"] / metrics["simulated_dev_perplexity"] - 1) <= 0.02  # the lowering's check held
        assert metrics["decode_tokens_per_s"] > 0 and metrics["decode_speedup"] > 0
        assert "perplexity_increase" in trial.constraints

    rows = json.loads((tmp_path / "out" / "pareto.json").read_text())
    chosen = next(row for row in rows if row["chosen"])
    assert chosen["feasible"] and chosen["dev_perplexity"] <= (1 + 0.05) * teacher["dev_perplexity"]
    policy = DecoderPolicy.from_dict(json.loads((tmp_path / "out" / "best_policy.json").read_text()))
    assert policy.to_dict() == study.trials[chosen["trial"]].user_attrs["policy"]

    best = tmp_path / "out" / "best_model"
    graph = onnx.load(str(best / "model.onnx"), load_external_data=False)
    widths = {node.name.rpartition("_Q")[0]: next(a.i for a in node.attribute if a.name == "bits")
              for node in graph.graph.node if node.op_type == "MatMulNBits"}
    assert widths["/model/layers.0/attn/qkv_proj/MatMul"] == policy.attention_bits[0]  # the policy's widths, on the kernels
    assert widths["/model/layers.1/mlp/down_proj/MatMul"] == policy.mlp_bits[1]
    task = CausalLanguageModeling(_config(config))
    dev = list(task.load_split("dev"))
    assert perplexity(genai_logits(best), dev) == pytest.approx(chosen["dev_perplexity"], rel=1e-6)  # the folder that was scored
    model = og.Model(str(best))
    generator = og.Generator(model, og.GeneratorParams(model))
    generator.append_tokens(np.asarray(dev[0].input_ids[0, :8], dtype=np.int32))
    for _ in range(4):
        generator.generate_next_token()
    assert len(generator.get_sequence(0)) == 12
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_url)
    try:
        registered = mlflow.pyfunc.load_model("models:/autocompress-lm@champion")  # the chosen folder, generating through MLflow
        assert len(registered.predict(["abcab"], params={"max_new_tokens": 3})[0]) == 3
    finally:
        mlflow.set_tracking_uri(previous)

    client = mlflow.MlflowClient(mlflow_url)
    runs = client.search_runs([client.get_experiment_by_name("lm").experiment_id])
    children = {r.info.run_name: r for r in runs if r.info.run_name.startswith("trial-")}
    assert len(children) == 3 and all({"dev_perplexity", "decode_tokens_per_s", "size_mb"} <= set(r.data.metrics) for r in children.values())
    assert children[f"trial-{chosen['trial']}"].data.tags["pareto"] == "true"

    assert main(["pareto", "--storage", study_url, "--study-name", "lm"]) == 0
    assert f"{chosen['dev_perplexity']:8.3f}" in capsys.readouterr().out
    picked = tmp_path / "picked"
    assert main(["pick", "--storage", study_url, "--study-name", "lm", "--max-perplexity-increase", "0.05", "--rule",
                 "smallest_within_budget", "--format", "onnx", "hf", "--output", str(picked)]) == 0
    printed = capsys.readouterr().out
    number = int(re.search(r"^picked trial (\d+) \(smallest_within_budget\) of \d+ within the limits$", printed, re.M).group(1))
    within = [t for t in study.trials if t.user_attrs["metrics"]["perplexity_increase"] <= 0.05]
    assert study.trials[number].user_attrs["metrics"]["size_mb"] == min(t.user_attrs["metrics"]["size_mb"] for t in within)
    assert re.search(r"^onnx: .*picked/onnx \| dev perplexity [\d.]+ reloaded vs [\d.]+ recorded \(same as the trial\)$", printed, re.M)
    assert json.loads((picked / "hf" / "policy.json").read_text()) == study.trials[number].user_attrs["policy"]
    assert main(["pick", "--storage", study_url, "--study-name", "lm", "--max-latency-ms", "5"]) == 2
    assert ("study 'lm' is a causal-lm study: --max-latency-ms do not apply; limit it with --max-perplexity-increase, "
            "--min-tokens-per-s and --max-size-mb") in capsys.readouterr().err
    assert main(["pick", "--storage", study_url, "--study-name", "lm", "--min-tokens-per-s", "1e9"]) == 3

    released = next(t for t in study.trials if t.number != chosen["trial"])  # as retention deletes a dominated trial's folder
    shutil.rmtree(Path(released.user_attrs["artifact"]).parent, ignore_errors=True)
    assert main(["export", "--storage", study_url, "--study-name", "lm", "--trial", str(released.number), "--format", "onnx",
                 "--output", str(tmp_path / "again")]) == 0  # lowered again from the policy, checked as its trial was
    assert re.search(r"^onnx: .* reloaded vs [\d.]+ simulated \(same as the trial\)$", capsys.readouterr().out, re.M)
    assert perplexity(genai_logits(tmp_path / "again" / "onnx"), dev) == pytest.approx(released.user_attrs["metrics"]["dev_perplexity"], rel=1e-3)
    assert main(["export", "--storage", study_url, "--study-name", "lm", "--format", "gguf", "--output", str(tmp_path / "g")]) == 2
    assert "--format gguf: model " in capsys.readouterr().err and not (tmp_path / "g").exists()  # refused before any weight is loaded
    run_id = children[f"trial-{chosen['trial']}"].info.run_id
    assert main(["export", "--run", run_id, "--tracking-uri", mlflow_url, "--format", "hf", "--output", str(tmp_path / "run")]) == 0
    assert main(["export", str(tmp_path / "out" / "best_policy.json"), "--config", str(config), "--format", "hf", "--output",
                 str(tmp_path / "file")]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^hf: .*run/hf \| .* recorded \(same as the trial\)$", printed, re.M)
    assert re.search(r"^hf: .*file/hf \| .* simulated \(same as the trial\)$", printed, re.M)  # a bare policy file has no record

    references = sorted((tmp_path / "cache" / "work").glob("lm-*/references/*/model.onnx"))
    built = [path.stat().st_mtime for path in references]
    assert len(built) == 2
    def measured_again(context):
        raise AssertionError("the baseline is measured once per study")

    monkeypatch.setattr(decoder_search, "measure_baseline", measured_again)
    assert main(["search", str(config), "--n-trials", "1"]) == 0  # resume: one more trial, the references and baseline reused
    assert sum(t.state == TrialState.COMPLETE for t in optuna.load_study(study_name="lm", storage=study_url).trials) == 4
    assert [path.stat().st_mtime for path in references] == built


def test_average_bits_targets_get_widths_allocated_from_the_kl_measured_once_per_study(search_file, tmp_path, monkeypatch):
    config = search_file(decoder={"average_bits": [3.0, 5.5], "attention_bits": [2, 4, 8], "mlp_bits": [2, 4, 8], "head_bits": [4, 8],
                                  "group_sizes": [32], "methods": ["rtn"]}, search={"n_trials": 2},
                         latency={"rounds": 1}, tracking={"registry": "none", "export_formats": []})
    assert main(["search", str(config)]) == 0
    study = optuna.load_study(study_name="lm", storage=f"sqlite:///{tmp_path}/study.db")
    sensitivity = decoder_space.stored_sensitivity(study, 32)
    assert set(sensitivity) == {"0.attn", "0.mlp", "1.attn", "1.mlp", "lm_head"} and set(sensitivity["0.mlp"]) == {2, 4, 8}
    assert sensitivity["0.mlp"][2] > sensitivity["0.mlp"][8]
    teacher = transformers.AutoConfig.from_pretrained(_config(config).model)
    assert [t.params["average_bits"] for t in study.trials] == [3.0, 5.5]  # search.start_uniform: each target once first
    for trial in study.trials:
        target = trial.params["average_bits"]
        policy = DecoderPolicy.from_dict(trial.user_attrs["policy"])
        expected = allocated_policy(allocate(sensitivity, group_weights(teacher), target), method="rtn", group_size=32, blocks=2)
        assert policy == expected and trial.user_attrs["metrics"]["average_bits"] <= target + 1e-9

    def measured_again(context):
        raise AssertionError("the sensitivity is measured once per study")

    monkeypatch.setattr(decoder_search, "measure_sensitivities", measured_again)
    assert main(["search", str(config), "--n-trials", "1"]) == 0
    assert len(optuna.load_study(study_name="lm", storage=f"sqlite:///{tmp_path}/study.db").trials) == 3


def _config(path):
    from autocompress.config import load_config

    return load_config(path)


@pytest.mark.parametrize(("sections", "message"), [
    ({"decoder": {"group_sizes": [128]}}, "field 'decoder.group_sizes': [128] do not divide the layers' input widths [64, 128]; allowed: [32, 64]"),
    ({"task": {"dev_subset": 200}}, "field 'task.dev': valid.txt holds"),
    ({"task": {"test": "missing.txt"}}, "field 'task.test': text file"),
    ({"model": "default"}, "field 'model': model_type 'bert' is not a supported decoder"),
    ({"execution": {"workers": 2}}, "execution.workers must be 1"),
    ({"tracking": {"export_formats": ["torchao"]}}, "tracking.export_formats ['torchao']: a task.type 'causal-lm' search exports onnx, hf, gguf, llm-compressor"),
    ({"decoder": {"average_bits": [3.0, 5.0]}}, "field 'decoder.average_bits': [3.0] cannot be reached with the widths offered; "
                                                "allowed: 4.000 to 8.000 on this model"),
    ({"decoder": {"average_bits": [5.0], "per_block": False}}, "field 'decoder.average_bits': allocates a width per block"),
])
def test_a_bad_decoder_config_fails_in_one_line_before_any_weight_is_loaded(search_file, capsys, sections, message):
    config = search_file(**{k: v for k, v in sections.items() if k != "model"})
    if "model" in sections:
        config.write_text(config.read_text().replace(f"model: {yaml.safe_load(config.read_text())['model']}", "model: default"))
    assert main(["search", str(config), "--dry-run"]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error

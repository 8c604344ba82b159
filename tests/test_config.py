import json
import re
from typing import get_args

import pytest
import yaml
from pydantic import BaseModel

from autocompress.cli import main
from autocompress.config import DATA_ROOT_ENV, ConfigError, SearchConfig, load_config, parse_config
from autocompress.config_schema import describe_fields

REPO_SPACES = __import__("pathlib").Path(__file__).resolve().parents[1] / "search_spaces"


@pytest.mark.parametrize("name", ["minilm_sst2.yaml", "minilm_sst2_joint.yaml", "quickstart.yaml", "llm_quickstart.yaml", "smollm2.yaml"])
def test_shipped_search_spaces_load_and_point_at_real_data(name, monkeypatch):
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    config = load_config(REPO_SPACES / name)
    files = [config.task.train, config.task.dev, config.task.test]
    assert all(config.data_path(file).is_file() for file in files if file) and len([f for f in files if f]) >= 2


def test_misspelt_field_names_file_path_and_allowed(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("space:\n  weight_bitz: [4, 8]\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert str(path) in message and "space.weight_bitz" in message and "weight_bits" in message
    assert "\n" not in message


def test_bad_value_names_field_and_value(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("search:\n  sampler: annealing\n")
    with pytest.raises(ConfigError, match=r"search\.sampler.*annealing"):
        load_config(path)


def test_cli_exits_2_with_one_line_and_no_traceback(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("teacher:\n  stepz: 3\n")
    assert main(["search", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "teacher.stepz" in err and "Traceback" not in err


def test_invalid_yaml_and_missing_file(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("space: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_environment_variable_overrides_data_root(tmp_path, monkeypatch):
    config = parse_config({"task": {"data_root": "/nowhere"}}, source=str(tmp_path / "c.yaml"))
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    assert config.data_path("sst2/train.tsv") == tmp_path / "sst2" / "train.tsv"
    monkeypatch.delenv(DATA_ROOT_ENV)
    assert str(config.data_path("sst2/train.tsv")).startswith("/nowhere")


def test_prune_ratio_out_of_range_is_rejected():
    with pytest.raises(ConfigError, match="prune_ratios"):
        parse_config({"space": {"prune_ratios": [0.5, 1.5]}})


def test_recovery_may_distill_on_the_whole_train_split():
    assert parse_config({"recovery": {"train_subset": None}}).recovery.train_subset is None  # as final_training.train_subset
    with pytest.raises(ConfigError, match=r"recovery\.train_subset"):
        parse_config({"recovery": {"train_subset": 0}})


def test_final_trainings_may_add_intermediate_layer_targets_the_proxy_trials_skip():
    config = parse_config({"recovery": {"hidden_weight": 0.0, "attention_weight": 0.2, "alpha": 0.3},
                           "search": {"final_training": {"hidden_weight": 1.0}}})
    final = config.search.final_training.recovery(config.recovery)
    assert (final.hidden_weight, final.attention_weight, final.alpha) == (1.0, 0.2, 0.3)  # unset weights stay recovery's
    assert config.recovery.hidden_weight == 0.0
    with pytest.raises(ConfigError, match=r"search\.final_training\.hidden_weight"):
        parse_config({"search": {"final_training": {"hidden_weight": -1}}})


def _models(annotation=SearchConfig) -> set[type[BaseModel]]:
    """``SearchConfig`` and every model nested in it, however deep (also inside ``X | None`` or ``list[X]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        found = {annotation}
        for field in annotation.model_fields.values():
            found |= _models(field.annotation)
        return found
    return {model for arg in get_args(annotation) for model in _models(arg)}


def test_every_field_of_every_model_is_documented():
    models = _models()
    assert len(models) >= 9
    undocumented = [f"{m.__name__}.{name}" for m in models for name, f in m.model_fields.items() if not (f.description or "").strip()]
    assert not undocumented


def test_describe_fields_lists_every_leaf_with_type_default_and_allowed_values():
    docs = {doc.path: doc for doc in describe_fields()}
    assert "source" not in docs and "search.constraints" not in docs
    assert len(docs) == sum(1 for m in _models() for name, f in m.model_fields.items() if name != "source" and not _models(f.annotation))
    drop = docs["search.constraints.max_accuracy_drop"]
    assert (drop.section, drop.type, drop.default, drop.allowed) == ("search.constraints", "float | null", 0.01, ">= 0")
    assert "fraction" in drop.description
    assert docs["search.sampler"].choices == ["nsga2", "tpe", "random"]
    assert docs["task.max_length"].allowed == "[8, 512]" and docs["teacher.warmup_ratio"].allowed == "[0, 1)"
    assert docs["space.weight_bits"].default == [4, 8, 32] and "16" in docs["space.weight_bits"].allowed
    assert docs["latency.backend"].choices == ["onnxruntime", "torch"]


def test_config_schema_prints_a_table_grouped_by_section(capsys):
    assert main(["config", "--schema"]) == 0
    lines = capsys.readouterr().out.splitlines()
    (row,) = [i for i, line in enumerate(lines) if line.split()[:1] == ["search.constraints.max_accuracy_drop"]]
    assert lines[row].split()[1:] == ["float", "|", "null", "0.01", ">=", "0"]
    description = []
    for line in lines[row + 1 :]:
        if not line.startswith("      "):
            break
        description.append(line.strip())
    assert "fraction" in " ".join(description)
    (sampler,) = [line for line in lines if line.split()[:1] == ["search.sampler"]]
    assert "nsga2, tpe, random" in sampler
    assert any(line.startswith("search.constraints:") for line in lines)


def test_config_schema_json_parses(capsys):
    assert main(["config", "--schema", "--json"]) == 0
    fields = {field["path"]: field for field in json.loads(capsys.readouterr().out)}
    assert fields["search.constraints.max_accuracy_drop"]["default"] == 0.01
    assert fields["search.sampler"]["choices"] == ["nsga2", "tpe", "random"]
    assert all(field["description"] for field in fields.values())


@pytest.mark.parametrize(("old", "new", "value"), [
    ("validation", "test", "sst2/validation.tsv"),
    ("validation_subset", "test_subset", 50),
    ("hf_validation_split", "hf_test_split", "test"),
])
def test_a_renamed_task_field_still_loads_with_a_one_line_warning_naming_the_new_name(tmp_path, old, new, value):
    from autocompress.deprecation import RenamedWarning

    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({"task": {old: value}}))
    with pytest.warns(RenamedWarning, match=re.escape(f"old.yaml: 'task.{old}' is deprecated, read as 'task.{new}'")) as caught:
        config = load_config(path)
    assert getattr(config.task, new) == value and len(caught) == 1 and "\n" not in str(caught[0].message)
    path.write_text(yaml.safe_dump({"task": {old: value, new: value}}))
    with pytest.raises(ConfigError, match=re.escape(f"'task.{old}' is the old name of 'task.{new}'; give only 'task.{new}'")):
        load_config(path)


def test_the_cli_prints_a_renamed_field_as_one_line_before_refusing_the_rest(tmp_path):
    """In its own process, as a user runs it (pytest records warnings instead of printing them)."""
    import subprocess
    import sys

    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({"task": {"validation": "sst2/validation.tsv", "max_lenght": 64}}))
    done = subprocess.run([sys.executable, "-m", "autocompress", "search", str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip().splitlines()
    assert err[0] == f"autocompress: warning: {path}: 'task.validation' is deprecated, read as 'task.test'; rename it"
    assert err[1].startswith(f"autocompress: error: {path}: unknown field 'task.max_lenght'") and len(err) == 2


def test_gguf_is_a_decoder_export_and_decoders_take_only_their_formats():
    with pytest.raises(ConfigError, match=r"tracking.export_formats \['gguf'\]: a task.type 'sequence-classification' search exports onnx, hf, "):
        parse_config({"tracking": {"export_formats": ["onnx", "gguf"]}})
    decoder = parse_config({"model": "smollm2", "task": {"type": "causal-lm"}, "tracking": {"export_formats": ["gguf", "hf"]}})
    assert decoder.tracking.export_formats == ["gguf", "hf"]

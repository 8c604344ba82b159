import pytest

from autocompress.cli import main
from autocompress.config import DATA_ROOT_ENV, ConfigError, load_config, parse_config

REPO_SPACES = __import__("pathlib").Path(__file__).resolve().parents[1] / "search_spaces"


@pytest.mark.parametrize("name", ["minilm_sst2.yaml", "minilm_sst2_joint.yaml", "quickstart.yaml"])
def test_shipped_search_spaces_load_and_point_at_real_data(name, monkeypatch):
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    config = load_config(REPO_SPACES / name)
    assert config.data_path(config.task.train).is_file()
    assert config.data_path(config.task.validation).is_file()


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

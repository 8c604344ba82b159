"""Checks that run before anything trains: the model can be found, the data read, the space fits."""

import pytest

from autocompress.config import ConfigError, parse_config
from autocompress.controller.preflight import preflight
from autocompress.models.loading import model_config


def test_a_missing_model_folder_or_offline_id_is_one_line(tmp_path):
    for name in (str(tmp_path / "nowhere"), "no-such-org/no-such-model"):
        config = parse_config({"model": name}, source="x.yaml")
        with pytest.raises(ConfigError) as error:
            model_config(config)
        assert str(error.value).startswith("x.yaml: field 'model'") and "\n" not in str(error.value)


def test_preflight_reports_splits_and_an_untrained_teacher(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path))
    config = parse_config({"task": {"data_root": str(data_root), "dev_size": 500},
                           "search": {"storage": f"sqlite:///{tmp_path}/s.db"}}, source="x.yaml")
    checked = preflight(config)
    assert checked.rows == {"dev": 500, "test": 872, "train": 67349 - 500}
    assert not checked.teacher.ready and checked.study is None
    assert "not cached: fine-tunes 1000 steps" in checked.describe() and "500 dev rows" in checked.describe()
    assert "task: one text per row (sentence), 2 labels in id order: 0, 1 (the train split)" in checked.describe()


def test_a_teacher_keeps_its_own_head_size_and_a_mismatched_checkpoint_fails_early(tmp_path, data_root):
    from autocompress.models.loading import load_classifier
    from autocompress.tasks.teacher import Teacher

    load_classifier("default", num_labels=4).save_pretrained(tmp_path / "four")
    assert Teacher(path=tmp_path / "four", key="k", trained_now=False).load().classifier.out_features == 4  # was loaded with 2: crash
    config = parse_config({"task": {"data_root": str(data_root)}, "teacher": {"checkpoint": str(tmp_path / "four")},
                           "search": {"storage": f"sqlite:///{tmp_path}/s.db"}})
    with pytest.raises(ConfigError, match="has a 4-label head, the task has task.num_labels=2"):
        preflight(config)


def test_a_bad_core_budget_fails_in_one_line_before_anything_trains(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path))
    monkeypatch.setenv("AUTOCOMPRESS_CORES", "two")
    config = parse_config({"task": {"data_root": str(data_root)}, "search": {"storage": f"sqlite:///{tmp_path}/s.db"}}, source="x.yaml")
    with pytest.raises(ConfigError) as error:
        preflight(config)
    assert str(error.value) == "$AUTOCOMPRESS_CORES='two': allowed values: a whole number of cores (1 or more), or off"
    assert not (tmp_path / "teachers").exists()

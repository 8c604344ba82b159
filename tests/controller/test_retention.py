"""Disk kept bounded: trials off the front give their files back, and gc frees the folders of deleted studies only."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from autocompress.cli import main
from autocompress.config import parse_config
from autocompress.controller.retention import RECORD, collect, record_study, release_dominated
from autocompress.controller.study import UID_ATTR, study_uid


def study_with_folders(tmp_path, storage=None, name="s"):
    """Trials (speed-up, accuracy), both maximized: 0 and 2 on the front, 1 dominated by 0, 3 failed, 4 still running."""
    study = optuna.create_study(study_name=name, storage=storage, directions=["maximize", "maximize"])
    study.set_user_attr(UID_ATTR, f"uid{name}")
    workdir = tmp_path / "work" / study_uid(study)
    for values, state in (([2.0, 0.90], TrialState.COMPLETE), ([1.5, 0.85], TrialState.COMPLETE), ([3.0, 0.80], TrialState.COMPLETE),
                          (None, TrialState.FAIL), (None, TrialState.RUNNING)):
        number = len(study.trials)
        outside = tmp_path / "weights" / name / str(number)  # float weights kept where a worker wrote them
        outside.mkdir(parents=True)
        (outside / "model.safetensors").write_bytes(b"w" * 1000)
        study.add_trial(create_trial(values=values, state=state, user_attrs={"trained_model": str(outside)}))
        (workdir / f"trial-{number}").mkdir(parents=True)
        (workdir / f"trial-{number}" / "model.onnx").write_bytes(b"x" * 10_000)
    (workdir / "references").mkdir()
    return study, workdir


def test_only_the_front_and_unfinished_trials_keep_their_files(tmp_path):
    study, workdir = study_with_folders(tmp_path)
    freed = release_dominated(study, workdir)
    assert sorted(p.name for p in workdir.iterdir()) == ["references", "trial-0", "trial-2", "trial-4"]
    assert freed == 2 * (10_000 + 1000)  # the dominated trial's and the failed one's folder and weights
    assert sorted(p.name for p in (tmp_path / "weights" / "s").iterdir()) == ["0", "2", "4"]
    assert release_dominated(study, workdir) == 0  # nothing left to free


def test_gc_deletes_only_folders_whose_study_is_gone(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path))
    storage = f"sqlite:///{tmp_path}/studies.db"
    config = parse_config({"search": {"storage": storage}}, source="gc.yaml")
    folders = {}
    for name in ("kept", "deleted", "renewed"):
        study, folders[name] = study_with_folders(tmp_path, storage, name)
        record_study(folders[name], study, config)
    optuna.delete_study(study_name="deleted", storage=storage)
    optuna.delete_study(study_name="renewed", storage=storage)
    optuna.create_study(study_name="renewed", storage=storage).set_user_attr(UID_ATTR, "another")  # same name, a new study
    (tmp_path / "work" / "old-release-folder").mkdir()
    assert json.loads((folders["kept"] / RECORD).read_text())["storage"] == storage

    verdicts = {folder.path.name: folder for folder in collect()}
    assert {name: v.remove for name, v in verdicts.items()} == {"kept-uidkept": False, "deleted-uiddeleted": True,
                                                                 "renewed-uidrenewed": True, "old-release-folder": False}
    assert main(["gc", "--dry-run"]) == 0
    assert "would free" in capsys.readouterr().out and folders["deleted"].is_dir()
    assert main(["gc"]) == 0
    out = capsys.readouterr().out
    assert "freed 0.1 MB of 0.2 MB in 4 work folder(s)" in out and "is gone from" in out and "newer study of that name" in out
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["kept-uidkept", "old-release-folder"]


def test_a_storage_that_cannot_be_opened_keeps_its_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path))
    config = parse_config({"search": {"storage": "env:UNSET_STORE_VARIABLE"}}, source="gc.yaml")
    study = optuna.create_study(study_name="away")
    study.set_user_attr(UID_ATTR, "x")
    record_study(tmp_path / "work" / "away-x", study, config)
    (folder,) = collect()
    assert not folder.remove and "could not be opened" in folder.reason


@pytest.mark.parametrize("keep", ["front", "all"])
def test_keep_artifacts_is_a_tracking_choice(keep):
    assert parse_config({"tracking": {"keep_artifacts": keep}}).tracking.keep_artifacts == keep

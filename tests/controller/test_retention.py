"""Disk kept bounded: trials off the front give their files back, and gc frees the folders of deleted studies only."""

from __future__ import annotations

import json
import os
import shutil
import threading

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from autocompress.cli import main
from autocompress.config import parse_config
from autocompress.controller import retention
from autocompress.controller.retention import RECORD, collect, folder_bytes, record_study, release_dominated
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


def test_two_trials_ending_at_once_free_each_folder_once(tmp_path):
    """Parallel trials run their callbacks at the same moment; both release, neither fails, nothing is counted twice."""
    study, workdir = study_with_folders(tmp_path)
    start, freed, errors = threading.Barrier(2), [], []

    def release():
        start.wait()
        try:
            freed.append(release_dominated(study, workdir))
        except Exception as error:  # noqa: BLE001  reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=release) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and sorted(freed) == [0, 2 * (10_000 + 1000)]


def test_a_trial_that_finishes_while_the_front_is_read_is_judged_next_time_not_freed(tmp_path):
    """Parallel trials: one may finish between reading the front and listing the finished trials; it must not be freed unjudged."""
    study, workdir = study_with_folders(tmp_path)
    study.add_trial(create_trial(values=[9.0, 0.99], state=TrialState.COMPLETE))  # trial 5: dominates everything once it is seen
    (workdir / "trial-5").mkdir()
    (workdir / "trial-5" / "model.onnx").write_bytes(b"x" * 100)

    class Finishing:
        """The study as the search's threads see it: trial 5 is still running at the first read, finished at the next ones."""

        directions, reads = study.directions, 0

        def get_trials(self, deepcopy=True, states=None):
            self.reads += 1
            trials = [t if t.number != 5 or self.reads > 1 else create_trial(state=TrialState.RUNNING) for t in study.get_trials(deepcopy=False)]
            return [t for t in trials if states is None or t.state in states]

    release_dominated(Finishing(), workdir)
    assert (workdir / "trial-5" / "model.onnx").is_file()
    release_dominated(study, workdir)  # seen finished: it stays, as the front now
    assert sorted(p.name for p in workdir.iterdir()) == ["references", "trial-4", "trial-5"]


def test_a_folder_removed_by_another_process_while_it_is_sized_counts_what_was_left(tmp_path, monkeypatch):
    folder = tmp_path / "trial-1"
    (folder / "onnx").mkdir(parents=True)
    (folder / "onnx" / "model.onnx").write_bytes(b"x" * 10_000)
    (folder / "policy.json").write_bytes(b"p" * 100)
    os.symlink(folder / "policy.json", folder / "link.json")  # a link is not the trial's bytes
    real_lstat = os.lstat

    def another_process_removes_the_onnx_folder(path, *args, **kwargs):
        if str(path).endswith("model.onnx"):
            shutil.rmtree(folder / "onnx")
        return real_lstat(path, *args, **kwargs)

    monkeypatch.setattr(retention.os, "lstat", another_process_removes_the_onnx_folder)
    assert folder_bytes(folder) == 100
    assert folder_bytes(tmp_path / "missing") == 0


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


def test_the_space_a_search_needs_is_checked_before_it_trains(tmp_path):
    from autocompress.config import ConfigError
    from autocompress.controller.retention import check_free_space, space_needed

    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"w" * 4000)
    (model / "tokenizer.json").write_text("{}")
    config = parse_config({"execution": {"workers": 2}})
    assert space_needed(config, model, teacher_ready=False, references_ready=False) == {
        "teacher": 4000, "references": 5000, "2 trial(s) at once": 16000}
    assert sum(space_needed(config, model, teacher_ready=True, references_ready=True).values()) == 16000
    check_free_space({"teacher": 1}, tmp_path / "not" / "made" / "yet")  # the nearest existing folder's disk
    with pytest.raises(ConfigError, match=r"MB free on its disk, this search needs about \d+ MB there \(teacher") as error:
        check_free_space({"teacher": 1 << 60}, tmp_path)
    assert "\n" not in str(error.value)


def test_a_full_disk_is_recognized_through_the_errors_that_wrap_it():
    import errno

    from autocompress.controller.objective import disk_full

    def wrapped() -> RuntimeError:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as cause:
            try:
                raise RuntimeError("onnx export failed") from cause
            except RuntimeError as error:
                return error

    assert disk_full(wrapped()) and disk_full(RuntimeError("[ONNXRuntimeError] : 1 : FAIL : write: No space left on device"))
    assert not disk_full(ValueError("bad policy")) and not disk_full(OSError(errno.EACCES, "Permission denied"))


def fill(disk) -> None:
    """Write zeros to ``disk`` until it is full (a real ENOSPC for whatever writes next)."""
    import errno

    with open(disk / "ballast", "wb") as out:
        try:
            while True:
                out.write(b"\0" * (1 << 20))
                out.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC


@pytest.fixture()
def small_disk(tmp_path):
    """A 64 MB tmpfs (root mounts it; CI runs as root), unmounted after the test."""
    import os
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)]).returncode == 0
    if not mounted:  # CI runs as root (AUTOCOMPRESS_REQUIRE_SERVICES=1): there a missing mount fails, never skips
        (pytest.fail if os.environ.get("AUTOCOMPRESS_REQUIRE_SERVICES") == "1" else pytest.skip)("mounting a tmpfs needs root")
    yield disk
    subprocess.run(["umount", "-l", str(disk)])


@pytest.mark.slow
def test_a_full_disk_is_refused_up_front_or_stops_the_search_cleanly_and_it_goes_on_once_freed(tiny, small_disk, monkeypatch, capsys):
    from autocompress.controller import run

    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(small_disk / "cache"))  # the study, MLflow and the output stay on the big disk
    config = tiny("disk", n_trials=2, tiny_bert=True, tracking={"uri": "sqlite:///mlflow.db", "experiment": "disk", "registry": "none",
                                                               "export_formats": []})
    fill(small_disk)
    assert main(["search", str(config)]) == 2  # before anything is trained
    assert "MB free on its disk, this search needs about" in capsys.readouterr().err
    (small_disk / "ballast").unlink()

    original = run.retention_callback

    def fill_after_first_trial(workdir):
        release = original(workdir)

        def callback(study, trial):
            release(study, trial)
            if trial.number == 0:
                fill(small_disk)

        return callback

    monkeypatch.setattr(run, "retention_callback", fill_after_first_trial)
    main(["search", str(config)])
    study = optuna.load_study(study_name="disk", storage="sqlite:///study.db")
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL]  # stopped after the trial that found the disk full, nothing left running
    assert "No space left on device" in study.trials[1].user_attrs["fail_reason"] and study.trials[1].user_attrs["interrupted"]

    (small_disk / "ballast").unlink()
    monkeypatch.setattr(run, "retention_callback", original)
    assert main(["search", str(config)]) == 0
    study = optuna.load_study(study_name="disk", storage="sqlite:///study.db")
    assert [t.state for t in study.trials].count(TrialState.COMPLETE) == 2  # the interrupted trial retried, the budget met

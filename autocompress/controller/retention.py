"""Disk kept bounded: a trial that has left the Pareto front gives its files back, and ``gc`` removes deleted studies' folders.

Each trial writes its lowered ONNX file and, when distilled, its float weights
under the study's work folder (``paths.study_work_dir``), some 25-170 MB each
for MiniLM. A completed trial off the front never returns to it (a dominated
point stays dominated as trials are added; a proxy student leaves for good
once its final training is done), and what is exported or copied comes from
the front, so with ``tracking.keep_artifacts: front`` those files go as soon as
the trial is done. The references stay: every later trial is timed beside them.
Each work folder also records its study (``study.json``), so ``gc`` can tell a
folder whose study was deleted from its storage and free it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from autocompress.config import ConfigError, SearchConfig
from autocompress.controller.pareto import front_trials
from autocompress.controller.study import UID_ATTR, absolute_storage, trial_name
from autocompress.credentials import has_password, masked, resolve
from autocompress.paths import cache_root

log = logging.getLogger(__name__)
RECORD = "study.json"
"""In each study's work folder: the study's name, unique id and storage (a reference or a URL without its password)."""
DONE = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
_releasing = threading.Lock()  # parallel trials end at once: their callbacks would both size and free the same folders


def record_study(workdir: Path, study: optuna.Study, config: SearchConfig) -> None:
    """Write ``study.json`` so ``gc`` can later ask the storage whether the study still exists."""
    storage = absolute_storage(config.search.storage)
    workdir.mkdir(parents=True, exist_ok=True)
    record = {"study_name": study.study_name, "uid": study.user_attrs[UID_ATTR], "storage": masked(storage),
              "reachable": not has_password(storage)}  # a password given as it is was not kept: gc cannot open that storage
    (workdir / RECORD).write_text(json.dumps(record, indent=2) + "\n")


def release_dominated(study: optuna.Study, workdir: Path) -> int:
    """Delete the files of every finished trial off the current front (its folder, and float weights kept elsewhere); the bytes freed."""
    with _releasing:
        snapshot = study.get_trials(deepcopy=False)  # one read: a trial finishing meanwhile is judged next time, not freed unjudged
        keep = {t.number for t in front_trials(study, snapshot)}
        freed = 0
        for trial in snapshot:
            if trial.state in DONE and trial.number not in keep:
                freed += _remove(workdir / trial_name(trial.number))
                kept = trial.user_attrs.get("trained_model")
                if kept:
                    freed += _remove(Path(kept))
        return freed


def space_needed(config: SearchConfig, model: Path, *, teacher_ready: bool, references_ready: bool) -> dict[str, int]:
    """Bytes a search will write to the cache before its first trials free anything, by what writes them.

    From the model's weight files (float32): a fine-tuned teacher is as large; the
    references (its ONNX file and ORT's int8 of it) about 1.25 times; each trial
    running at once at most twice (its ONNX file and a student's float weights).
    """
    weights = sum(p.stat().st_size for p in model.iterdir() if p.suffix in (".safetensors", ".bin")) if model.is_dir() else 0
    workers = config.execution.workers
    return {"teacher": 0 if teacher_ready else weights, "references": 0 if references_ready else weights * 5 // 4,
            f"{workers} trial(s) at once": 2 * weights * workers}


def check_free_space(needed: dict[str, int], where: Path) -> None:
    """A one-line ``ConfigError`` when the disk holding ``where`` has less free space than ``needed`` adds up to."""
    folder = where
    while not folder.exists():
        folder = folder.parent
    free, total = shutil.disk_usage(folder).free, sum(needed.values())
    if free < total:
        parts = ", ".join(f"{what} {size / 1e6:.0f} MB" for what, size in needed.items() if size)
        raise ConfigError(f"{where}: {free / 1e6:.0f} MB free on its disk, this search needs about {total / 1e6:.0f} MB there ({parts}); "
                          "free space (`autocompress gc`) or point $AUTOCOMPRESS_CACHE at a larger disk")


def retention_callback(workdir: Path):
    """An ``optimize`` callback: after each trial, release what the front has left behind."""

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        freed = release_dominated(study, workdir)
        if freed:
            log.info("freed %.0f MB of trials off the front", freed / 1e6)

    return callback


def folder_bytes(folder: Path) -> int:
    """Bytes of the regular files under ``folder`` (0 when it is missing).

    Another process (a resumed search, ``gc``) may be removing the same folder:
    what vanishes while it is being walked is not counted and is no error.
    """
    total = 0
    for root, _, files in os.walk(folder):  # os.walk skips a folder that vanished
        for name in files:
            try:
                info = os.lstat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            total += info.st_size if stat.S_ISREG(info.st_mode) else 0
    return total


@dataclass(frozen=True)
class WorkFolder:
    """One study's work folder and what ``gc`` decided: ``remove`` when its study no longer exists."""

    path: Path
    bytes: int
    remove: bool
    reason: str


def collect(root: Path | None = None) -> list[WorkFolder]:
    """Every study work folder under the cache, with whether its study still exists in its storage."""
    root = root or cache_root() / "work"
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    return [WorkFolder(folder, folder_bytes(folder), *_verdict(folder)) for folder in folders]


def _verdict(folder: Path) -> tuple[bool, str]:
    path = folder / RECORD
    if not path.is_file():
        return False, "kept: no study.json (written by an older release), its storage is unknown"
    record = json.loads(path.read_text())
    name, where = record["study_name"], record["storage"]
    if not record.get("reachable", True):
        return False, f"kept: its storage {where} was given with a password, which was not recorded"
    if where.startswith("sqlite:///") and not Path(where[len("sqlite:///"):]).is_file():
        return True, f"its storage file {where} is gone"
    try:
        study = optuna.load_study(study_name=name, storage=resolve(where, f"{path}: storage"))
    except KeyError:
        return True, f"study {name!r} is gone from {where}"
    except Exception as error:  # noqa: BLE001  an unreachable server or an unset variable is no evidence the study is gone
        return False, f"kept: {where} could not be opened ({type(error).__name__})"
    if study.user_attrs.get(UID_ATTR) != record["uid"]:
        return True, f"study {name!r} in {where} is a newer study of that name"
    return False, f"kept: study {name!r} exists"


def _remove(path: Path) -> int:
    size = folder_bytes(path)
    shutil.rmtree(path, ignore_errors=True)
    return size

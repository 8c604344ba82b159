"""The Optuna study a search writes to: its objectives, identity, signature and per-trial seeds.

A study is identified by a unique id stored in its user attributes, so its
trial artifacts stay put even when another storage holds a study of the same
name. Its *signature* (model, teacher, task, space, objectives) is stored at
creation; resuming with a config whose signature differs is refused before
anything trains, since earlier trials were judged under other rules.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

import optuna

from autocompress.config import ConfigError, SamplerName, SearchConfig

OBJECTIVES = ("dev_accuracy", "relative_latency", "size_mb")
"""Accuracy on the dev split; latency over the teacher's, timed in the same probe; shipped file size in MB."""
DIRECTIONS = ("maximize", "minimize", "minimize")
SIGNATURE_VERSION = 2
"""Bumped when the objectives or how they are measured change (2: dev split, paired latency ratio, file bytes)."""
SIGNATURE_ATTR = "autocompress.signature"
UID_ATTR = "autocompress.uid"


def make_sampler(config: SearchConfig) -> optuna.samplers.BaseSampler:
    seed = config.search.seed
    if config.search.sampler is SamplerName.NSGA2:
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=config.search.population_size)
    if config.search.sampler is SamplerName.TPE:
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    return optuna.samplers.RandomSampler(seed=seed)


def signature(config: SearchConfig, teacher_key: str) -> dict[str, Any]:
    """What a study's trials depend on; the data root is left out (it may move between machines)."""
    task = config.task.model_dump(mode="json", exclude={"data_root"})
    latency = config.latency.model_dump(mode="json", include={"backend", "threads"})
    return {
        "version": SIGNATURE_VERSION,
        "model": config.model,
        "teacher": teacher_key,
        "task": task,
        "space": config.space.model_dump(mode="json"),
        "latency": latency,
    }


def _first_difference(old: Any, new: Any, path: str = "") -> tuple[str, Any, Any] | None:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in sorted(set(old) | set(new)):
            found = _first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    return None if old == new else (path, old, new)


def load_existing(config: SearchConfig) -> optuna.Study | None:
    """The configured study if its storage already holds it, else None; creates nothing."""
    try:
        return optuna.load_study(study_name=config.search.study_name, storage=config.search.storage, sampler=make_sampler(config))
    except KeyError:
        return None


def check_resumable(study: optuna.Study, config: SearchConfig, expected: Mapping[str, Any]) -> None:
    """Refuse, in one line, to add trials to a study created under another signature."""
    stored = study.user_attrs.get(SIGNATURE_ATTR)
    where = f"study {study.study_name!r} in {config.search.storage}"
    hint = "pass --study-name NEW (or search.study_name) to start a new study"
    if stored is None:
        raise ConfigError(f"{config.source}: {where} was made by an older autocompress (other objectives); {hint}")
    difference = _first_difference(stored, dict(expected))
    if difference:
        field, old, new = difference
        raise ConfigError(f"{config.source}: {where} was created with {field}={json.dumps(old)}, this config gives {json.dumps(new)}; {hint}")


def open_study(config: SearchConfig, expected: Mapping[str, Any]) -> optuna.Study:
    """Load the configured study (after ``check_resumable``) or create it with a fresh id and this signature."""
    study = load_existing(config)
    if study is not None:
        check_resumable(study, config, expected)
        return study
    study = optuna.create_study(
        study_name=config.search.study_name,
        storage=config.search.storage,
        directions=list(DIRECTIONS),
        sampler=make_sampler(config),
        load_if_exists=True,
    )
    if UID_ATTR not in study.user_attrs:
        study.set_user_attr(UID_ATTR, uuid.uuid4().hex[:12])
        study.set_user_attr(SIGNATURE_ATTR, dict(expected))
    return study


def study_uid(study: optuna.Study) -> str:
    """Folder-safe identity of a study: its name and the unique id it got at creation."""
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', study.study_name)}-{study.user_attrs[UID_ATTR]}"


def trial_seed(search_seed: int, number: int) -> int:
    """A trial's own seed from (search seed, trial number): re-running a trial rebuilds the same model."""
    digest = hashlib.sha256(f"{search_seed}:{number}".encode()).digest()
    return int.from_bytes(digest[:4], "little")

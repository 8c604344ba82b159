"""The Optuna study a search writes to: its objectives, identity, signature, budget and per-trial seeds.

A study is identified by a unique id stored in its user attributes, so its
trial artifacts stay put even when another storage holds a study of the same
name. Its *signature* (model, teacher, task, space, objectives) is stored at
creation; resuming with a config whose signature differs is refused before
anything trains, since earlier trials were judged under other rules.

The study is also the search's source of truth after a crash: the budget is
the study's total of finished trials, and a trial whose process died (``kill
-9``, a lost node) is failed as *interrupted* and retried once, either at the
next start (its owner process on this host is gone) or by Optuna's heartbeat
(RDB storages), whichever sees it first.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import socket
import time
import uuid
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import psutil
from optuna.trial import FrozenTrial, TrialState

from autocompress.config import (
    MINIMIZED_METRICS,
    ConfigError,
    DecoderConfig,
    LatencyConfig,
    SamplerName,
    SearchConfig,
    SpaceConfig,
    TaskConfig,
)
from autocompress.credentials import absolute_reference, masked, resolve
from autocompress.stores import schema_lock, sqlite_file

OBJECTIVES = ("dev_accuracy", "relative_latency", "size_mb")
"""Accuracy on the dev split; latency over the teacher's, timed in the same probe; shipped file size in MB.
With another ``task.metric`` the first is that metric on dev (``objectives``)."""
DIRECTIONS = ("maximize", "minimize", "minimize")
SIGNATURE_VERSION = 2
"""Bumped when the objectives or how they are measured change (2: dev split, paired latency ratio, file bytes)."""
SIGNATURE_ATTR = "autocompress.signature"
UID_ATTR = "autocompress.uid"
BUDGET_ATTR = "autocompress.budget"
"""The total of finished trials the latest run aimed at (what ``resume`` completes); None: open-ended."""
STOP_ATTR = "autocompress.stop_requested"
"""Set by ``autocompress stop``: the running search starts no new trial and ends once running ones finish."""
STATE_ATTR = "autocompress.state"
"""running, finished, stopped, interrupted or failed: how the latest run of the study ended."""
OWNER_ATTR = "owner"
INTERRUPTED_ATTR = "interrupted"
RETRY_OF_ATTR = "retry_of"
FINAL_OF_ATTR = "final_of"
"""On a final training (``search.final_training``): the number of the trial whose student it trains again."""
FAIL_REASON_ATTR = "fail_reason"
PRUNE_REASON_ATTR = "prune_reason"


def make_sampler(config: SearchConfig, *, drawn: int = 0) -> optuna.samplers.BaseSampler:
    """The configured sampler. ``drawn``: trials the study already holds. A sampler's random state restarts with the
    process, so a resumed study seeded as before would propose again what it proposed first; it is seeded from
    (``search.seed``, ``drawn``) instead, still reproducible."""
    seed = config.search.seed if drawn == 0 else int(np.random.SeedSequence([config.search.seed, drawn]).generate_state(1)[0])
    if config.search.sampler is SamplerName.NSGA2:
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=config.search.population_size)
    if config.search.sampler is SamplerName.TPE:
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    return optuna.samplers.RandomSampler(seed=seed)


def objectives(metric: str = "accuracy") -> tuple[str, str, str]:
    """The study's objective names for ``task.metric`` (``dev_macro_f1``, ...), stored with the study as its metric names."""
    return (f"dev_{metric}", *OBJECTIVES[1:])


def directions(metric: str = "accuracy") -> tuple[str, str, str]:
    """The study's directions: ``task.metric`` maximized, or minimized when lower is better (perplexity), then latency and size."""
    return ("minimize" if metric in MINIMIZED_METRICS else "maximize", *DIRECTIONS[1:])


def study_task(study: optuna.Study) -> str:
    """The ``task.type`` a study was created for (from its signature); sequence-classification for older studies."""
    return study.user_attrs.get(SIGNATURE_ATTR, {}).get("task", {}).get("type", "sequence-classification")


def study_metric(study: optuna.Study) -> str:
    """The task metric a study's first objective is (from its stored objective names); accuracy for studies made before ``task.metric``."""
    names = study.metric_names
    return names[0].removeprefix("dev_") if names else "accuracy"


SIGNED_LATENCY = {"backend", "threads", "batch_size"}
"""The latency settings a study's ratios depend on (the timing budget only changes their noise)."""


def signature(config: SearchConfig, teacher_key: str) -> dict[str, Any]:
    """What a study's trials depend on; the data root is left out (it may move between machines)."""
    task = config.task.model_dump(mode="json", exclude={"data_root"})
    latency = config.latency.model_dump(mode="json", include=SIGNED_LATENCY)
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


def absolute_storage(url: str) -> str:
    """``url`` (an Optuna or MLflow store, or an ``env:``/``file:`` reference to one) with a relative SQLite or file path made
    absolute, so other processes open the same file."""
    url = absolute_reference(url)
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
        return prefix + str(Path(url[len(prefix):]).resolve())
    return url


def storage_url(config: SearchConfig) -> str:
    """The Optuna storage URL ``search.storage`` gives, read from its environment variable or file when it is a reference."""
    return resolve(config.search.storage, f"{config.source}: field 'search.storage'")


def make_storage(config: SearchConfig) -> str | optuna.storages.BaseStorage:
    """The study storage; RDB storages (SQLite, PostgreSQL, MySQL) get Optuna's heartbeat and retry interrupted trials."""
    url = storage_url(config)
    if not url.startswith(("sqlite:", "postgresql", "mysql")):
        return url
    beat = config.execution.heartbeat_seconds
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else {}
    with warnings.catch_warnings(), schema_lock(url):
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat: experimental since Optuna 2.9
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine, heartbeat_interval=beat, grace_period=3 * beat, heartbeat_stale_trial_callback=retry_interrupted
        )


def load_existing(config: SearchConfig) -> optuna.Study | None:
    """The configured study if its storage already holds it, else None; creates nothing (not even a SQLite file)."""
    path = sqlite_file(storage_url(config))
    if path is not None and not path.exists():
        return None
    try:
        study = optuna.load_study(study_name=config.search.study_name, storage=make_storage(config), sampler=make_sampler(config))
    except KeyError:
        return None
    study.sampler = make_sampler(config, drawn=len(study.get_trials(deepcopy=False)))
    return study


def with_later_defaults(stored: Mapping[str, Any]) -> dict[str, Any]:
    """A stored signature with the fields later releases added at their defaults: an older study ran with what they default to
    (``task.metric``: accuracy; ``task.test_size``; ``latency.batch_size``: 1; ``decoder.average_bits``: null)."""
    sections = {"task": TaskConfig().model_dump(mode="json", exclude={"data_root"}), "space": SpaceConfig().model_dump(mode="json"),
                "latency": LatencyConfig().model_dump(mode="json", include=SIGNED_LATENCY), "decoder": DecoderConfig().model_dump(mode="json")}
    filled = dict(stored)
    for name, defaults in sections.items():
        if isinstance(stored.get(name), Mapping):
            filled[name] = {**defaults, **stored[name]}
    return filled


def check_resumable(study: optuna.Study, config: SearchConfig, expected: Mapping[str, Any]) -> None:
    """Refuse, in one line, to add trials to a study created under another signature."""
    stored = study.user_attrs.get(SIGNATURE_ATTR)
    where = f"study {study.study_name!r} in {masked(config.search.storage)}"
    hint = "pass --study-name NEW (or search.study_name) to start a new study"
    if stored is None:
        raise ConfigError(f"{config.source}: {where} was made by an older autocompress (other objectives); {hint}")
    difference = _first_difference(with_later_defaults(stored), dict(expected))
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
        storage=make_storage(config),
        directions=list(directions(config.task.metric)),
        sampler=make_sampler(config),
        load_if_exists=True,
    )
    if UID_ATTR not in study.user_attrs:
        study.set_user_attr(UID_ATTR, uuid.uuid4().hex[:12])
        study.set_user_attr(SIGNATURE_ATTR, dict(expected))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # set_metric_names: experimental since Optuna 3.2
            study.set_metric_names(list(objectives(config.task.metric)))
    return study


def study_uid(study: optuna.Study) -> str:
    """Folder-safe identity of a study: its name and the unique id it got at creation."""
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', study.study_name)}-{study.user_attrs[UID_ATTR]}"


def trial_name(number: int) -> str:
    """Trial ``number``'s name: its MLflow run's and its folder's under the study's work folder."""
    return f"trial-{number}"


def trial_seed(search_seed: int, number: int) -> int:
    """A trial's own seed from (search seed, trial number): re-running a trial rebuilds the same model."""
    digest = hashlib.sha256(f"{search_seed}:{number}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def trial_owner() -> dict[str, Any]:
    """This process, as recorded on the trials it runs: host, pid and the pid's start time (pids get reused)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": psutil.Process().create_time()}


def process_is_running(pid: int, started: float | None) -> bool:
    """Whether process ``pid``, started at ``started`` (pids get reused), still runs; a zombie (killed, not reaped) does not."""
    try:
        process = psutil.Process(pid)
        return process.create_time() == started and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _owner_is_gone(owner: Mapping[str, Any] | None) -> bool:
    """True only when ``owner`` ran on this host and that process no longer runs; other hosts are the heartbeat's."""
    if not owner or owner.get("host") != socket.gethostname():
        return False
    return not process_is_running(owner["pid"], owner["started"])


def is_feasible(trial: FrozenTrial) -> bool:
    """Within every constraint the trial recorded (``Trial.set_constraint``: a value <= 0 is met), as Optuna's samplers read them."""
    return all(value <= 0 for value in trial.constraints.values())


def is_interrupted(trial: FrozenTrial) -> bool:
    """A failed trial that did not fail on its own: stopped by Ctrl-C or ``stop --now``, or its process died."""
    return trial.state == TrialState.FAIL and (bool(trial.user_attrs.get(INTERRUPTED_ATTR)) or FAIL_REASON_ATTR not in trial.user_attrs)


UNCLAIMED_SECONDS = 5.0
"""A process records itself on a trial milliseconds after creating it (the objective's first line). A trial still RUNNING
without an owner this long after its start was created by a process that died first: ``kill -9`` in that window left it
RUNNING forever, since Optuna's heartbeat only judges trials that beat once."""


def fail_orphans(study: optuna.Study, unclaimed_seconds: float = UNCLAIMED_SECONDS) -> list[int]:
    """Fail, as interrupted, every RUNNING trial whose process on this host is gone, or that no process claimed within
    ``unclaimed_seconds`` of its start (waiting out that long for one just created); returns their numbers."""
    def age(trial: FrozenTrial) -> float:
        return (datetime.datetime.now() - trial.datetime_start).total_seconds() if trial.datetime_start else unclaimed_seconds

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    unclaimed = [age(t) for t in running if OWNER_ATTR not in t.user_attrs]
    if unclaimed:
        time.sleep(max(0.0, unclaimed_seconds - min(unclaimed)))
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    failed = []
    for frozen in running:
        owner = frozen.user_attrs.get(OWNER_ATTR)
        if owner is None and age(frozen) < unclaimed_seconds:
            continue  # created during the wait, by a process alive now
        if owner is None:
            reason = f"interrupted: the process that created it is gone before it recorded itself ({unclaimed_seconds:g} s)"
        elif _owner_is_gone(owner):
            reason = f"interrupted: its process {owner['pid']} on {owner['host']} is gone"
        else:
            continue
        trial = optuna.trial.Trial(study, frozen._trial_id)
        trial.set_user_attr(FAIL_REASON_ATTR, reason)
        trial.set_user_attr(INTERRUPTED_ATTR, True)
        study.tell(frozen.number, state=TrialState.FAIL, skip_if_finished=True)
        failed.append(frozen.number)
    return failed


def retry_interrupted(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Enqueue ``trial``'s parameters once more if it was interrupted and is neither a retry nor retried yet.

    A trial killed while its sampler was still choosing holds only some parameters; the retry keeps
    those and samples the rest.
    """
    if not is_interrupted(trial) or RETRY_OF_ATTR in trial.user_attrs:
        return False
    if any(t.user_attrs.get(RETRY_OF_ATTR) == trial.number for t in study.get_trials(deepcopy=False)):
        return False
    final = {FINAL_OF_ATTR: trial.user_attrs[FINAL_OF_ATTR]} if FINAL_OF_ATTR in trial.user_attrs else {}
    study.enqueue_trial(trial.params, user_attrs={RETRY_OF_ATTR: trial.number, **final})
    return True


def retry_all_interrupted(study: optuna.Study) -> list[int]:
    """``retry_interrupted`` for every failed trial; returns the numbers that got a retry."""
    return [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if retry_interrupted(study, t)]


def trials_done(trials: Sequence[FrozenTrial]) -> int:
    """Finished trials that count against the budget: all but interrupted ones that have a retry, and final trainings."""
    retried = {t.user_attrs[RETRY_OF_ATTR] for t in trials if RETRY_OF_ATTR in t.user_attrs}
    return sum(1 for t in trials if t.state.is_finished() and not (is_interrupted(t) and t.number in retried) and FINAL_OF_ATTR not in t.user_attrs)


def planned_total(study: optuna.Study, config: SearchConfig, *, added: int | None = None, total: int | None = None) -> int | None:
    """The study's budget for this run: ``total`` (resume), else done + ``added`` (--n-trials), else the config's n_trials."""
    if total is not None:
        return total
    if added is not None:
        return trials_done(study.get_trials(deepcopy=False)) + added
    return config.search.n_trials

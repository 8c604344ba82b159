"""Everything a search can check before it trains anything, and the ``--dry-run`` report of it.

The teacher's fine-tuning can take an hour; a bad space, an unreadable data
file or a study that cannot be resumed must fail before it, with one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from autocompress.config import ConfigError, SearchConfig
from autocompress.controller.pareto import BASELINE_ATTR
from autocompress.controller.retention import check_free_space, space_needed
from autocompress.controller.space_check import SpaceSummary, check_space
from autocompress.controller.study import check_resumable, load_existing, signature
from autocompress.cores import machine_cores
from autocompress.credentials import masked
from autocompress.models.loading import model_config, resolve_model_path
from autocompress.paths import cache_root
from autocompress.tasks.registry import task_for
from autocompress.tasks.teacher import TeacherLocation

if TYPE_CHECKING:
    from autocompress.controller.decoder_search import DecoderPreflight


@dataclass(frozen=True)
class Preflight:
    """What was checked: the space against the model, the data, the teacher's cache and the study."""

    config: SearchConfig
    space: SpaceSummary
    teacher: TeacherLocation
    signature: dict[str, Any]
    study: optuna.Study | None
    rows: dict[str, int]
    task_line: str = ""
    """What the task is (its texts, its labels in id order or its pooling), from ``Task.check``."""

    def describe(self) -> str:
        """A few lines for ``autocompress search CONFIG --dry-run``."""
        config, task = self.config, self.config.task
        dev_source = "its own file" if (task.hf_dev_split if task.hf_dataset else task.dev) else f"carved from train, seed {task.split_seed}"
        lines = [
            f"config: {config.source} (valid)",
            self.space.describe(),
            f"data: {self.rows['train']} train rows, {self.rows['dev']} dev rows ({dev_source}), {self.rows['test']} test rows (report only)",
            *([self.task_line] if self.task_line else []),
            f"teacher: {self._teacher_state()}",
            f"study: {self._study_state()}",
        ]
        latency = config.latency
        steps = sorted(set(config.space.recovery_steps))
        deploy = "lower to ONNX Runtime, verify and score" if latency.backend == "onnxruntime" else "score the torch simulation"
        lines.append(
            f"each trial: compress (recovery steps {steps}), {deploy} on {self.rows['dev']} dev rows, "
            f"score {self.rows['test']} test rows, time 3 models (trial, teacher, ORT int8) x {latency.repeats} calls in {latency.rounds} rounds"
        )
        return "\n".join(lines)

    def _teacher_state(self) -> str:
        if self.teacher.as_is:
            return f"the model as it is, not fine-tuned: {self.teacher.path}"
        if self.config.teacher.checkpoint:
            return f"checkpoint {self.teacher.path}"
        if self.teacher.ready:
            return f"cached at {self.teacher.path}"
        recipe = self.config.teacher
        return f"not cached: fine-tunes {recipe.steps} steps at batch {recipe.batch_size} on {self.rows['train']} rows, then cached at {self.teacher.path}"

    def _study_state(self) -> str:
        settings = self.config.search
        where = f"{settings.study_name!r} in {masked(settings.storage)}"
        budget = f"{settings.n_trials} trials this run" if settings.n_trials else "no trial limit"
        if self.study is None:
            return f"{where}: new; {budget}"
        trials = self.study.get_trials(deepcopy=False)
        states = {state.name.lower(): sum(t.state == state for t in trials) for state in {t.state for t in trials}}
        durations = [t.duration.total_seconds() for t in trials if t.duration is not None and t.state.name == "COMPLETE"]
        line = f"{where}: {len(trials)} trials ({', '.join(f'{n} {s}' for s, n in sorted(states.items()))}); {budget}"
        if durations and settings.n_trials:
            mean = sum(durations) / len(durations)
            line += f", about {mean * settings.n_trials / 60:.0f} min at its mean {mean:.0f} s per trial"
        return line


def preflight(config: SearchConfig) -> Preflight | DecoderPreflight:
    """Run every check that needs no training; raise a one-line ``ConfigError`` on the first failure."""
    try:
        machine_cores()  # read by the first training; a bad value must fail before it
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if config.task.type == "causal-lm":
        from autocompress.controller.decoder_search import decoder_preflight

        return decoder_preflight(config)
    task = task_for(config)
    shape = model_config(config)
    task_line = task.check(shape)
    space = check_space(config, shape)
    rows = {split: len(task.load_split(split)) for split in ("dev", "test")}
    teacher = task.locate_teacher()
    rows["train"] = len(teacher.train) if teacher.train is not None else len(task.load_split("train"))
    if not teacher.ready and rows["train"] < config.teacher.batch_size:
        raise ConfigError(f"{config.source}: field 'teacher.batch_size' ({config.teacher.batch_size}) exceeds the {rows['train']} "
                          "training rows; fine-tuning needs at least one full batch")
    expected = signature(config, teacher.key)
    study = load_existing(config)
    if study is not None:
        check_resumable(study, config, expected)
    baseline = study.user_attrs.get(BASELINE_ATTR) if study is not None else None
    references_ready = baseline is not None and Path(baseline.get("artifact", "")).is_file()
    needed = space_needed(config, Path(resolve_model_path(config.model)), teacher_ready=teacher.ready, references_ready=references_ready)
    check_free_space(needed, cache_root())
    return Preflight(config, space, teacher, expected, study, rows, task_line)

"""Where a search stands, read from its study: one live line in a terminal, ``autocompress status`` anywhere.

Everything comes from the study's storage, so a detached job, a job on a
cluster and the search in front of you are described the same way.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import Counter
from dataclasses import asdict, dataclass
from typing import TextIO

import optuna
from optuna.trial import FrozenTrial, TrialState

from autocompress.controller.study import BUDGET_ATTR, FINAL_OF_ATTR, STATE_ATTR, is_feasible, study_metric, trials_done

log = logging.getLogger("autocompress")


@dataclass(frozen=True)
class Summary:
    """Trial counts, budget, the best so far and an estimate of the time left."""

    study: str
    state: str
    done: int
    budget: int | None
    running: int
    waiting: int
    complete: int
    pruned: int
    failed: int
    metric: str
    """The task metric the study optimizes (``task.metric``)."""
    best_score: float | None
    """Highest dev ``metric`` among trials that meet the constraints."""
    fastest_speedup: float | None
    """Largest speed-up over the teacher among trials that meet the constraints."""
    front: int
    eta_seconds: float | None
    finals: int = 0
    """Final trainings (``search.final_training``) started: beyond the budget, not counted in ``done``."""

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        """One line: trials done/budget, running, failures, best within budget, fastest feasible, front size, ETA."""
        budget = f"/{self.budget}" if self.budget is not None else ""
        parts = [f"trials {self.done}{budget}" + (f" + {self.finals} final" if self.finals else ""), f"{self.running} running",
                 f"{self.failed} failed, {self.pruned} pruned"]
        name = "acc" if self.metric == "accuracy" else self.metric
        parts.append(f"best {name} {self.best_score:.4f}" if self.best_score is not None else f"best {name} -")
        parts.append(f"fastest {self.fastest_speedup:.2f}x" if self.fastest_speedup is not None else "fastest -")
        parts.append(f"front {self.front}")
        if self.eta_seconds is not None:
            parts.append(f"ETA {format_seconds(self.eta_seconds)}")
        return " | ".join(parts)


def format_seconds(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def summarize(study: optuna.Study, *, workers: int = 1) -> Summary:
    """The study now: counts, the best feasible trials, front size and time left at the mean trial duration."""
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state for t in trials)
    budget = study.user_attrs.get(BUDGET_ATTR)
    done = trials_done(trials)
    feasible = [t for t in trials if t.state == TrialState.COMPLETE and is_feasible(t)]
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials
                 if t.state == TrialState.COMPLETE and t.datetime_start and t.datetime_complete]
    eta = None
    if budget is not None and durations:
        eta = max(0, budget - done) * (sum(durations) / len(durations)) / max(1, workers)
    front = len(study.best_trials) if states[TrialState.COMPLETE] else 0
    metric = study_metric(study)
    return Summary(
        study=study.study_name,
        state=study.user_attrs.get(STATE_ATTR, "unknown"),
        done=done,
        budget=budget,
        running=states[TrialState.RUNNING],
        waiting=states[TrialState.WAITING],
        complete=states[TrialState.COMPLETE],
        pruned=states[TrialState.PRUNED],
        failed=states[TrialState.FAIL],
        metric=metric,
        best_score=max((t.values[0] for t in feasible), default=None),
        fastest_speedup=max((t.user_attrs["speedup"] for t in feasible), default=None),
        front=front,
        eta_seconds=eta,
        finals=sum(1 for t in trials if FINAL_OF_ATTR in t.user_attrs and t.state != TrialState.WAITING),
    )


class LiveLine:
    """Redraws ``summarize``'s line in place on a terminal, after each trial starts and ends; silent elsewhere."""

    def __init__(self, study: optuna.Study, *, workers: int, stream: TextIO | None = None) -> None:
        self.study = study
        self.workers = workers
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.lock = threading.Lock()

    def refresh(self, summary: Summary | None = None) -> None:
        """Redraw the line (a terminal only)."""
        if not self.enabled:
            return
        summary = summary or summarize(self.study, workers=self.workers)
        with self.lock:
            self.stream.write("\r\x1b[K" + summary.line())
            self.stream.flush()

    def callback(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna callback: one log line per finished trial (the log file, or the screen when not a terminal), and a redraw."""
        summary = summarize(self.study, workers=self.workers)
        reason = trial.user_attrs.get("fail_reason")
        log.info("trial %d %s%s | %s", trial.number, trial.state.name.lower(), f" ({reason})" if reason else "", summary.line())
        self.refresh(summary)

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()

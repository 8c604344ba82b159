"""The search's second stage: its best students distilled again on a longer budget.

Trials judge a student after a short proxy budget (``space.recovery_steps``),
the usual split of architecture search: search short, then train the winners
long. Once the study's trial budget is spent, the ``top_k`` front students
that ``search.selection`` picks in turn are enqueued again with their own
parameters; the objective sees ``FINAL_OF_ATTR`` and distills them for
``final_training.recovery_steps`` on ``final_training.train_subset`` rows (with its own
loss weights where set, e.g. intermediate-layer targets only for the finals),
with no early stopping. They are measured like any trial and join the front
by the same rules, while the short-trained students leave it
(``pareto.proxy_trials``); a resumed search never trains one twice, and
trains again one whose every attempt was interrupted.
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from autocompress.config import SearchConfig
from autocompress.controller.pareto import BASELINE_ATTR, pareto_front, select, trial_row
from autocompress.controller.study import FINAL_OF_ATTR, is_interrupted
from autocompress.policy import field_of


def final_candidates(study: optuna.Study, config: SearchConfig) -> list[int]:
    """Numbers of the front students (among the search's own trials) to train again.

    The feasible front comes first, in the order selection picks it. Where
    fewer than ``top_k`` are feasible, the front of the students that miss
    only the accuracy limit fills in, most accurate on dev first: their score
    stands for a short proxy budget, which the final training is there to
    lengthen (it moved students 1.7-2.3 pt in bench/RESULTS.md section 5).
    """
    settings, metric = config.search.final_training, config.task.metric
    if settings.top_k == 0:
        return []
    students = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if FINAL_OF_ATTR not in t.user_attrs and field_of(t.user_attrs.get("policy", {}), "recovery_steps", 0) > 0
    ]
    baseline = study.user_attrs[BASELINE_ATTR]
    front = pareto_front(students, study.directions, constrained=True)
    rows = [row for row in (trial_row(t, baseline) for t in front) if row["feasible"]]
    picked: list[int] = []
    while rows and len(picked) < settings.top_k:
        row = select(rows, config.search.selection, config.search.constraints.max_accuracy_drop, metric)
        picked.append(row["trial"])
        rows.remove(row)
    short = [t for t in students if t.number not in picked and _misses_only_accuracy(t, metric)]
    short_front = [trial_row(t, baseline) for t in pareto_front(short, study.directions, constrained=False)]
    short_front.sort(key=lambda row: (row[f"dev_{metric}"], row["speedup"]), reverse=True)  # as the most_accurate selection ranks
    return picked + [row["trial"] for row in short_front[: settings.top_k - len(picked)]]


def _misses_only_accuracy(trial: optuna.trial.FrozenTrial, metric: str) -> bool:
    """Below the accuracy limit on dev, within every other limit (latency and size do not change with more training)."""
    limits = trial.constraints
    return limits.get(f"{metric}_drop", 0.0) > 0 and all(value <= 0 for key, value in limits.items() if key != f"{metric}_drop")


def pending_finals(study: optuna.Study, config: SearchConfig) -> list[int]:
    """Numbers of the final candidates with no final training done, running, queued or failed on its own.

    A final whose every attempt was interrupted (Ctrl-C, ``stop --now``, a killed
    process; its one retry included) is pending again: unlike a search trial,
    whose budget a new sample fills, nothing else would ever train that student.
    """
    started = {t.user_attrs[FINAL_OF_ATTR] for t in study.get_trials(deepcopy=False) if FINAL_OF_ATTR in t.user_attrs and not is_interrupted(t)}
    return [number for number in final_candidates(study, config) if number not in started]


def final_stage_left(study: optuna.Study, config: SearchConfig) -> bool:
    """Whether final trainings remain: candidates not enqueued yet, or finals waiting in the queue (retries of interrupted ones included)."""
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    return any(FINAL_OF_ATTR in t.user_attrs for t in waiting) or bool(pending_finals(study, config))


def enqueue_finals(study: optuna.Study, config: SearchConfig) -> int:
    """Enqueue the final trainings not run yet; return how many trials wait in the study's queue now."""
    trials = study.get_trials(deepcopy=False)
    for number in pending_finals(study, config):
        study.enqueue_trial(trials[number].params, user_attrs={FINAL_OF_ATTR: number})
    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

"""Budget-first picking: choose a model from an existing study under new limits, without searching again."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

from autocompress.config import ConfigError, Selection, parse_config
from autocompress.controller.pareto import BASELINE_ATTR, front_rows, select, trial_row
from autocompress.controller.study import study_metric
from autocompress.tracking.runs import SEARCH_RUN_ATTR


def pick(
    study: optuna.Study,
    *,
    max_accuracy_drop: float | None = None,
    max_latency_ms: float | None = None,
    max_size_mb: float | None = None,
    rule: Selection = Selection.FASTEST,
) -> tuple[dict[str, Any] | None, int]:
    """The ``rule``'s choice among completed trials within every given limit, and how many were within.

    The limits are the user's, not the search's: any completed trial may
    qualify. ``max_accuracy_drop`` limits the drop of the study's metric
    (``task.metric``, accuracy by default) on the dev split, against the teacher.
    """
    baseline = study.user_attrs.get(BASELINE_ATTR)
    if baseline is None:
        raise ConfigError(f"study {study.study_name!r} has no baseline; was it created by autocompress search?")
    rows = [trial_row(t, baseline) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    metric = study_metric(study)
    limits = ((f"{metric}_drop", max_accuracy_drop), ("latency_ms", max_latency_ms), ("size_mb", max_size_mb))
    within = [r for r in rows if all(limit is None or r[key] <= limit + 1e-12 for key, limit in limits)]
    return select(within, rule, None, metric), len(within)


def chosen_trial(study: optuna.Study) -> int:
    """The trial the search chose (its selection rule among feasible front trials), as ``search`` reported it."""
    search = study.user_attrs.get(SEARCH_RUN_ATTR)
    if search is None:
        raise ConfigError(f"study {study.study_name!r} holds no search config; pass --trial N")
    config = parse_config(search["config"], source=f"study {study.study_name!r}")
    rows = [r for r in front_rows(study) if r["feasible"]]
    chosen = select(rows, config.search.selection, config.search.constraints.max_accuracy_drop, config.task.metric)
    if chosen is None:
        raise ConfigError(f"study {study.study_name!r}: no trial met its constraints, so none was chosen; pass --trial N")
    return chosen["trial"]

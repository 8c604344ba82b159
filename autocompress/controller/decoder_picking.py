"""Budget-first picking for a causal-lm study: choose a trial under new limits without searching again.

The decoder counterpart of ``controller.picking``: the limits are a relative
dev perplexity increase over the teacher's (0.05 = +5 %), decode tokens per
second and the folder's megabytes; any completed trial may qualify, and the
rule (fastest, smallest, most accurate) chooses among those within.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

from autocompress.config import ConfigError, Selection, parse_config
from autocompress.controller.decoder_search import front_rows, select, trial_row
from autocompress.tracking.runs import SEARCH_RUN_ATTR


def pick_decoder(
    study: optuna.Study,
    *,
    max_perplexity_increase: float | None = None,
    min_tokens_per_s: float | None = None,
    max_size_mb: float | None = None,
    rule: Selection = Selection.FASTEST,
) -> tuple[dict[str, Any] | None, int]:
    """The ``rule``'s choice among completed trials within every given limit, and how many were within."""
    rows = [trial_row(t) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    within = [{**row, "feasible": True} for row in rows
              if (max_perplexity_increase is None or row["perplexity_increase"] <= max_perplexity_increase + 1e-12)
              and (min_tokens_per_s is None or row["decode_tokens_per_s"] >= min_tokens_per_s)
              and (max_size_mb is None or row["size_mb"] <= max_size_mb + 1e-12)]
    return select(within, rule, study_config(study).task.metric), len(within)


def chosen_decoder_trial(study: optuna.Study) -> int:
    """The trial the search chose (its selection rule among the feasible front), as ``search`` reported it."""
    config = study_config(study)
    chosen = select(front_rows(study), config.search.selection, config.task.metric)
    if chosen is None:
        raise ConfigError(f"study {study.study_name!r}: no trial met its constraints, so none was chosen; pass --trial N")
    return chosen["trial"]


def study_config(study: optuna.Study):
    search = study.user_attrs.get(SEARCH_RUN_ATTR)
    if search is None:
        raise ConfigError(f"study {study.study_name!r} holds no search config; was it made by autocompress search?")
    return parse_config(search["config"], source=f"study {study.study_name!r}")

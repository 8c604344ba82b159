"""Multi-fidelity pruning for a multi-objective study.

Optuna's pruners read intermediate values, which ``Trial.report`` refuses in
multi-objective studies. Each search trial therefore gets a twin trial in a
single-objective companion study (``<study>.fidelity``, same storage) that
receives the recovery's intermediate dev score (``task.metric``) per step; the
configured pruner (successive halving by default) decides on the twin, and the
search trial is pruned with it. Steps of recovery training are the fidelity.
Twins are grouped by student depth (``<study>.fidelity.blocks<N>``).
"""

from __future__ import annotations

from collections.abc import Callable

import optuna

from autocompress.config import PrunerName, SearchConfig
from autocompress.controller.study import storage_url

TWIN_ATTR = "search_trial"


def make_pruner(config: SearchConfig) -> optuna.pruners.BasePruner:
    name = config.recovery.pruner
    every = config.recovery.eval_every
    if name is PrunerName.SUCCESSIVE_HALVING:
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=every, reduction_factor=3)
    if name is PrunerName.HYPERBAND:
        return optuna.pruners.HyperbandPruner(min_resource=every, max_resource=max(max(config.space.recovery_steps), every))
    if name is PrunerName.MEDIAN:
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=every)
    return optuna.pruners.NopPruner()


class Fidelity:
    """Companion studies, one per student size, and one twin trial per search trial.

    Accuracy after N steps is only comparable between students of the same
    depth: a 3-block student always starts below a 6-block one, yet may be the
    better trade-off. So twins are grouped by ``group`` (the kept-block count)
    and the pruner compares like with like.
    """

    def __init__(self, config: SearchConfig) -> None:
        self.config = config
        self.studies: dict[str, optuna.Study] = {}

    def study(self, group: str) -> optuna.Study:
        if group not in self.studies:
            self.studies[group] = optuna.create_study(
                study_name=f"{self.config.search.study_name}.fidelity.{group}",
                storage=storage_url(self.config),
                direction="maximize",
                pruner=make_pruner(self.config),
                load_if_exists=True,
            )
        return self.studies[group]

    def twin(self, number: int, group: str) -> optuna.Trial:
        trial = self.study(group).ask()
        trial.set_user_attr(TWIN_ATTR, number)
        return trial

    @staticmethod
    def attach(config: SearchConfig, study_name: str, trial_id: int) -> optuna.Trial:
        """The twin ``trial_id`` of companion ``study_name``, opened from the storage (by a worker in another process)."""
        study = optuna.load_study(study_name=study_name, storage=storage_url(config), pruner=make_pruner(config))
        return optuna.trial.Trial(study, trial_id)

    @staticmethod
    def reporter(twin: optuna.Trial) -> Callable[[int, float], bool]:
        """``report(step, score) -> stop?`` for the recovery loop (the score: ``task.metric`` on dev rows)."""

        def report(step: int, score: float) -> bool:
            twin.report(score, step)
            return bool(twin.should_prune())

        return report

    @staticmethod
    def finish(twin: optuna.Trial, score: float | None, *, failed: bool = False) -> None:
        """Complete the twin with the final score, or mark it pruned (None) or failed."""
        if failed:
            twin.study.tell(twin, state=optuna.trial.TrialState.FAIL)
        elif score is None:
            twin.study.tell(twin, state=optuna.trial.TrialState.PRUNED)
        else:
            twin.study.tell(twin, score)

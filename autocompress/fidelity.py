"""Multi-fidelity pruning for a multi-objective study.

Optuna's pruners read intermediate values, which ``Trial.report`` refuses in
multi-objective studies. Each search trial therefore gets a twin trial in a
single-objective companion study (``<study>.fidelity``, same storage) that
receives the recovery's intermediate validation accuracy per step; the
configured pruner (successive halving by default) decides on the twin, and the
search trial is pruned with it. Steps of recovery training are the fidelity.
"""

from __future__ import annotations

from collections.abc import Callable

import optuna

from autocompress.config import PrunerName, SearchConfig

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
    """The companion study and one twin trial per search trial."""

    def __init__(self, config: SearchConfig) -> None:
        self.study = optuna.create_study(
            study_name=f"{config.search.study_name}.fidelity",
            storage=config.search.storage,
            direction="maximize",
            pruner=make_pruner(config),
            load_if_exists=True,
        )

    def twin(self, number: int) -> optuna.Trial:
        trial = self.study.ask()
        trial.set_user_attr(TWIN_ATTR, number)
        return trial

    @staticmethod
    def reporter(twin: optuna.Trial) -> Callable[[int, float], bool]:
        """``report(step, accuracy) -> stop?`` for the recovery loop."""

        def report(step: int, accuracy: float) -> bool:
            twin.report(accuracy, step)
            return bool(twin.should_prune())

        return report

    def finish(self, twin: optuna.Trial, accuracy: float | None) -> None:
        """Complete the twin with the final accuracy, or mark it pruned (None)."""
        if accuracy is None:
            self.study.tell(twin, state=optuna.trial.TrialState.PRUNED)
        else:
            self.study.tell(twin, accuracy)

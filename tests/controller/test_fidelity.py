"""The twin-study wiring that lets an Optuna pruner stop trials of a multi-objective search."""

import optuna

from autocompress.config import parse_config
from autocompress.controller.fidelity import Fidelity


def test_pruner_stops_a_bad_trial_through_its_twin(tmp_path):
    config = parse_config({
        "search": {"study_name": "s", "storage": f"sqlite:///{tmp_path}/s.db"},
        "space": {"recovery_steps": [100]},
        "recovery": {"pruner": "median", "eval_every": 10},
    })
    fidelity = Fidelity(config)
    for number, accuracy in enumerate([0.85, 0.86, 0.84]):
        twin = fidelity.twin(number, "blocks6")
        report = Fidelity.reporter(twin)
        assert not any(report(step, accuracy) for step in (10, 20, 30))
        Fidelity.finish(twin, accuracy)
    bad = fidelity.twin(3, "blocks6")
    assert Fidelity.reporter(bad)(10, 0.50) is True  # far below the median of the others at the same step
    fidelity.finish(bad, None)
    states = [t.state for t in optuna.load_study(study_name="s.fidelity.blocks6", storage=f"sqlite:///{tmp_path}/s.db").trials]
    assert states.count(optuna.trial.TrialState.PRUNED) == 1 and states.count(optuna.trial.TrialState.COMPLETE) == 3
    assert bad.user_attrs["search_trial"] == 3
    # A shallower student is compared only with its own kind: its first report is not pruned.
    shallow = fidelity.twin(4, "blocks3")
    assert Fidelity.reporter(shallow)(10, 0.50) is False

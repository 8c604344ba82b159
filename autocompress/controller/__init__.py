"""The search: Optuna proposes policies, trials run here or on Ray, the front is read back from the study.

``run`` drives one search (``run_search``); ``objective`` is what the study
calls per trial (sample, cost-model check, hand to a worker, record);
``study`` opens, resumes and signs the Optuna study; ``trial`` is one policy
compressed, lowered and measured; ``workers`` runs trials on Ray; ``fidelity`` and ``final_training``
stage short proxies and the front's long trainings; ``pareto`` and
``picking`` read the front and pick from it; ``jobs`` and ``progress`` keep
detached searches; ``preflight`` and ``space_check`` refuse bad input before
anything trains; ``apply`` trains one given policy.
"""

from autocompress._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    **dict.fromkeys(["SearchResult", "run_search"], "run"),
    **dict.fromkeys(["apply_policy"], "apply"),
    **dict.fromkeys(["chosen_trial", "pick"], "picking"),
    **dict.fromkeys(["format_table", "front_rows", "front_trials", "write_front"], "pareto"),
    **dict.fromkeys(["Job", "launch", "list_jobs"], "jobs"),
    **dict.fromkeys(["open_study"], "study"),
})

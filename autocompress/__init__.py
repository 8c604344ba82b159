"""autocompress: search compression policies for Transformer classifiers.

The public verbs, in the order data flows::

    config = autocompress.load_config("search_spaces/quickstart.yaml")
    result = autocompress.search(config)              # Optuna study -> Pareto front
    model = autocompress.compress(teacher, Policy.load("out/best_policy.json"))
    deployment = autocompress.measure(model, ...)     # lower to ONNX Runtime, verify, time

Imports are lazy so that ``autocompress --help`` and config errors stay fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["ConfigError", "Policy", "SearchConfig", "compress", "load_config", "measure", "search"]

_PUBLIC = {
    "ConfigError": ("autocompress.config", "ConfigError"),
    "SearchConfig": ("autocompress.config", "SearchConfig"),
    "load_config": ("autocompress.config", "load_config"),
    "Policy": ("autocompress.policy", "Policy"),
    "compress": ("autocompress.compress", "compress"),
    "measure": ("autocompress.measure", "deploy_and_measure"),
    "search": ("autocompress.search", "run_search"),
}


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'autocompress' has no attribute {name!r}")
    module, attribute = _PUBLIC[name]
    value = getattr(import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

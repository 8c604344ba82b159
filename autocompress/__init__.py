"""autocompress: search compression policies for Transformer classifiers.

The public verbs, in the order data flows::

    config = autocompress.load_config("search_spaces/quickstart.yaml")
    result = autocompress.search(config)                 # Optuna study -> Pareto front
    model = autocompress.compress(teacher, autocompress.Policy.load("out/best_policy.json"))
    deployment = autocompress.measure(model, ...)        # lower to ONNX Runtime, verify, time

The verbs shadow the submodules of the same name on this package: import
internals with ``from autocompress.search import ...``.
"""

from autocompress.compress import compress
from autocompress.config import ConfigError, SearchConfig, load_config
from autocompress.measure import deploy_and_measure as measure
from autocompress.policy import Policy
from autocompress.search import run_search as search

__all__ = ["ConfigError", "Policy", "SearchConfig", "compress", "load_config", "measure", "search"]

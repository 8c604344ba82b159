"""autocompress: search compression policies for Transformer models.

The public verbs, in the order data flows::

    config = autocompress.load_config("search_spaces/quickstart.yaml")
    result = autocompress.search(config)                 # Optuna study -> Pareto front
    model = autocompress.compress(teacher, autocompress.Policy.load("out/best_policy.json"))
    deployment = autocompress.measure(model, ...)        # lower to ONNX Runtime, verify, time
    autocompress.export(origin, ["onnx", "hf"], "out/exports")

The layers, each a subpackage: ``tasks`` (data, metrics, teacher), ``models``
(loading, families, shrunk models), ``techniques``, ``distill``, ``runtime``,
``measurement``, ``cost``, ``controller`` (the search), ``tracking`` (MLflow)
and ``exporters``. The verbs that need torch load it on first use, so
``autocompress status`` and the other job commands start fast.
"""

import importlib
import logging
from typing import Any

from autocompress.config import ConfigError, SearchConfig, load_config
from autocompress.policy import Policy

# transformers imports torchao when it is installed (the torchao export format): its CUDA kernels fail to load on a
# CPU and its enums trip a torch deprecation notice, loudly, in every process. Neither concerns a user.
for _noisy in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)

_VERBS = {
    "search": ("autocompress.controller.run", "run_search"),
    "compress": ("autocompress.techniques", "compress"),
    "measure": ("autocompress.measurement", "deploy_and_measure"),
    "export": ("autocompress.exporters.workflow", "export"),
}

__all__ = ["ConfigError", "Policy", "SearchConfig", "compress", "export", "load_config", "measure", "search"]


def __getattr__(name: str) -> Any:
    """The verbs that import torch, loaded on first use (PEP 562)."""
    if name in _VERBS:
        module, attribute = _VERBS[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

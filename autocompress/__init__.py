"""autocompress: search compression policies for Transformer classifiers.

The public verbs, in the order data flows::

    config = autocompress.load_config("search_spaces/quickstart.yaml")
    result = autocompress.search(config)                 # Optuna study -> Pareto front
    model = autocompress.compress(teacher, autocompress.Policy.load("out/best_policy.json"))
    deployment = autocompress.measure(model, ...)        # lower to ONNX Runtime, verify, time

The verbs shadow the submodules of the same name on this package: import
internals with ``from autocompress.search import ...``. They load torch on
first use, so ``autocompress status`` and the other job commands start fast.
"""

import importlib
import logging
import sys
import types

from autocompress.config import ConfigError, SearchConfig, load_config
from autocompress.policy import Policy

# transformers imports torchao when it is installed (the torchao export format): its CUDA kernels fail to load on a
# CPU and its enums trip a torch deprecation notice, loudly, in every process. Neither concerns a user.
for _noisy in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)

__all__ = ["ConfigError", "Policy", "SearchConfig", "compress", "load_config", "measure", "search"]


class _Verb:
    """A package attribute imported on first use; the import system binding the same-named submodule is ignored."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __get__(self, package: object, owner: type | None = None) -> object:
        return getattr(importlib.import_module(self.module), self.name)

    def __set__(self, package: object, submodule: object) -> None:
        """``import autocompress.search`` sets the submodule here; the verb stays (internals use ``from ... import``)."""


class _Package(types.ModuleType):
    search = _Verb("autocompress.search", "run_search")
    compress = _Verb("autocompress.compress", "compress")
    measure = _Verb("autocompress.measure", "deploy_and_measure")


sys.modules[__name__].__class__ = _Package

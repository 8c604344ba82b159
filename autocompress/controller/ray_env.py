"""The environment Ray and its workers need: one auth mode everywhere, no usage stats, our cache and data found.

Imported by everything that talks to Ray (workers, jobs) before Ray itself is.
"""

from __future__ import annotations

import os
import sys

from autocompress.config import DATA_ROOT_ENV
from autocompress.paths import CACHE_ENV

FORWARDED_ENV = (CACHE_ENV, DATA_ROOT_ENV, "HF_HUB_OFFLINE", "HF_HOME", "HF_DATASETS_OFFLINE", "TOKENIZERS_PARALLELISM")
"""Environment the workers need to find the same cache, data and models as the search process."""
RAY_DEFAULTS = {"RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0", "RAY_OVERRIDE_JOB_RUNTIME_ENV": "1"}
"""Ray 2.60 turns token auth on for new clusters; we say so explicitly, so head, workers and clients agree.
A search submitted as a Ray job merges its workers' environment with the job's (Ray refuses otherwise)."""


def ray_environment() -> None:
    """Ray's auth mode and usage stats, set the same way for this process and everything it starts.

    Ray caches its settings when imported, so this runs when this module is imported (below), and, if Ray
    was imported first, refreshes Ray's cache as Ray itself does when it turns token auth on.
    """
    for key, value in RAY_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if "ray._raylet" in sys.modules:
        from ray._raylet import Config

        Config.initialize("")


ray_environment()

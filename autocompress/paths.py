"""Where autocompress keeps what it computes once and reuses: one root, one function per kind; and atomic writes.

The root is ``$AUTOCOMPRESS_CACHE`` if set, else ``~/.cache/autocompress``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

CACHE_ENV = "AUTOCOMPRESS_CACHE"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "autocompress")


def teachers_dir() -> Path:
    """Fine-tuned teachers, one folder per hash of model files, data and recipe."""
    return cache_root() / "teachers"


def locks_dir() -> Path:
    """Lock files of work done once for every search on this cache (a teacher's fine-tuning), kept out of the folders they guard."""
    return cache_root() / "locks"


def teacher_logits_dir() -> Path:
    """The teacher's logits on distillation batches (safetensors)."""
    return cache_root() / "teacher_logits"


def cost_models_dir() -> Path:
    """Cost-model measurements and fitted models, per hardware fingerprint."""
    return cache_root() / "cost_models"


def study_work_dir(study_uid: str) -> Path:
    """Trial artifacts of one study, keyed by the study's unique id (not its name, which another storage may reuse)."""
    return cache_root() / "work" / study_uid


def latency_lock_path() -> Path:
    """The lock that keeps any two latency measurements on this machine from overlapping."""
    return cache_root() / "latency.lock"


def write_json(path: Path, content: Any) -> Path:
    """Write atomically, so an interrupted search never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        json.dump(content, handle, indent=2)
        handle.write("\n")
    Path(handle.name).replace(path)
    return path

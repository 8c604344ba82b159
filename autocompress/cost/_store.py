"""Fitted cost models and their measurements on disk, one pair per (hardware fingerprint, target).

Latency only transfers between identical machines, so everything is keyed by
the hardware fingerprint id. The measurements are kept as JSON Lines next to
the model so the model can be refit as new ones arrive; one ``write`` per line
in append mode keeps concurrent trials from overwriting each other's samples.
Models are saved with skops and loaded only if every type in the file is in
an explicit allow-list, so a tampered file cannot run code.

Layout: ``root/<fingerprint_id>/<target>.jsonl`` and ``<target>.skops``.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from numbers import Real
from pathlib import Path

from sklearn.base import clone

from autocompress.cost._model import CostModel, CostTerms, Features, _check_features

TRUSTED_TYPES: list[str] = [
    f"{CostModel.__module__}.{CostModel.__qualname__}",
    f"{CostTerms.__module__}.{CostTerms.__qualname__}",
    "sklearn.pipeline.Pipeline",
    "sklearn.feature_extraction._dict_vectorizer.DictVectorizer",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.linear_model._bayes.BayesianRidge",
]
"""Types a stored cost model may contain; a file holding anything else is refused."""

_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _check_key(name: str, value: object) -> str:
    if not isinstance(value, str) or not _KEY.fullmatch(value):
        raise ValueError(f"{name} must be a non-empty str of letters, digits, '_', '.', '-' not starting with a symbol, got {value!r}")
    return value


class CostModelStore:
    """Save, load and refit ``CostModel``s under ``root``, keyed by (hardware fingerprint id, target)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _path(self, fingerprint_id: str, target: str, suffix: str) -> Path:
        folder = self.root / _check_key("fingerprint_id", fingerprint_id)
        return folder / f"{_check_key('target', target)}{suffix}"

    def add(self, fingerprint_id: str, target: str, features: Features, value: float) -> int:
        """Append one measurement; return how many are stored for this key now."""
        (row,) = _check_features([features], name="features")
        if not isinstance(value, Real) or not math.isfinite(value):
            raise ValueError(f"value must be a finite number, got {value!r}")
        path = self._path(fingerprint_id, target, ".jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"features": dict(row), "value": float(value)}, sort_keys=True) + "\n"
        with path.open("a", encoding="utf-8") as f:
            f.write(line)
        return len(self.samples(fingerprint_id, target)[1])

    def samples(self, fingerprint_id: str, target: str) -> tuple[list[dict[str, float]], list[float]]:
        """All stored ``(features, values)`` for this key, in the order they were added."""
        path = self._path(fingerprint_id, target, ".jsonl")
        features: list[dict[str, float]] = []
        values: list[float] = []
        if not path.exists():
            return features, values
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                try:
                    record = json.loads(line)
                    features.append(dict(record["features"]))
                    values.append(float(record["value"]))
                except (ValueError, KeyError, TypeError) as exc:
                    raise ValueError(f"{path}:{number}: not a cost sample ({exc})") from exc
        return features, values

    def fit(self, fingerprint_id: str, target: str, *, estimator: CostModel | None = None) -> CostModel:
        """Fit a fresh model (a clone of ``estimator``, default ``CostModel()``) on all stored samples and save it."""
        features, values = self.samples(fingerprint_id, target)
        import skops.io as sio  # here, not at import: skops imports every scikit-learn estimator (seconds) to list trusted types

        model = (CostModel() if estimator is None else clone(estimator)).fit(features, values)
        data = sio.dumps(model)
        unknown = sorted(set(sio.get_untrusted_types(data=data)) - set(TRUSTED_TYPES))
        if unknown:
            raise ValueError(f"estimator holds types the store will not load back: {unknown}; allowed: {TRUSTED_TYPES}")
        path = self._path(fingerprint_id, target, ".skops")
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
            tmp.write(data)
        os.replace(tmp.name, path)
        return model

    def load(self, fingerprint_id: str, target: str) -> CostModel | None:
        """The saved model for this key, or ``None`` if none was fit yet; refuses files with unlisted types."""
        path = self._path(fingerprint_id, target, ".skops")
        if not path.exists():
            return None
        import skops.io as sio

        try:
            model = sio.load(path, trusted=TRUSTED_TYPES)
        except Exception as exc:  # skops raises many types for a damaged file; all mean "do not use it"
            raise ValueError(f"refusing to load cost model {path}: {exc}") from exc
        if not isinstance(model, CostModel):
            raise ValueError(f"refusing to load cost model {path}: it holds a {type(model).__name__}, not a CostModel")
        return model

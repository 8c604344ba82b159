"""A learned cost model: a policy's latency or size from its feature dict, with uncertainty.

A Transformer's latency is close to a sum over its kept layers of terms
proportional to ``heads x seq_len`` and ``ffn x seq_len``, each scaled by a
precision factor; its size is the same sum without ``seq_len``. The raw
per-layer features are therefore first turned into *cost terms*: within each
layer, every field and every product of two fields, gated by the layer's
``kept`` flag and summed over the layers of a family (``layer0``, ``layer1``,
... sum into ``layer``), then multiplied by each global field (``seq_len``,
``embedding_bits``). The cost is linear in these terms, so a Bayesian linear
model on them (``BayesianRidge``) fits well from 10-50 measurements, gives a
predictive standard deviation that grows away from the data, and extrapolates
linearly instead of flattening out as a forest or a Gaussian process does. The
term count does not grow with the model's depth.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from numbers import Real
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, TransformerMixin, clone
from sklearn.feature_extraction import DictVectorizer
from sklearn.linear_model import BayesianRidge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

Features = Mapping[str, float]

_GATE = "kept"
_TRAILING_INDEX = re.compile(r"[._-]?\d+$")


def _check_features(X: Any, *, name: str = "X") -> list[Features]:
    """Return ``X`` as a list of feature dicts, or raise naming the first bad entry."""
    if isinstance(X, (str, bytes, Mapping)) or not isinstance(X, Sequence):
        raise TypeError(f"{name} must be a list of feature dicts, got {type(X).__name__}")
    if len(X) == 0:
        raise ValueError(f"{name} must hold at least one feature dict, got an empty list")
    for i, row in enumerate(X):
        if not isinstance(row, Mapping):
            raise TypeError(f"{name}[{i}] must be a dict of str to number, got {type(row).__name__}")
        for key, value in row.items():
            if not isinstance(key, str):
                raise TypeError(f"{name}[{i}] key {key!r} must be a str")
            if not isinstance(value, Real) or not math.isfinite(value):
                raise ValueError(f"{name}[{i}][{key!r}] = {value!r}; expected a finite number")
    return list(X)


def _check_z(z: float) -> None:
    if not (isinstance(z, Real) and z >= 0 and math.isfinite(z)):
        raise ValueError(f"z must be a finite number >= 0, got {z!r}")


def cost_terms(features: Features) -> dict[str, float]:
    """Turn one flat feature dict into the cost terms the regressor sees.

    A key ``"<group>.<field>"`` is a per-layer field; the group's family is its
    name without a trailing index (``layer0`` and ``encoder.layer.1`` give
    ``layer`` and ``encoder.layer``). Terms are each field and each product of
    two fields (squares included) times the group's ``kept`` (1 if absent),
    summed per family, and all of those times each global (dot-free) field.
    A missing field counts as 0.
    """
    groups: dict[str, dict[str, float]] = {}
    globals_: dict[str, float] = {}
    for key, value in features.items():
        group, dot, field = key.rpartition(".")
        if dot:
            groups.setdefault(group, {})[field] = float(value)
        else:
            globals_[key] = float(value)
    sums: dict[str, float] = {}
    for group, fields in groups.items():
        family = _TRAILING_INDEX.sub("", group) or group
        gate = fields.pop(_GATE, 1.0)
        names = sorted(fields)
        _add(sums, f"{family}.{_GATE}", gate)
        for i, a in enumerate(names):
            _add(sums, f"{family}.{a}", gate * fields[a])
            for b in names[i:]:
                _add(sums, f"{family}.{a}*{b}", gate * fields[a] * fields[b])
    terms = dict(sums)
    for g, g_value in globals_.items():
        terms[g] = g_value
        for s, s_value in sums.items():
            terms[f"{g}*{s}"] = g_value * s_value
    return terms


def _add(sums: dict[str, float], key: str, value: float) -> None:
    sums[key] = sums.get(key, 0.0) + value


class CostTerms(TransformerMixin, BaseEstimator):
    """Stateless pipeline step that maps feature dicts to cost-term dicts (see ``cost_terms``)."""

    def fit(self, X: Sequence[Features], y: Any = None) -> CostTerms:
        _check_features(X)
        return self

    def transform(self, X: Sequence[Features]) -> list[dict[str, float]]:
        return [cost_terms(row) for row in _check_features(X)]

    def __sklearn_is_fitted__(self) -> bool:
        return True


class CostModel(RegressorMixin, BaseEstimator):
    """Predict a cost (latency, size) of a policy from its feature dict, with a standard deviation.

    ``regressor`` is the final step (default ``BayesianRidge()``); it must accept
    ``predict(X, return_std=True)``. Inputs are lists of flat feature dicts.
    """

    def __init__(self, *, regressor: Any = None) -> None:
        self.regressor = regressor

    def fit(self, X: Sequence[Features], y: Any) -> CostModel:
        rows = _check_features(X)
        target = np.asarray(y, dtype=float)
        if target.ndim != 1 or target.shape[0] != len(rows):
            raise ValueError(f"y must be a 1-D sequence of {len(rows)} numbers (one per row of X), got shape {target.shape}")
        if not np.all(np.isfinite(target)):
            raise ValueError("y must hold finite numbers only; got NaN or infinity")
        if len(rows) < 2:
            raise ValueError(f"CostModel needs at least 2 samples to fit, got {len(rows)}")
        regressor = BayesianRidge() if self.regressor is None else clone(self.regressor)
        self.pipeline_ = Pipeline(
            [
                ("terms", CostTerms()),
                ("vectorize", DictVectorizer(sparse=False)),
                ("scale", StandardScaler()),
                ("regress", regressor),
            ]
        ).fit(rows, target)
        self.n_samples_fit_ = len(rows)
        return self

    def predict(self, X: Sequence[Features], return_std: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Predicted cost per row; with ``return_std=True`` also its predictive standard deviation."""
        check_is_fitted(self)
        rows = _check_features(X)
        if return_std:
            mean, std = self.pipeline_.predict(rows, return_std=True)
            return np.asarray(mean, dtype=float), np.asarray(std, dtype=float)
        return np.asarray(self.pipeline_.predict(rows), dtype=float)

    def prediction_interval(self, X: Sequence[Features], *, z: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
        """``(lower, upper)`` = mean -/+ ``z`` standard deviations, per row."""
        _check_z(z)
        mean, std = self.predict(X, return_std=True)
        return mean - z * std, mean + z * std

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.dict = True
        tags.input_tags.two_d_array = False
        return tags


def is_clearly_infeasible(
    model: CostModel, features: Features, *, limit: float, z: float = 2.0, min_samples: int = 8
) -> tuple[bool, float]:
    """``(reject, predicted)``: reject when even the lower bound of the interval exceeds ``limit``.

    A model fit on fewer than ``min_samples`` measurements is not trusted to reject.
    """
    if not (isinstance(limit, Real) and math.isfinite(limit)):
        raise ValueError(f"limit must be a finite number, got {limit!r}")
    if not (isinstance(min_samples, int) and min_samples >= 2):
        raise ValueError(f"min_samples must be an int >= 2, got {min_samples!r}")
    _check_z(z)
    mean, std = model.predict([features], return_std=True)
    lower = float(mean[0] - z * std[0])
    trusted = model.n_samples_fit_ >= min_samples
    return bool(trusted and lower > limit), float(mean[0])

"""The compression policy: what to do to each layer, as versioned, frozen data.

Layers are addressed by full module name or by a ``re:`` pattern (matched with
``re.fullmatch``). Precedence, as in torchao: an exact name wins over any
pattern; among patterns the first listed wins; unmatched layers get
``LayerSpec()`` (untouched). Block-level structure (heads, FFN width, kept
blocks) is indexed by the block number of the *uncompressed* model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema

from autocompress.config import ConfigError

POLICY_VERSION = 1
PATTERN_PREFIX = "re:"
QUANT_SCHEMES = ("linear", "kmeans")
EMBEDDING_BITS = (4, 8, 32)
"""Word-embedding precision; quantized tables have one scale per row (per token)."""


SCHEMA_PATH = Path(__file__).parent / "schemas" / f"policy-v{POLICY_VERSION}.schema.json"
"""The policy format as JSON Schema, shipped in the package: what other tools and editors validate against."""


class PolicyError(ConfigError):
    """A policy file or dict breaks the schema; the message names the source, the field and what is allowed."""


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def validate(data: Any, *, source: str = "policy") -> None:
    """Raise ``PolicyError`` for the first schema violation, naming the field (``layers.re:...\.0\..*.bits``)."""
    if isinstance(data, Mapping) and data.get("version", POLICY_VERSION) != POLICY_VERSION:
        raise PolicyError(f"{source}: policy version {data['version']!r} is not supported; this release reads version {POLICY_VERSION}")
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema()).iter_errors(data))
    if error is not None:
        where = ".".join(str(part) for part in error.absolute_path) or "(top level)"
        raise PolicyError(f"{source}: {where}: {error.message}")


@dataclass(frozen=True)
class LayerSpec:
    """Weight bits and unstructured (local magnitude) pruning ratio of one Linear layer."""

    bits: int = 32
    prune_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.bits not in (2, 3, 4, 5, 6, 7, 8, 16, 32):
            raise ValueError(f"bits must be one of 2..8, 16, 32; got {self.bits}")
        if not 0.0 <= self.prune_ratio < 1.0:
            raise ValueError(f"prune_ratio must lie in [0, 1); got {self.prune_ratio}")


@dataclass(frozen=True)
class Policy:
    """A complete compression policy for one model."""

    layers: Mapping[str, LayerSpec] = field(default_factory=dict)
    scheme: str = "linear"
    group_size: int | None = None
    global_prune_ratio: float = 0.0
    embedding_bits: int = 32
    heads: Mapping[int, int] = field(default_factory=dict)
    ffn: Mapping[int, int] = field(default_factory=dict)
    kept_blocks: tuple[int, ...] | None = None
    recovery_steps: int = 0
    vocab_rows: int | None = None
    """Word-embedding rows kept (the task's most used tokens; the others read their nearest kept row); None keeps all."""
    version: int = POLICY_VERSION

    def __post_init__(self) -> None:
        if self.version != POLICY_VERSION:
            raise ValueError(f"policy version {self.version} is not supported; this release reads {POLICY_VERSION}")
        if self.scheme not in QUANT_SCHEMES:
            raise ValueError(f"scheme must be one of {QUANT_SCHEMES}; got {self.scheme!r}")
        if self.group_size is not None and self.group_size < 1:
            raise ValueError(f"group_size must be a positive integer or null; got {self.group_size}")
        if not 0.0 <= self.global_prune_ratio < 1.0:
            raise ValueError(f"global_prune_ratio must lie in [0, 1); got {self.global_prune_ratio}")
        if self.global_prune_ratio and any(spec.prune_ratio for spec in self.layers.values()):
            raise ValueError("use either global_prune_ratio or per-layer prune_ratio, not both")
        if self.recovery_steps < 0:
            raise ValueError(f"recovery_steps must be >= 0; got {self.recovery_steps}")
        if self.vocab_rows is not None and self.vocab_rows < 1:
            raise ValueError(f"vocab_rows must be a positive integer or null; got {self.vocab_rows}")
        if self.embedding_bits not in EMBEDDING_BITS:
            raise ValueError(f"embedding_bits must be one of {EMBEDDING_BITS}; got {self.embedding_bits}")
        for key in self.layers:
            if key.startswith(PATTERN_PREFIX):
                re.compile(key[len(PATTERN_PREFIX) :])

    def spec_for(self, name: str) -> LayerSpec:
        """The spec that applies to the module ``name`` under the precedence rules."""
        if name in self.layers:
            return self.layers[name]
        for key, spec in self.layers.items():
            if key.startswith(PATTERN_PREFIX) and re.fullmatch(key[len(PATTERN_PREFIX) :], name):
                return spec
        return LayerSpec()

    def resolve(self, names: Iterable[str]) -> dict[str, LayerSpec]:
        return {name: self.spec_for(name) for name in names}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["layers"] = {name: asdict(spec) for name, spec in self.layers.items()}
        data["heads"] = {str(k): v for k, v in self.heads.items()}
        data["ffn"] = {str(k): v for k, v in self.ffn.items()}
        data["kept_blocks"] = list(self.kept_blocks) if self.kept_blocks is not None else None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "policy") -> "Policy":
        """Validate ``data`` against the shipped JSON Schema (errors name ``source`` and the field), then build."""
        validate(data, source=source)
        data = dict(data)
        data["layers"] = {name: LayerSpec(**spec) for name, spec in data.get("layers", {}).items()}
        data["heads"] = {int(k): int(v) for k, v in data.get("heads", {}).items()}
        data["ffn"] = {int(k): int(v) for k, v in data.get("ffn", {}).items()}
        if data.get("kept_blocks") is not None:
            data["kept_blocks"] = tuple(int(i) for i in data["kept_blocks"])
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, source: str = "policy") -> "Policy":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise PolicyError(f"{source}: not JSON ({error})") from None
        return cls.from_dict(data, source=source)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Policy":
        try:
            text = Path(path).read_text()
        except OSError as error:
            raise PolicyError(f"{path}: cannot read policy ({error.strerror})") from None
        return cls.from_json(text, source=str(path))

    def params(self, blocks: Sequence[Iterable[str]], *, heads: int, ffn: int) -> dict[str, Any]:
        """One scalar per key, the same keys for every policy of one model, for MLflow params and reports.

        ``blocks`` holds each encoder block's Linear names; ``heads`` and
        ``ffn`` are the uncompressed block's. Per block: the effective weight
        bits ("mixed" when its Linears differ), unstructured pruning ratio
        (likewise), kept heads, kept FFN width, and whether the block is kept,
        so MLflow's compare view and parallel coordinates line trials up.
        """
        params: dict[str, Any] = {
            "scheme": self.scheme,
            "group_size": self.group_size,
            "global_prune_ratio": self.global_prune_ratio,
            "embedding_bits": self.embedding_bits,
            "recovery_steps": self.recovery_steps,
            "vocab_rows": self.vocab_rows,
            "num_blocks": len(blocks),
            "kept_blocks": len(self.kept_blocks) if self.kept_blocks is not None else len(blocks),
        }
        for index, names in enumerate(blocks):
            specs = [self.spec_for(name) for name in names]
            params[f"block{index}.bits"] = _one_or_mixed(spec.bits for spec in specs)
            params[f"block{index}.prune_ratio"] = _one_or_mixed(spec.prune_ratio for spec in specs)
            params[f"block{index}.heads"] = self.heads.get(index, heads)
            params[f"block{index}.ffn"] = self.ffn.get(index, ffn)
            params[f"block{index}.kept"] = self.kept_blocks is None or index in self.kept_blocks
        return params


def _one_or_mixed(values: Iterable[Any]) -> Any:
    distinct = set(values)
    return distinct.pop() if len(distinct) == 1 else "mixed"

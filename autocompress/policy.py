"""The compression policy: what to do to each layer, as versioned, frozen data.

Layers are addressed by full module name or by a ``re:`` pattern (matched with
``re.fullmatch``). Precedence, as in torchao: an exact name wins over any
pattern; among patterns the first listed wins; unmatched layers get
``LayerSpec()`` (untouched). Block-level structure (heads, FFN width, kept
blocks) is indexed by the block number of the *uncompressed* model.

A policy file (version 2) holds the task it was found for, the per-layer
``layers`` map (the bits quantization reads, the ratios magnitude pruning
reads) and one section per technique. Each technique declares its section's
fields and their JSON Schema (``autocompress.techniques``), so the schema is
assembled from the plug-ins. Version-1 files (flat fields) still load,
converted, with a one-line warning.
"""

from __future__ import annotations

import copy
import json
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import jsonschema

from autocompress.config import SCHEMAS, ConfigError
from autocompress.deprecation import RenamedWarning

if TYPE_CHECKING:
    from autocompress.techniques import Technique

POLICY_VERSION = 2
READS_VERSIONS = (1, 2)
PATTERN_PREFIX = "re:"
LAYER_BITS = (2, 3, 4, 5, 6, 7, 8, 16, 32)
DEFAULT_TASK = "sequence-classification"

SCHEMA_PATH = SCHEMAS / f"policy-v{POLICY_VERSION}.schema.json"
"""The policy format as JSON Schema, shipped in the package (assembled from the techniques by ``assemble_schema``)."""


class PolicyError(ConfigError):
    """A policy file or dict breaks the schema; the message names the source, the field and what is allowed."""


def _techniques() -> tuple[type[Technique], ...]:
    """The registered techniques, whose sections make a version-2 policy."""
    from autocompress.techniques import TECHNIQUES

    return TECHNIQUES


LAYER_SCHEMA = {
    "type": "object",
    "description": "per Linear layer (exact module name or 're:' pattern): weight bits (quantization) and unstructured "
    "magnitude pruning; an exact name wins over any pattern, among patterns the first listed wins",
    "additionalProperties": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "bits": {"enum": list(LAYER_BITS), "default": 32, "description": "weight bits; 32 keeps float, 16 rounds to half precision"},
            "prune_ratio": {"type": "number", "minimum": 0, "exclusiveMaximum": 1, "default": 0,
                            "description": "share of the layer's smallest-magnitude weights set to zero"},
        },
    },
}


def assemble_schema() -> dict[str, Any]:
    """The version-2 JSON Schema: the task, the layer map, and each registered technique's section."""
    from autocompress.tasks import TASKS

    sections = {
        technique.name: {"type": "object", "additionalProperties": False, "description": technique.__doc__.strip().splitlines()[0],
                         "properties": {name: dict(schema) for name, schema in technique.fields.items()}}
        for technique in _techniques()
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://autocompress.dev/schemas/policy-v{POLICY_VERSION}.schema.json",
        "title": f"autocompress compression policy, version {POLICY_VERSION}",
        "description": "What to do to each layer of one Transformer model: the task it was found for, the per-layer map, "
        "and one section per compression technique. Block indices are those of the uncompressed model.",
        "type": "object",
        "additionalProperties": False,
        "required": ["version"],
        "properties": {
            "version": {"const": POLICY_VERSION, "description": "policy format version; version 1 files are read and converted"},
            "task": {"enum": sorted(name for name, task in TASKS.items() if task.layer_policy), "default": DEFAULT_TASK, "description": "the task the policy was searched for"},
            "layers": LAYER_SCHEMA,
            "techniques": {"type": "object", "additionalProperties": False, "properties": sections,
                           "description": "one section per technique; a section or field left out keeps its default"},
        },
    }


def write_schema(path: Path = SCHEMA_PATH) -> Path:
    """Ship the assembled schema (``python -c "from autocompress.policy import write_schema; write_schema()"`` after a technique changes)."""
    path.write_text(json.dumps(assemble_schema(), indent=2) + "\n")
    return path


@lru_cache(maxsize=2)
def schema(version: int = POLICY_VERSION) -> dict[str, Any]:
    """The shipped JSON Schema of policy ``version`` (1 or 2)."""
    return json.loads((SCHEMAS / f"policy-v{version}.schema.json").read_text())


@lru_cache(maxsize=4)
def _validator(techniques: tuple[type[Technique], ...]) -> jsonschema.Validator:
    """The version-2 schema as the registered ``techniques`` assemble it (the shipped file is the same, for other tools)."""
    return jsonschema.Draft202012Validator(assemble_schema())


def validate(data: Any, *, source: str = "policy") -> None:
    """Raise ``PolicyError`` for the first schema violation, naming the field (``layers.re:...\\.0\\..*.bits``)."""
    version = data.get("version", 1) if isinstance(data, Mapping) else POLICY_VERSION
    if version not in READS_VERSIONS:
        raise PolicyError(f"{source}: policy version {version!r} is not supported; this release reads versions {list(READS_VERSIONS)}")
    validator = _validator(_techniques()) if version == POLICY_VERSION else jsonschema.Draft202012Validator(schema(version))
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        where = ".".join(str(part) for part in error.absolute_path) or "(top level)"
        raise PolicyError(f"{source}: {where}: {error.message}")


@dataclass(frozen=True)
class LayerSpec:
    """Weight bits and unstructured (local magnitude) pruning ratio of one Linear layer."""

    bits: int = 32
    prune_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.bits not in LAYER_BITS:
            raise ValueError(f"bits must be one of 2..8, 16, 32; got {self.bits}")
        if not 0.0 <= self.prune_ratio < 1.0:
            raise ValueError(f"prune_ratio must lie in [0, 1); got {self.prune_ratio}")


class Policy:
    """A complete compression policy for one model: the task, the per-layer map and each technique's settings.

    A setting is a keyword named by the technique that owns it (``Policy(vocab_rows=6000)``)
    and read back as an attribute (``policy.vocab_rows``); one left out takes
    its technique's default. Each registered technique checks its own settings,
    so the policy names none of them. Frozen: ``replace`` makes a changed copy.
    """

    __slots__ = ("layers", "task", "settings")

    def __init__(self, layers: Mapping[str, LayerSpec] | None = None, *, task: str = DEFAULT_TASK, version: int = POLICY_VERSION,
                 **settings: Any) -> None:
        if version != POLICY_VERSION:
            raise ValueError(f"a Policy is version {POLICY_VERSION}, not {version}; Policy.from_dict converts version-1 dicts")
        defaults = _defaults()
        unknown = sorted(set(settings) - set(defaults))
        if unknown:
            raise TypeError(f"Policy got unknown setting(s) {unknown}; the registered techniques own {sorted(defaults)}")
        layers = dict(layers or {})
        for key in layers:
            if key.startswith(PATTERN_PREFIX):
                re.compile(key[len(PATTERN_PREFIX) :])
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "task", task)
        object.__setattr__(self, "settings", MappingProxyType(defaults | settings))
        for technique in _techniques():
            technique.check(self)

    def __getattr__(self, name: str) -> Any:
        try:
            return object.__getattribute__(self, "settings")[name]
        except (KeyError, AttributeError):
            raise AttributeError(f"{type(self).__name__!r} has no setting {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"a Policy is frozen; use policy.replace({name}=...)")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Policy):
            return NotImplemented
        return (self.layers, self.task, dict(self.settings)) == (other.layers, other.task, dict(other.settings))

    __hash__ = None  # type: ignore[assignment]  # mutable mappings inside

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuilt, (self.layers, self.task, dict(self.settings))

    def __repr__(self) -> str:
        changed = {name: value for name, value in self.settings.items() if value != _shared_defaults()[name]}
        fields = [f"layers={self.layers!r}"] * bool(self.layers) + [f"{name}={value!r}" for name, value in changed.items()]
        return f"Policy({', '.join(fields + [f'task={self.task!r}'])})"

    @property
    def version(self) -> int:
        return POLICY_VERSION

    def replace(self, **changes: Any) -> Policy:
        """A copy with ``changes`` (settings, ``layers`` or ``task``) applied, checked like a new policy."""
        layers = changes.pop("layers", self.layers)
        task = changes.pop("task", self.task)
        return Policy(layers, task=task, **(dict(self.settings) | changes))

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
        """The version-2 form: task, layer map, and each technique's section."""
        return {
            "version": POLICY_VERSION,
            "task": self.task,
            "layers": {name: asdict(spec) for name, spec in self.layers.items()},
            "techniques": {technique.name: technique.section(self) for technique in _techniques()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "policy") -> Policy:
        """Validate ``data`` (version 2, or version 1, converted) against its schema, then build."""
        validate(data, source=source)
        if data.get("version", 1) == 1:
            data = upgrade_v1(data)
        layers = {name: LayerSpec(**spec) for name, spec in data.get("layers", {}).items()}
        sections = data.get("techniques", {})
        settings: dict[str, Any] = {}
        for technique in _techniques():
            settings |= technique.from_section(sections.get(technique.name, {}))
        return cls(layers, task=data.get("task", DEFAULT_TASK), **settings)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)  # key order kept: among layer patterns the first listed wins

    @classmethod
    def from_json(cls, text: str, *, source: str = "policy") -> Policy:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise PolicyError(f"{source}: not JSON ({error})") from None
        if isinstance(data, Mapping) and data.get("version", 1) == 1:  # a user's file: say it is old (stored studies convert silently)
            warnings.warn(f"{source}: policy version 1 read as version {POLICY_VERSION}; saving it writes version {POLICY_VERSION}",
                          RenamedWarning, stacklevel=3)
        return cls.from_dict(data, source=source)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        try:
            text = Path(path).read_text()
        except OSError as error:
            raise PolicyError(f"{path}: cannot read policy ({error.strerror})") from None
        return cls.from_json(text, source=str(path))

    def params(self, blocks: Sequence[Iterable[str]], *, heads: int, ffn: int) -> dict[str, Any]:
        """One scalar per key, the same keys for every policy of one model, for MLflow params and reports.

        ``blocks`` holds each encoder block's Linear names; ``heads`` and
        ``ffn`` are the uncompressed block's. Per block: the effective weight
        bits ("mixed" when its Linears differ) and unstructured pruning ratio
        (likewise); then each technique's own (``Technique.params``: kept
        heads, FFN width and blocks, ...), so MLflow's compare view and
        parallel coordinates line trials up.
        """
        params: dict[str, Any] = {"num_blocks": len(blocks)}
        for technique in _techniques():
            params |= technique.params(self, num_blocks=len(blocks), heads=heads, ffn=ffn)
        for index, names in enumerate(blocks):
            specs = [self.spec_for(name) for name in names]
            params[f"block{index}.bits"] = _one_or_mixed(spec.bits for spec in specs)
            params[f"block{index}.prune_ratio"] = _one_or_mixed(spec.prune_ratio for spec in specs)
        return params


def _rebuilt(layers: Mapping[str, LayerSpec], task: str, settings: Mapping[str, Any]) -> Policy:
    """A pickled policy, built again (and so checked again) where it is unpickled."""
    return Policy(layers, task=task, **settings)


def _defaults() -> dict[str, Any]:
    """Every registered technique's settings at their defaults: what an empty policy holds (a fresh copy)."""
    return copy.deepcopy(_shared_defaults())


@lru_cache(maxsize=1)
def _shared_defaults() -> dict[str, Any]:
    return {name: value for technique in _techniques() for name, value in technique.defaults().items()}


def upgrade_v1(data: Mapping[str, Any]) -> dict[str, Any]:
    """A version-1 policy dict (flat fields) in the version-2 form: each field moved into its technique's section."""
    sections = {technique.name: {name: data[name] for name in technique.fields if name in data} for technique in _techniques()}
    return {"version": POLICY_VERSION, "task": DEFAULT_TASK, "layers": dict(data.get("layers", {})),
            "techniques": {name: section for name, section in sections.items() if section}}


def field_of(data: Mapping[str, Any], name: str, default: Any = None) -> Any:
    """A policy field's value in a policy dict of either version (version 2: in the technique section holding it)."""
    if data.get("version", 1) == 1:
        return data.get(name, default)
    sections = data.get("techniques", {}).values()
    return next((section[name] for section in sections if name in section), default)


def _one_or_mixed(values: Iterable[Any]) -> Any:
    distinct = set(values)
    return distinct.pop() if len(distinct) == 1 else "mixed"

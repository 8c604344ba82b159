"""The ``space`` section: every decision a search may take, per block and per model.

A few decisions have keys of their own, declared here: the per-block bits
(``weight_bits``), the quantization scheme, magnitude pruning's mode and
ratios, and the structured shapes (``heads``, ``ffn_widths``,
``num_blocks``). Every other key is named after a technique's scalar policy
setting and lists that setting's values, one per trial (``vocab_rows: [6000,
12000]``). Those keys come from the shipped policy schema, which the
techniques assemble (``autocompress.policy.write_schema``), so a new
technique's settings are searchable with no edit here, and this layer, which
every other one reads, imports none of them.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any, Literal, Union

from pydantic import Field, create_model, model_validator

from autocompress.config._base import DEPLOYABLE_BITS, POLICY_SCHEMA, Strict


class PruneMode(StrEnum):
    NONE = "none"
    LOCAL = "local"
    GLOBAL = "global"


class _DeclaredSpace(Strict):
    """The decisions with keys of their own; ``SpaceConfig`` adds one key per technique setting."""

    weight_bits: list[Literal[2, 3, 4, 5, 6, 7, 8, 16, 32]] = Field(
        default_factory=lambda: [4, 8, 32],
        min_length=1,
        description="weight bit widths offered for each block's Linear layers; 32: float (unquantized), 16: float16; "
        "without simulation_only only 2, 4, 8, 16, 32 (ONNX Runtime CPU kernels)",
    )
    quant_scheme: list[Literal["linear", "kmeans"]] = Field(
        default_factory=lambda: ["linear"],
        min_length=1,
        description="quantization schemes offered, one per trial: linear (symmetric uniform grid, deployable) "
        "or kmeans (per-layer codebook, simulation_only)",
    )
    prune_mode: PruneMode = Field(
        PruneMode.LOCAL,
        description="magnitude pruning: none; local (a ratio from prune_ratios per block); global (one ratio, "
        "weights ranked across all layers); classifier and pooler are never pruned",
    )
    prune_ratios: list[float] = Field(
        default_factory=lambda: [0.0, 0.25, 0.5],
        min_length=1,
        description="fractions of weights zeroed by magnitude, each in [0, 1) (0.5 = half); the shipped file stores "
        "zeros densely, so this buys sparsity, not size",
    )
    heads: list[int] | None = Field(
        None,
        min_length=1,
        description="attention-head counts offered per block (the least important heads, by Taylor score, removed); null: keep all heads",
    )
    ffn_widths: list[int] | None = Field(
        None,
        min_length=1,
        description="FFN widths (intermediate neurons kept) offered per block, the least important removed; null: full width",
    )
    num_blocks: list[int] | None = Field(
        None,
        min_length=1,
        description="encoder-block counts offered, one per trial, kept evenly spaced (the last always kept); null: all blocks",
    )
    simulation_only: bool = Field(
        False,
        description="allow choices no CPU runtime executes (3/5/6/7 bits, kmeans); needs latency.backend: torch, "
        "so trials measure the torch simulation, not a shipped file",
    )

    @model_validator(mode="after")
    def _ratios_in_range(self) -> "_DeclaredSpace":
        bad = [r for r in self.prune_ratios if not 0.0 <= r < 1.0]
        if bad:
            raise ValueError(f"prune_ratios must lie in [0, 1), got {bad}")
        if not self.simulation_only:
            blocked = [b for b in self.weight_bits if b not in DEPLOYABLE_BITS] + [s for s in self.quant_scheme if s != "linear"]
            if blocked:
                raise ValueError(
                    f"{blocked} cannot run on ONNX Runtime's CPU kernels; deployable weight_bits: "
                    f"{list(DEPLOYABLE_BITS)} with quant_scheme [linear], or set space.simulation_only: true"
                )
        for name in ("heads", "ffn_widths", "num_blocks"):
            negative = [v for v in getattr(self, name) or [] if v < (1 if name == "num_blocks" else 0)]
            if negative:
                raise ValueError(f"{name} must hold non-negative counts (num_blocks >= 1), got {negative}")
        return self


OWN_KEYS = {"scheme": "quant_scheme", "global_prune_ratio": "prune_mode"}
"""Scalar settings a declared decision fills (so they take no key of their own) -> that decision's key."""
_JSON_TYPES: dict[str, Any] = {"integer": int, "number": float, "string": str, "boolean": bool, "null": None}


def _choice_type(schema: dict[str, Any]) -> Any:
    """The Python type of one value of a setting, from its JSON Schema (enum, type, minimum)."""
    if "enum" in schema:
        return Literal[tuple(schema["enum"])]
    kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    bounds = {key: schema[json_key] for key, json_key in (("ge", "minimum"), ("lt", "exclusiveMaximum")) if json_key in schema}
    types = [Annotated[_JSON_TYPES[kind], Field(**bounds)] if bounds and kind != "null" else _JSON_TYPES[kind] for kind in kinds]
    return Union[tuple(types)]  # built at run time, in the order the schema lists them (null first too)


def setting_keys(schema: dict[str, Any]) -> dict[str, Any]:
    """One ``space`` field per scalar technique setting of a policy ``schema``: a list of its values, default its default."""
    keys = {}
    for section in schema["properties"]["techniques"]["properties"].values():
        for name, setting in section["properties"].items():
            if name in OWN_KEYS or setting.get("type") in ("object", "array") or "array" in setting.get("type", []):
                continue
            description = f"values of the policy's {name} offered, one per trial: {setting['description']}"
            keys[name] = (list[_choice_type(setting)], Field(default_factory=lambda value=setting["default"]: [value], min_length=1,
                                                             description=description))
    return keys


SpaceConfig = create_model(
    "SpaceConfig", __base__=_DeclaredSpace, __doc__="Choices the sampler may make, per encoder block unless noted.",
    **setting_keys(json.loads(POLICY_SCHEMA.read_text())),
)

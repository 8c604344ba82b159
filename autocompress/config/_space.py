"""The ``space`` section: every decision a search may take, per block and per model."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field, model_validator

from autocompress.config._base import DEPLOYABLE_BITS, OutputPrecision, Strict


class PruneMode(StrEnum):
    NONE = "none"
    LOCAL = "local"
    GLOBAL = "global"


class SpaceConfig(Strict):
    """Choices the sampler may make, per encoder block unless noted."""

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
    group_size: list[int | None] = Field(
        default_factory=lambda: [None],
        min_length=1,
        description="quantization group sizes offered, one per trial, in weight columns per scale (positive); "
        "null: one scale per output channel; smaller groups: more accurate at low bits, a larger file",
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
    embedding_bits: list[Literal[4, 8, 32]] = Field(
        default_factory=lambda: [32],
        min_length=1,
        description="word-embedding precisions offered, one per trial: 32 float; 4 or 8: integer codes with one scale per token row",
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
    recovery_steps: list[int] = Field(
        default_factory=lambda: [0],
        min_length=1,
        description="KD fine-tune steps offered, one per trial, after pruning (see recovery); 0: no recovery; "
        "any value > 0 turns on distillation and the multi-fidelity pruner",
    )
    vocab_rows: list[int | None] = Field(
        default_factory=lambda: [None],
        min_length=1,
        description="word-embedding rows kept, one choice per trial: the special tokens and the tokens the task's "
        "training text uses most; every other token id reads its nearest kept row; null: keep the whole vocabulary",
    )
    output_precision: list[OutputPrecision] = Field(
        default_factory=lambda: ["float32"],
        min_length=1,
        description="how a search index stores each output embedding, one choice per trial (task.type embedding only): "
        "float32 (4 bytes a dimension), int8 (1 byte: 256 buckets between calibrated ranges) or binary (1 bit: the sign); "
        "neighbour recall@10 is scored on the stored vectors and the bytes per vector are reported",
    )
    simulation_only: bool = Field(
        False,
        description="allow choices no CPU runtime executes (3/5/6/7 bits, kmeans); needs latency.backend: torch, "
        "so trials measure the torch simulation, not a shipped file",
    )

    @model_validator(mode="after")
    def _ratios_in_range(self) -> "SpaceConfig":
        bad = [r for r in self.prune_ratios if not 0.0 <= r < 1.0]
        if bad:
            raise ValueError(f"prune_ratios must lie in [0, 1), got {bad}")
        bad_groups = [g for g in self.group_size if g is not None and g < 1]
        if bad_groups:
            raise ValueError(f"group_size must hold positive column counts or null (per output channel), got {bad_groups}")
        if not self.simulation_only:
            blocked = [b for b in self.weight_bits if b not in DEPLOYABLE_BITS] + [s for s in self.quant_scheme if s != "linear"]
            if blocked:
                raise ValueError(
                    f"{blocked} cannot run on ONNX Runtime's CPU kernels; deployable weight_bits: "
                    f"{list(DEPLOYABLE_BITS)} with quant_scheme [linear], or set space.simulation_only: true"
                )
        if any(steps < 0 for steps in self.recovery_steps):
            raise ValueError(f"recovery_steps must be >= 0, got {self.recovery_steps}")
        for name in ("heads", "ffn_widths", "num_blocks"):
            negative = [v for v in getattr(self, name) or [] if v < (1 if name == "num_blocks" else 0)]
            if negative:
                raise ValueError(f"{name} must hold non-negative counts (num_blocks >= 1), got {negative}")
        return self

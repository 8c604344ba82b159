"""A decoder's compression policy: weight widths per block and projection family, one group size and one method.

The versioned JSON a causal-lm search stores on each trial and writes as
``best_policy.json``: what another run (or another tool) needs to quantize the
same model the same way. ``plan`` is the ``techniques.decoder_bits.Plan`` it
stands for; width 32 keeps a layer float.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from autocompress.models.decoders import quantizable_linears

FORMAT = "autocompress.decoder-policy"
VERSION = 1
FLOAT = 32


@dataclass(frozen=True)
class DecoderPolicy:
    method: str
    group_size: int
    head_bits: int
    attention_bits: tuple[int, ...]
    mlp_bits: tuple[int, ...]
    """One width per decoder block, in order."""

    def plan(self, block: int | None, kind: str) -> tuple[int, int] | None:
        """``(bits, group_size)`` of block ``block``'s ``kind`` (``attn``, ``mlp``) or of ``lm_head``; None: float."""
        bits = self.head_bits if kind == "lm_head" else (self.attention_bits if kind == "attn" else self.mlp_bits)[block]
        return None if bits == FLOAT else (bits, self.group_size)

    def average_bits(self, model: PreTrainedModel) -> float:
        """Code bits per weight over every Linear the policy addresses and ``lm_head`` (float counted as 32; scales and zero
        points not counted, as AutoRound's ``avg_bits`` and ModelOpt's effective bits do not)."""
        total = weighted = 0
        for block, kind, linear in quantizable_linears(model).values():
            settings = self.plan(block, kind)
            total += linear.weight.numel()
            weighted += linear.weight.numel() * (settings[0] if settings else FLOAT)
        return weighted / total

    def params(self) -> dict[str, Any]:
        """Flat parameters for MLflow."""
        blocks = {f"block{i}.{kind}_bits": bits for kind, widths in (("attention", self.attention_bits), ("mlp", self.mlp_bits))
                  for i, bits in enumerate(widths)}
        return {"method": self.method, "group_size": self.group_size, "head_bits": self.head_bits, **blocks}

    def to_dict(self) -> dict[str, Any]:
        fields = asdict(self)
        return {"format": FORMAT, "version": VERSION, "task": "causal-lm", **fields,
                "attention_bits": list(self.attention_bits), "mlp_bits": list(self.mlp_bits)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecoderPolicy:
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise ValueError(f"not an {FORMAT} version {VERSION} policy: format {data.get('format')!r}, version {data.get('version')!r}")
        fields = {key: data[key] for key in ("method", "group_size", "head_bits")}
        return cls(**fields, attention_bits=tuple(data["attention_bits"]), mlp_bits=tuple(data["mlp_bits"]))

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

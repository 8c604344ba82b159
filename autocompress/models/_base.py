"""The adapter interface: one per encoder family, found from ``config.model_type``."""

from __future__ import annotations

from dataclasses import dataclass

from autocompress.models.shrunk import BlockLayout


@dataclass(frozen=True)
class Adapter:
    """What structured compression needs to know about one encoder family.

    Like Optimum's normalized configs: a family is named by the
    ``config.model_type`` values it covers and described by a ``BlockLayout``
    (where its blocks, head projections and FFN live). Everything else a
    search does — quantization, magnitude pruning, ONNX export, lowering,
    verification, timing — needs no adapter.
    """

    family: str
    """Name shown to users (README, errors)."""
    model_types: tuple[str, ...]
    """``config.model_type`` values this adapter covers."""
    layout: BlockLayout
    notes: str = ""
    """What is not searchable in this family, and why (empty: everything)."""

    @property
    def zero_heads(self) -> bool:
        """Whether a block may keep 0 heads."""
        return self.layout.headless is not None

    @property
    def prunes_heads(self) -> bool:
        return self.layout.fixed_heads is None

    @property
    def drops_blocks(self) -> bool:
        return not self.layout.shared_blocks

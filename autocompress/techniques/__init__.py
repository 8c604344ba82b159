"""Compression techniques: each one a small ``Technique`` applied in place under a policy.

One module per technique: ``_structured`` (heads, FFN neurons, blocks),
``_magnitude`` (unstructured pruning), ``_distillation`` (recovery training),
``_quantization`` (weight bits). The integer grid they share with the runtime
is ``autocompress.quantizer``; the shrunk-model code is ``autocompress.shrunk``.
"""

from autocompress.techniques._base import Technique
from autocompress.techniques._distillation import Distillation, Recovery, RecoveryStopped
from autocompress.techniques._magnitude import MagnitudePruning, prune_smallest_
from autocompress.techniques._quantization import Quantization
from autocompress.techniques._structured import StructuredPruning

DEFAULT_TECHNIQUES: tuple[Technique, ...] = (StructuredPruning(), MagnitudePruning(), Quantization())
"""Order matters: shrink first (new matrices), then zero weights, then quantize what remains."""

__all__ = [
    "DEFAULT_TECHNIQUES",
    "Distillation",
    "MagnitudePruning",
    "Quantization",
    "Recovery",
    "RecoveryStopped",
    "StructuredPruning",
    "Technique",
    "prune_smallest_",
]

"""Compression techniques: each one a small ``Technique`` applied in place under a policy.

``Recovery`` (distillation from the teacher) lives in ``techniques._recovery``
and is imported from there: it depends on ``autocompress.distill``, which
itself builds on the quantizer here.
"""

from autocompress.techniques._base import Technique
from autocompress.techniques._prune import MagnitudePruning, prune_smallest_
from autocompress.techniques._quantization import Quantization
from autocompress.techniques._quantize import QUANT_ATTR, QuantizedWeight, kmeans_codebook, quantize_weight
from autocompress.techniques._shrink import StructuredPruning
from autocompress.techniques._structured import count_parameters, load_shrunk, save_shrunk, shrink_

DEFAULT_TECHNIQUES: tuple[Technique, ...] = (StructuredPruning(), MagnitudePruning(), Quantization())
"""Order matters: shrink first (new matrices), then zero weights, then quantize what remains."""

__all__ = [
    "DEFAULT_TECHNIQUES",
    "QUANT_ATTR",
    "MagnitudePruning",
    "Quantization",
    "StructuredPruning",
    "QuantizedWeight",
    "Technique",
    "count_parameters",
    "load_shrunk",
    "save_shrunk",
    "shrink_",
    "kmeans_codebook",
    "prune_smallest_",
    "quantize_weight",
]

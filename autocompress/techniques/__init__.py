"""Compression techniques: each one a small ``Technique`` applied in place under a policy."""

from autocompress.techniques._base import Technique
from autocompress.techniques._prune import MagnitudePruning, prune_smallest_
from autocompress.techniques._quantization import Quantization
from autocompress.techniques._quantize import QUANT_ATTR, QuantizedWeight, kmeans_codebook, quantize_weight

DEFAULT_TECHNIQUES: tuple[Technique, ...] = (MagnitudePruning(), Quantization())
"""Order matters: remove weights first, then quantize what remains (zeros stay zero)."""

__all__ = [
    "DEFAULT_TECHNIQUES",
    "QUANT_ATTR",
    "MagnitudePruning",
    "Quantization",
    "QuantizedWeight",
    "Technique",
    "kmeans_codebook",
    "prune_smallest_",
    "quantize_weight",
]

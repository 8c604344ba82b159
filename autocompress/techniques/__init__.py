"""Compression techniques: each one a small ``Technique`` applied in place under a policy."""

from autocompress.techniques._base import Technique
from autocompress.techniques._prune import MagnitudePruning, prune_smallest_
from autocompress.techniques._quantization import Quantization
from autocompress.techniques._quantize import QUANT_ATTR, QuantizedWeight, kmeans_codebook, quantize_weight
from autocompress.techniques._recovery import Distillation, Recovery, RecoveryStopped
from autocompress.techniques._shrink import StructuredPruning
from autocompress.techniques._structured import count_parameters, load_shrunk, save_shrunk, shrink_

DEFAULT_TECHNIQUES: tuple[Technique, ...] = (StructuredPruning(), MagnitudePruning(), Quantization())
"""Order matters: shrink first (new matrices), then zero weights, then quantize what remains."""

__all__ = [
    "DEFAULT_TECHNIQUES",
    "Distillation",
    "QUANT_ATTR",
    "MagnitudePruning",
    "Quantization",
    "Recovery",
    "RecoveryStopped",
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

"""Compression techniques: each one a small ``Technique`` applied in place under a policy.

One module per technique: ``_structured`` (heads, FFN neurons, blocks),
``_vocabulary`` (word-embedding rows the task does not use), ``_magnitude``
(unstructured pruning), ``_distillation`` (recovery training),
``_quantization`` (weight bits). The integer grid they share with the runtime
is ``autocompress.quantizer``; the shrunk-model code is ``autocompress.shrunk``.
"""

from autocompress.techniques._base import Technique
from autocompress.techniques._distillation import Distillation, Recovery, RecoveryStopped
from autocompress.techniques._magnitude import MagnitudePruning, prune_smallest_
from autocompress.techniques._quantization import Quantization
from autocompress.techniques._structured import StructuredPruning
from autocompress.techniques._vocabulary import VocabularyPruning


def float_techniques(*, vocabulary: Technique | None = None, recovery: Technique | None = None) -> tuple[Technique, ...]:
    """The search's techniques that run before quantization, in order: shrink blocks and vocabulary, zero weights, recover."""
    return (StructuredPruning(), *([vocabulary] if vocabulary else []), MagnitudePruning(), *([recovery] if recovery else []))


DEFAULT_TECHNIQUES: tuple[Technique, ...] = (*float_techniques(), Quantization())
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
    "VocabularyPruning",
    "float_techniques",
    "prune_smallest_",
]

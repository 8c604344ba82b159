"""Compression techniques: each one a small ``Technique`` applied in place under a policy.

One module per technique: ``_structured`` (heads, FFN neurons, blocks),
``_vocabulary`` (word-embedding rows the task does not use), ``_magnitude``
(unstructured pruning), ``_distillation`` (recovery training),
``_quantization`` (weight bits, on the integer grid of ``quantizer``, which the
runtime's lowering shares), ``_output`` (how an index stores an embedding
model's outputs). ``compress`` applies them in order on a copy.

Each ``Technique`` subclass owns its section of a policy (fields and their
JSON Schema), samples its decisions and refuses a space a model cannot take;
``TECHNIQUES`` registers them, and the policy format, its schema, the sampler
and the space check ask every registered technique, so nothing else names one.

Names load on first use: the runtime imports ``quantizer`` without pulling
in distillation and the rest. ``weight_only`` holds the decoder quantizers
(asymmetric groups, round-to-nearest and GPTQ) that ``runtime.genai`` lowers,
and ``decoder_bits`` applies them to a decoder under a per-block plan.
"""

from autocompress._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "Technique": "_base",
    **dict.fromkeys(["DEFAULT_TECHNIQUES", "TECHNIQUES", "compress", "float_techniques", "layer_plan"], "_compress"),
    **dict.fromkeys(["Distillation", "Recovery", "RecoveryStopped"], "_distillation"),
    **dict.fromkeys(["MagnitudePruning", "prune_smallest_"], "_magnitude"),
    "Quantization": "_quantization",
    "OutputQuantization": "_output",
    **dict.fromkeys(["StructuredPruning", "evenly_spaced", "head_importance", "neuron_importance", "shrink_"], "_structured"),
    **dict.fromkeys(["VocabularyPruning", "prune_vocabulary_"], "_vocabulary"),
})

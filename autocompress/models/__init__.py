"""Models: loading them, the families' block layouts, and shrunk models that save and rebuild.

``loading`` resolves a model name (``"default"``, a folder, a Hugging Face id)
and its tokenizer; ``families`` finds each encoder family's ``Adapter`` (one
module per family: ``_bert``, ``_distilbert``, ``_albert``, ``_mpnet``,
``_deberta_v2``); ``shrunk`` holds the classes a model with cut heads, FFN
widths or vocabulary needs to be saved and loaded again. ``decoders`` names
each decoder family's blocks and projections (Llama, Mistral, Qwen2/3,
Phi-3), ``gguf`` converts a GGUF file (or ``model: smollm2``) once into a
cached Hugging Face folder.
"""

from autocompress._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    **dict.fromkeys(["DEFAULT_MODEL", "block_linears", "copy_tokenizer", "encoder_list_name", "load_classifier", "load_tokenizer",
                     "resolve_model_path", "tokenizer_files"], "loading"),
    **dict.fromkeys(["ADAPTERS", "Adapter", "adapter_for", "layout_for", "model_inputs", "supported_types"], "families"),
    **dict.fromkeys(["BlockLayout", "RemappedEmbedding", "count_parameters", "is_shrunk", "load_shrunk", "save_shrunk"], "shrunk"),
})

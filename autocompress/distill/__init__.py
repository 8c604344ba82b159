"""Knowledge distillation: recovery training of compressed students against their teacher.

Loaded lazily: the task heads import the losses without loading the training loop.
"""

from autocompress._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    **dict.fromkeys(["cached_teacher_logits", "logits_cache_path"], "_cache"),
    **dict.fromkeys(["attention_loss", "embedding_loss", "hidden_state_loss", "kd_loss", "kept_layer_map", "uniform_layer_map"], "_losses"),
    **dict.fromkeys(["FakeQuantize", "RecoveryResult", "recover"], "_train"),
})

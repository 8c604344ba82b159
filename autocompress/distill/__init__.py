"""Knowledge distillation: recovery training of compressed students against their teacher."""

from autocompress.distill._cache import cached_teacher_logits, logits_cache_path
from autocompress.distill._losses import (
    attention_loss,
    hidden_state_loss,
    kd_loss,
    kept_layer_map,
    uniform_layer_map,
)
from autocompress.distill._train import FakeQuantize, RecoveryResult, recover

__all__ = [
    "FakeQuantize",
    "RecoveryResult",
    "attention_loss",
    "cached_teacher_logits",
    "hidden_state_loss",
    "kd_loss",
    "kept_layer_map",
    "logits_cache_path",
    "recover",
    "uniform_layer_map",
]

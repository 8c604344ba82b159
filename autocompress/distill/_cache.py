"""Teacher outputs (logits, sentence embeddings: what the task's head reads) on the training rows, computed once and cached on disk.

Every trial of a search distils from the same teacher on the same rows, so the
teacher's forward passes are paid once. The cache is one file per teacher
(its key hashed) holding logits by row: a row is named by the hash of its
model inputs where the attention mask is on (token ids, token types), which
encode the text, the tokenizer and ``max_length``, so any change there misses
the cache instead of returning stale logits, while another order, subset or
batch size of the same rows (another ``search.seed``, the final stage's whole
split after a search's subset) reuses what was computed. Hidden states and
attentions are not cached (they are large); recovery computes them on the fly
when those losses are on.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from autocompress.paths import teacher_logits_dir
from autocompress.tasks.heads import Head, Logits


def logits_cache_path(teacher_key: str, *, cache_dir: str | Path | None = None) -> Path:
    """Where the teacher's logits by row live: ``<cache>/teacher_logits/<hash of the key>.safetensors``."""
    folder = Path(cache_dir) if cache_dir is not None else teacher_logits_dir()
    return folder / f"{hashlib.sha256(teacher_key.encode()).hexdigest()[:24]}.safetensors"


def row_keys(batch: Mapping[str, torch.Tensor]) -> list[bytes]:
    """One digest per row of ``batch``: its model inputs at the positions its attention mask keeps (padding does not count)."""
    inputs = {name: batch[name].detach().cpu().numpy() for name in sorted(Head.inputs(batch))}
    rows = len(next(iter(inputs.values())))
    kept = inputs["attention_mask"].astype(bool) if "attention_mask" in inputs else None
    keys = []
    for row in range(rows):
        digest = hashlib.sha256()
        for name, values in inputs.items():
            values = values[row] if kept is None else values[row][kept[row]]
            digest.update(f"{name}:{values.dtype}:".encode() + values.tobytes())
        keys.append(digest.digest())
    return keys


def cached_teacher_logits(
    teacher: PreTrainedModel,
    batches: Sequence[Mapping[str, torch.Tensor]],
    *,
    teacher_key: str,
    cache_dir: str | Path | None = None,
    head: Head | None = None,
) -> list[torch.Tensor]:
    """The teacher's outputs (``head``'s; default: logits) for each batch: rows already cached are read, the batches holding any
    other row run the teacher (eval mode)."""
    if not batches:
        raise ValueError("batches is empty; give at least one tokenized batch")
    path = logits_cache_path(teacher_key, cache_dir=cache_dir)
    stored = _load(path)
    keys = [row_keys(b) for b in batches]
    missing = [i for i, batch_keys in enumerate(keys) if any(k not in stored for k in batch_keys)]
    if missing:
        computed = _teacher_forward(teacher, [batches[i] for i in missing], head or Logits("accuracy"))
        for i, logits in zip(missing, computed):
            stored.update(zip(keys[i], logits))
        _save(path, stored, teacher_key)
    return [torch.stack([stored[k] for k in batch_keys]) for batch_keys in keys]


def _load(path: Path) -> dict[bytes, torch.Tensor]:
    if not path.is_file():
        return {}
    content = load_file(path)
    if "keys" not in content:  # a file of the older per-batch layout
        return {}
    return {bytes(key.tolist()): logits for key, logits in zip(content["keys"], content["logits"])}


def _save(path: Path, stored: dict[bytes, torch.Tensor], teacher_key: str) -> None:
    """Write every known row atomically: concurrent trials never read a half-written file (one may drop the other's new rows: recomputed later)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = torch.tensor([list(k) for k in stored], dtype=torch.uint8)
    partial = path.with_name(f"{path.stem}.{os.getpid()}.partial")
    save_file({"keys": keys, "logits": torch.stack(list(stored.values())).contiguous()}, partial, metadata={"teacher_key": teacher_key})
    partial.replace(path)


@torch.no_grad()  # not inference_mode: the logits later enter autograd as KD targets
def _teacher_forward(teacher: PreTrainedModel, batches: Sequence[Mapping[str, torch.Tensor]], head: Head) -> list[torch.Tensor]:
    was_training = teacher.training
    teacher.eval()
    try:
        progress = tqdm(batches, desc=f"teacher {head.output_name} (cached once)", unit="batch", leave=False, file=sys.stderr)
        return [head(teacher, batch).float() for batch in progress]
    finally:
        teacher.train(was_training)

"""Teacher logits on the training batches, computed once and cached on disk.

Every trial of a search distils from the same teacher on the same batches, so
the teacher's forward passes are paid once. The file name hashes the teacher's
key with every batch's model inputs (token ids, masks): those encode the texts,
the tokenizer, ``max_length`` and the batching, so any change there misses the
cache instead of returning stale logits. Hidden states and attentions are not
cached (they are large); recovery computes them on the fly when those losses
are on.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from autocompress.paths import teacher_logits_dir


def logits_cache_path(
    teacher_key: str, batches: Sequence[Mapping[str, torch.Tensor]], *, cache_dir: str | Path | None = None
) -> Path:
    """Where the teacher's logits for these batches live: ``<cache>/teacher_logits/<hash>.safetensors``."""
    digest = hashlib.sha256(teacher_key.encode())
    for batch in batches:
        for name in sorted(k for k in batch if k != "labels"):
            tensor = batch[name].detach().cpu().contiguous()
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.numpy().tobytes())
    folder = Path(cache_dir) if cache_dir is not None else teacher_logits_dir()
    return folder / f"{digest.hexdigest()[:24]}.safetensors"


def cached_teacher_logits(
    teacher: PreTrainedModel,
    batches: Sequence[Mapping[str, torch.Tensor]],
    *,
    teacher_key: str,
    cache_dir: str | Path | None = None,
) -> list[torch.Tensor]:
    """The teacher's logits for each batch, read from the cache or computed once (eval mode) and stored."""
    if not batches:
        raise ValueError("batches is empty; give at least one tokenized batch")
    sizes = [len(next(iter(b.values()))) for b in batches]
    path = logits_cache_path(teacher_key, batches, cache_dir=cache_dir)
    if path.is_file():
        logits = load_file(path)["logits"]
        if logits.shape[0] == sum(sizes):
            return list(logits.split(sizes))
    logits = _teacher_forward(teacher, batches)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.{os.getpid()}.partial")
    save_file({"logits": logits.contiguous()}, partial, metadata={"teacher_key": teacher_key, "sizes": json.dumps(sizes)})
    partial.replace(path)  # atomic: concurrent trials never read a half-written file
    return list(logits.split(sizes))


@torch.no_grad()  # not inference_mode: the logits later enter autograd as KD targets
def _teacher_forward(teacher: PreTrainedModel, batches: Sequence[Mapping[str, torch.Tensor]]) -> torch.Tensor:
    was_training = teacher.training
    teacher.eval()
    try:
        progress = tqdm(batches, desc="teacher logits (cached once)", unit="batch", leave=False, file=sys.stderr)
        return torch.cat([teacher(**{k: v for k, v in b.items() if k != "labels"}).logits.float() for b in progress])
    finally:
        teacher.train(was_training)

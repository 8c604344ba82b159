"""The teacher: the uncompressed model fine-tuned on the task, trained once and cached.

The cache key hashes the model files, the training data and the recipe, so a
second search with the same inputs reuses the folder instead of retraining.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel, get_linear_schedule_with_warmup

from autocompress.config import SearchConfig
from autocompress.cores import cores, exclusive_lock, rebalance
from autocompress.models.loading import load_classifier, load_tokenizer, resolve_model_path
from autocompress.paths import locks_dir, teachers_dir
from autocompress.tasks.data import Examples, TaskLabels, batches, load_split, task_labels


@dataclass(frozen=True)
class Teacher:
    """A fine-tuned model folder and how it came to be."""

    path: Path
    key: str
    trained_now: bool
    losses: tuple[float, ...] = ()

    def load(self) -> PreTrainedModel:
        """The fine-tuned model with its own head (as many labels as it was trained on)."""
        return load_classifier(str(self.path), num_labels=None)

    def load_config(self) -> PretrainedConfig:
        """The fine-tuned model's config (its labels), without loading the weights."""
        return AutoConfig.from_pretrained(self.path)


def model_digest(model: str, kind: str) -> "hashlib._Hash":
    """A running SHA-256 of a model the task uses as it is: ``kind``, then its folder's files (or its hub id)."""
    digest = hashlib.sha256(f"{kind}:".encode())
    path = Path(resolve_model_path(model))
    if path.is_dir():
        hash_files(path, digest)
    else:
        digest.update(model.encode())
    return digest


def hash_files(folder: Path, digest: "hashlib._Hash") -> None:
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(folder)).encode())
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)


def teacher_key(config: SearchConfig, train: Examples, labels: TaskLabels | None = None) -> str:
    """Hash of model files (or hub id), training data (pairs too), recipe and label names (when words: the head's id2label)."""
    labels = labels or task_labels(config)
    digest = hashlib.sha256()
    model_path = Path(resolve_model_path(config.model))
    if model_path.is_dir():
        hash_files(model_path, digest)
    else:
        digest.update(config.model.encode())
    digest.update(json.dumps([train.texts, train.labels, *([train.pairs] if train.pairs is not None else [])]).encode())
    recipe = {"teacher": config.teacher.model_dump(), "max_length": config.task.max_length, "num_labels": labels.num_labels}
    if labels.words:  # integer labels add nothing, so teachers cached before label names existed stay valid
        recipe["labels"] = list(labels.names)
    digest.update(json.dumps(recipe, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def fine_tune(model: PreTrainedModel, train: Examples, tokenizer, config: SearchConfig) -> list[float]:
    """AdamW with linear warm-up and decay, on shuffled batches; returns the loss per step."""
    recipe = config.teacher
    if len(train) < recipe.batch_size:  # else the batch loop below never yields a step
        raise ValueError(f"{len(train)} training rows cannot fill one batch of teacher.batch_size={recipe.batch_size}")
    torch.manual_seed(recipe.seed)
    order = list(range(len(train)))
    random.Random(recipe.seed).shuffle(order)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    schedule = get_linear_schedule_with_warmup(optimizer, int(recipe.warmup_ratio * recipe.steps), recipe.steps)
    model.train()
    losses = []
    with cores(torch.get_num_threads()), tqdm(total=recipe.steps, desc="teacher fine-tuning", unit="step", file=sys.stderr) as bar:
        while len(losses) < recipe.steps:
            for start in range(0, len(order) - recipe.batch_size + 1, recipe.batch_size):
                picked = [order[i] for i in range(start, start + recipe.batch_size)]
                chunk = train.subset(picked)
                (batch,) = batches(chunk, tokenizer, batch_size=recipe.batch_size, max_length=config.task.max_length)
                loss = model(**batch).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad()
                losses.append(loss.item())
                rebalance()
                bar.update(1)
                bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
                if len(losses) == recipe.steps:
                    break
    return losses


@dataclass(frozen=True)
class TeacherLocation:
    """Where a config's teacher is (or will be) and whether it is ready, found without training."""

    key: str
    path: Path
    ready: bool
    train: Examples | None = None
    as_is: bool = False
    """The model itself is the teacher (an embedding task): nothing is fine-tuned."""


def locate_teacher(config: SearchConfig) -> TeacherLocation:
    """The teacher's cache key and folder; ``ready`` when it needs no fine-tuning."""
    if config.teacher.checkpoint:
        path = Path(resolve_model_path(config.teacher.checkpoint))
        return TeacherLocation(f"checkpoint:{config.teacher.checkpoint}", path, ready=True)
    train = load_split(config, "train")
    key = teacher_key(config, train)
    folder = teachers_dir() / key
    return TeacherLocation(key, folder, ready=(folder / "teacher.json").is_file(), train=train)


def get_teacher(config: SearchConfig) -> Teacher:
    """Return the cached teacher for this config, fine-tuning it first if needed.

    Searches started together on one cache train it once: the first holds the teacher's lock while it trains, the
    others wait and then find it ready (measured before the lock: three searches each trained it into one staging
    folder and each replaced the folder the others were loading).
    """
    where = locate_teacher(config)
    if where.ready:
        return Teacher(path=where.path, key=where.key, trained_now=False)
    with exclusive_lock(locks_dir() / f"teacher-{where.key}.lock"):
        where = locate_teacher(config)
        if where.ready:
            return Teacher(path=where.path, key=where.key, trained_now=False)
        return _fine_tune_and_cache(config, where)


def _fine_tune_and_cache(config: SearchConfig, where: TeacherLocation) -> Teacher:
    key, folder, train = where.key, where.path, where.train
    tokenizer = load_tokenizer(config.model)
    labels = task_labels(config)
    model = load_classifier(config.model, num_labels=labels.num_labels)
    if labels.words:  # every model derived from the teacher, and every export, carries the names
        model.config.id2label, model.config.label2id = labels.id2label, labels.label2id
    losses = fine_tune(model, train, tokenizer, config)
    staging = folder.with_name(f"{key}.partial")
    shutil.rmtree(staging, ignore_errors=True)  # left by a process killed while saving
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / "teacher.json").write_text(json.dumps({"key": key, "model": config.model, "recipe": config.teacher.model_dump(), "labels": labels.names}))
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)
    return Teacher(path=folder, key=key, trained_now=True, losses=tuple(losses))

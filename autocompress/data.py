"""Text-classification data from TSV/CSV/JSONL files or a Hugging Face dataset."""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from autocompress.config import ConfigError, SearchConfig

FILE_FORMATS = {".tsv": "\t", ".csv": ","}


@dataclass(frozen=True)
class Examples:
    """Sentences and integer labels of one split."""

    texts: tuple[str, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.texts)

    def head(self, n: int | None) -> "Examples":
        return self if n is None else Examples(self.texts[:n], self.labels[:n])

    def subset(self, indices: list[int]) -> "Examples":
        return Examples(tuple(self.texts[i] for i in indices), tuple(self.labels[i] for i in indices))

    def sample(self, n: int, *, seed: int = 0) -> "Examples":
        """``n`` examples drawn without replacement, seeded: files are often sorted by label."""
        return self.subset(random.Random(seed).sample(range(len(self)), min(n, len(self))))


def read_file(path: Path, text_column: str, label_column: str) -> Examples:
    """Read a TSV, CSV or JSONL file; every error names the file and the column."""
    if not path.is_file():
        raise ConfigError(f"{path}: data file not found (set $AUTOCOMPRESS_DATA_ROOT or task.data_root)")
    suffix = path.suffix.lower()
    if suffix not in (*FILE_FORMATS, ".jsonl", ".json"):
        raise ConfigError(f"{path}: unsupported data format {suffix!r}; allowed: .tsv, .csv, .jsonl")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: bytes that are not UTF-8 ({raw[error.start : error.start + 4]!r}); save the file as UTF-8") from None
    if suffix in FILE_FORMATS:
        quoting = csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL
        rows = list(csv.DictReader(io.StringIO(text, newline=""), delimiter=FILE_FORMATS[suffix], quoting=quoting))
    else:
        try:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}: not one JSON object per line ({error})") from None
    if rows and (text_column not in rows[0] or label_column not in rows[0]):
        raise ConfigError(
            f"{path}: columns task.text_column={text_column!r} / task.label_column={label_column!r} "
            f"not found; the file has {sorted(rows[0])}"
        )
    try:
        return Examples(tuple(str(r[text_column]) for r in rows), tuple(int(r[label_column]) for r in rows))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: column {label_column!r} must hold integer labels ({exc})") from None


SPLITS = ("train", "dev", "test")


def stratified_holdout(examples: Examples, size: int, *, seed: int) -> tuple[Examples, Examples]:
    """``(rest, held_out)``: ``size`` examples drawn per label in proportion, seeded.

    ``rest`` keeps the file's order; ``held_out`` is shuffled, so any head of it
    is a random sample too (training files are often sorted by label).
    """
    if not 0 < size < len(examples):
        raise ValueError(f"cannot hold out {size} of {len(examples)} examples")
    by_label: dict[int, list[int]] = {}
    for index, label in enumerate(examples.labels):
        by_label.setdefault(label, []).append(index)
    rng = random.Random(seed)
    shares = {label: size * len(indices) / len(examples) for label, indices in sorted(by_label.items())}
    counts = {label: int(share) for label, share in shares.items()}
    for label in sorted(shares, key=lambda lab: shares[lab] - counts[lab], reverse=True)[: size - sum(counts.values())]:
        counts[label] += 1  # largest remainders get the rows rounding left over
    held = [i for label, indices in sorted(by_label.items()) for i in rng.sample(indices, counts[label])]
    rng.shuffle(held)
    held_set = set(held)
    rest = [i for i in range(len(examples)) if i not in held_set]
    return examples.subset(rest), examples.subset(held)


def _read(config: SearchConfig, split: str) -> Examples:
    """The split as its own file or Hugging Face split gives it."""
    task = config.task
    if task.hf_dataset:
        name = {"train": task.hf_train_split, "dev": task.hf_dev_split, "test": task.hf_test_split}[split]
        import datasets

        data = datasets.load_dataset(task.hf_dataset, task.hf_config, split=name)
        return Examples(tuple(map(str, data[task.text_column])), tuple(map(int, data[task.label_column])))
    relative = getattr(task, split)
    if relative is None:
        raise ConfigError(f"{config.source}: field 'task.{split}' is required when task.hf_dataset is not set")
    return read_file(config.data_path(relative), task.text_column, task.label_column)


def load_split(config: SearchConfig, split: str) -> Examples:
    """Load ``"train"``, ``"dev"`` or ``"test"`` as the config's task describes (see ``TaskConfig``)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    task = config.task
    if split == "test" or _has_own_dev(config):
        examples = _read(config, split)
    else:
        train = _read(config, "train")
        if len(train) <= task.dev_size:
            raise ConfigError(f"{config.source}: field 'task.dev_size' ({task.dev_size}) must be below the {len(train)} training rows")
        rest, dev = stratified_holdout(train, task.dev_size, seed=task.split_seed)
        examples = dev if split == "dev" else rest
    bad = sorted({label for label in examples.labels if not 0 <= label < task.num_labels})
    if bad:
        raise ConfigError(f"{config.source}: labels {bad[:5]} outside 0..{task.num_labels - 1} (task.num_labels)")
    if not examples.texts:
        raise ConfigError(f"{config.source}: the {split} split has no rows (task.{split})")
    if split == "train" and len(set(examples.labels)) < 2:
        raise ConfigError(f"{config.source}: the train split holds only label {examples.labels[0]}; a classifier needs at least 2 classes")
    if split == "train":
        return examples if task.train_subset is None else examples.sample(task.train_subset)
    return examples.head(task.dev_subset if split == "dev" else task.test_subset)


def _has_own_dev(config: SearchConfig) -> bool:
    """Whether the dev split has its own file or Hugging Face split (else it is carved from train)."""
    task = config.task
    return (task.hf_dev_split is not None) if task.hf_dataset else (task.dev is not None)


def batches(
    examples: Examples, tokenizer, *, batch_size: int, max_length: int
) -> list[dict[str, torch.Tensor]]:
    """Tokenize into padded batches with ``labels``, in the examples' order."""
    return list(_iter_batches(examples, tokenizer, batch_size, max_length))


def _iter_batches(examples: Examples, tokenizer, batch_size: int, max_length: int) -> Iterator[dict[str, torch.Tensor]]:
    for start in range(0, len(examples), batch_size):
        encoded = tokenizer(
            list(examples.texts[start : start + batch_size]),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        encoded["labels"] = torch.tensor(examples.labels[start : start + batch_size])
        yield dict(encoded)

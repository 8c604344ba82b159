"""Text-classification data from TSV/CSV/JSONL files or a Hugging Face dataset."""

from __future__ import annotations

import csv
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

    def sample(self, n: int, *, seed: int = 0) -> "Examples":
        """``n`` examples drawn without replacement, seeded: files are often sorted by label."""
        picked = random.Random(seed).sample(range(len(self)), min(n, len(self)))
        return Examples(tuple(self.texts[i] for i in picked), tuple(self.labels[i] for i in picked))


def read_file(path: Path, text_column: str, label_column: str) -> Examples:
    """Read a TSV, CSV or JSONL file; every error names the file and the column."""
    if not path.is_file():
        raise ConfigError(f"{path}: data file not found (set $AUTOCOMPRESS_DATA_ROOT or task.data_root)")
    suffix = path.suffix.lower()
    with path.open(newline="", encoding="utf-8") as handle:
        if suffix in FILE_FORMATS:
            rows = list(csv.DictReader(handle, delimiter=FILE_FORMATS[suffix], quoting=csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL))
        elif suffix in (".jsonl", ".json"):
            rows = [json.loads(line) for line in handle if line.strip()]
        else:
            raise ConfigError(f"{path}: unsupported data format {suffix!r}; allowed: .tsv, .csv, .jsonl")
    if rows and (text_column not in rows[0] or label_column not in rows[0]):
        raise ConfigError(
            f"{path}: columns task.text_column={text_column!r} / task.label_column={label_column!r} "
            f"not found; the file has {sorted(rows[0])}"
        )
    try:
        return Examples(tuple(str(r[text_column]) for r in rows), tuple(int(r[label_column]) for r in rows))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: column {label_column!r} must hold integer labels ({exc})") from None


def load_split(config: SearchConfig, split: str) -> Examples:
    """Load ``"train"`` or ``"validation"`` as the config's task describes."""
    task = config.task
    if task.hf_dataset:
        import datasets

        name = task.hf_train_split if split == "train" else task.hf_validation_split
        data = datasets.load_dataset(task.hf_dataset, task.hf_config, split=name)
        examples = Examples(tuple(map(str, data[task.text_column])), tuple(map(int, data[task.label_column])))
    else:
        relative = task.train if split == "train" else task.validation
        if relative is None:
            raise ConfigError(f"{config.source}: field 'task.{split}' is required when task.hf_dataset is not set")
        examples = read_file(config.data_path(relative), task.text_column, task.label_column)
    bad = sorted({label for label in examples.labels if not 0 <= label < task.num_labels})
    if bad:
        raise ConfigError(f"{config.source}: labels {bad[:5]} outside 0..{task.num_labels - 1} (task.num_labels)")
    if split == "validation":
        return examples.head(task.validation_subset)
    return examples if task.train_subset is None else examples.sample(task.train_subset)


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

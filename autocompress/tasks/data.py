"""Text-classification data: one text or a sentence pair per row, and a label written as an integer or a word.

Files are TSV/CSV (with a header row, or headerless with ``task.columns``),
JSON lines, a JSON array of objects or Parquet; or a Hugging Face dataset.
The task's label names, in class-id order, are resolved once from
``task.labels`` or the train split (``task_labels``), so every split, the
teacher's head and every export agree on what class ``i`` means.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from autocompress.config import ConfigError, SearchConfig
from autocompress.tasks.files import RawSplit, label_value, read_raw

TextInput = str | tuple[str, str]
"""What the tokenizer reads for one row: a text, or a (text, pair) of a sentence-pair task."""


@dataclass(frozen=True)
class Examples:
    """Texts (and, for a sentence-pair task, their second texts) with integer class ids, of one split."""

    texts: tuple[str, ...]
    labels: tuple[int, ...] | None
    """Class ids aligned with ``texts``; None for unlabelled texts (an embedding task)."""
    pairs: tuple[str, ...] | None = None
    """Second texts aligned with ``texts`` (``task.text_pair_column``); None for one text per row."""

    def __len__(self) -> int:
        return len(self.texts)

    def head(self, n: int | None) -> "Examples":
        return self if n is None else self.subset(range(min(n, len(self))))

    def subset(self, indices: Sequence[int]) -> "Examples":
        """These rows at ``indices``; a subclass keeps its other fields (an embedding split's evaluation sets)."""
        pairs = None if self.pairs is None else tuple(self.pairs[i] for i in indices)
        labels = None if self.labels is None else tuple(self.labels[i] for i in indices)
        return replace(self, texts=tuple(self.texts[i] for i in indices), labels=labels, pairs=pairs)

    def sample(self, n: int, *, seed: int = 0) -> "Examples":
        """``n`` examples drawn without replacement, seeded: files are often sorted by label."""
        return self.subset(random.Random(seed).sample(range(len(self)), min(n, len(self))))

    def inputs(self) -> list[TextInput]:
        """Per row, what the tokenizer reads: the text, or the (text, pair) of a sentence-pair task."""
        return list(self.texts) if self.pairs is None else list(zip(self.texts, self.pairs))

    def chars(self, index: int) -> int:
        """Characters of row ``index``, both texts of a pair: the length batches are sorted by."""
        return len(self.texts[index]) + (len(self.pairs[index]) if self.pairs is not None else 0)


@dataclass(frozen=True)
class TaskLabels:
    """The task's classes in id order: what output ``i`` of the classification head means.

    ``by_name``: the data writes labels as names (mapped through ``names``),
    else as integer class ids. ``words``: the names are words (from
    ``task.labels``, a ``ClassLabel`` or word labels), which the teacher and
    every export carry as ``id2label``; integer labels without names keep
    transformers' default ``LABEL_i``, so their teachers' cache keys did not change.
    """

    names: tuple[str, ...]
    by_name: bool
    words: bool
    origin: str
    """Where the names come from, for error messages (``task.labels``, ``the train split``, ...)."""

    @property
    def num_labels(self) -> int:
        return len(self.names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: index for index, name in enumerate(self.names)}

    def allowed(self) -> str:
        """The accepted label values, in words, for error messages."""
        if self.by_name:
            return ", ".join(self.names) + f" ({self.origin})"
        named = f" = {', '.join(self.names)}" if self.words else ""
        return f"integers 0..{self.num_labels - 1}{named} ({self.origin})"

    def encode(self, values: Sequence[int | str], *, source: str, column: str) -> tuple[int, ...]:
        """Class ids of ``values``; a value outside the task's labels is a one-line ``ConfigError`` naming it and the allowed ones."""
        lookup = self.label2id
        ids = []
        for value in values:
            index = lookup.get(str(value)) if self.by_name else value
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < self.num_labels:
                raise ConfigError(f"{source}: label {value!r} in column {column!r} is not one of the task's labels; allowed: {self.allowed()}")
            ids.append(index)
        return tuple(ids)


def resolve_labels(
    train: RawSplit, *, names: Sequence[str] | None = None, num_labels: int | None = None, column: str = "label", where: str | None = None
) -> TaskLabels:
    """The task's label names from the train split and the config's ``task.labels`` (``names``) and ``task.num_labels``.

    Integer labels are class ids as they are (``0..N-1``, N the largest + 1
    unless ``num_labels`` says more); word labels map to ids in the order of
    ``names``, else sorted by name. ``names`` that all appear as written
    labels win over reading them as integers (``["1", ..., "5"]`` for stars).
    """
    where = where or train.source
    values = train.values
    if not values:
        raise ConfigError(f"{where}: the train split has no rows (task.train)")
    distinct = sorted(set(values), key=lambda value: (isinstance(value, str), value if isinstance(value, int) else 0, str(value)))
    if len(distinct) < 2:
        raise ConfigError(f"{where}: the train split holds only label {values[0]}; a classifier needs at least 2 classes")
    given = tuple(names) if names else None
    integers = all(isinstance(value, int) for value in values)
    if given and all(str(value) in given for value in distinct):
        labels = TaskLabels(given, by_name=True, words=True, origin="task.labels")
    elif integers:
        if given or train.class_names:
            labels = TaskLabels(given or train.class_names, by_name=False, words=True,
                                origin="task.labels" if given else "the dataset's ClassLabel names")
        else:
            count = num_labels or max(values) + 1
            if num_labels is None and set(values) != set(range(count)):
                raise ConfigError(
                    f"{train.source}: integer labels in column {column!r} must run 0..N-1 without gaps, the train split has "
                    f"{_listing(distinct)}; set task.num_labels for a head with unused classes, or task.labels to map them by name "
                    f"(e.g. {[str(v) for v in distinct[:3]]}...)"
                )
            labels = TaskLabels(tuple(str(i) for i in range(count)), by_name=False, words=False,
                                origin="task.num_labels" if num_labels else "the train split")
    else:
        if given:
            unknown = next(value for value in distinct if str(value) not in given)
            raise ConfigError(f"{train.source}: label {unknown!r} in column {column!r} is not in task.labels; allowed: {', '.join(given)}")
        labels = TaskLabels(tuple(sorted({str(value) for value in values})), by_name=True, words=True, origin="the train split's labels")
    if num_labels is not None and num_labels != labels.num_labels:
        raise ConfigError(f"{where}: field 'task.num_labels' is {num_labels}, but {labels.origin} give {labels.num_labels} labels: "
                          f"{_listing(labels.names)}")
    labels.encode(values, source=train.source, column=column)
    return labels


def _listing(values: Sequence[Any], limit: int = 12) -> str:
    shown = ", ".join(str(value) for value in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def read_file(
    path: Path,
    text_column: str,
    label_column: str,
    *,
    text_pair_column: str | None = None,
    columns: Sequence[str] | None = None,
    labels: TaskLabels | None = None,
) -> Examples:
    """Read one data file; labels map through ``labels``, else through the file's own label set (``resolve_labels``)."""
    raw = read_raw(path, text_column, label_column, text_pair_column=text_pair_column, columns=columns)
    labels = labels or resolve_labels(raw, column=label_column)
    return Examples(raw.texts, labels.encode(raw.values, source=raw.source, column=label_column), raw.pairs)


SPLITS = ("train", "dev", "test")


def stratified_holdout(examples: Examples, size: int, *, seed: int) -> tuple[Examples, Examples]:
    """``(rest, held_out)``: ``size`` examples drawn per label in proportion (unlabelled: from all), seeded.

    ``rest`` keeps the file's order; ``held_out`` is shuffled, so any head of it
    is a random sample too (training files are often sorted by label).
    """
    if not 0 < size < len(examples):
        raise ValueError(f"cannot hold out {size} of {len(examples)} examples")
    by_label: dict[int, list[int]] = {}
    for index, label in enumerate(examples.labels or [0] * len(examples)):
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


def _read(config: SearchConfig, split: str) -> RawSplit:
    """The split as its own file or Hugging Face split gives it, labels as written."""
    task = config.task
    if task.hf_dataset:
        return _read_hf(config, {"train": task.hf_train_split, "dev": task.hf_dev_split, "test": task.hf_test_split}[split])
    return read_raw(split_file(config, split), task.text_column, task.label_column, text_pair_column=task.text_pair_column, columns=task.columns)


def split_file(config: SearchConfig, split: str) -> Path:
    """The file ``task.<split>`` names, under the data root; a one-line ``ConfigError`` when it names none."""
    relative = getattr(config.task, split)
    if relative is None:
        raise ConfigError(f"{config.source}: field 'task.{split}' is required when task.hf_dataset is not set")
    return config.data_path(relative)


def _read_hf(config: SearchConfig, split: str) -> RawSplit:
    """One split of ``task.hf_dataset``; a ``ClassLabel`` label feature gives the label names."""
    import datasets

    task = config.task
    data = datasets.load_dataset(task.hf_dataset, task.hf_config, split=split)
    source = f"{task.hf_dataset}{f' ({task.hf_config})' if task.hf_config else ''} split {split!r}"
    wanted = {"task.text_column": task.text_column, "task.label_column": task.label_column}
    if task.text_pair_column:
        wanted["task.text_pair_column"] = task.text_pair_column
    missing = {field: column for field, column in wanted.items() if column not in data.column_names}
    if missing:
        named = " / ".join(f"{field}={column!r}" for field, column in missing.items())
        raise ConfigError(f"{config.source}: {source}: column{'s' * (len(missing) > 1)} {named} not found; the dataset has {data.column_names}")
    feature = data.features[task.label_column]
    class_names = tuple(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    values = []
    for number, value in enumerate(data[task.label_column], 1):
        label = label_value(value)
        if label is None:
            raise ConfigError(f"{config.source}: {source}: row {number}: no label in column {task.label_column!r} (task.label_column)")
        values.append(label)
    pairs = tuple(map(str, data[task.text_pair_column])) if task.text_pair_column else None
    return RawSplit(f"{config.source}: {source}", tuple(map(str, data[task.text_column])), pairs, tuple(values), class_names)


def task_labels(config: SearchConfig) -> TaskLabels:
    """The config's label names in class-id order (``task.labels``, else read from the train split); one-line ``ConfigError`` if they clash."""
    return _labels(config, _read(config, "train"))


def _labels(config: SearchConfig, train: RawSplit) -> TaskLabels:
    task = config.task
    return resolve_labels(train, names=task.labels, num_labels=task.num_labels, column=task.label_column, where=config.source)


def load_split(config: SearchConfig, split: str) -> Examples:
    """Load ``"train"``, ``"dev"`` or ``"test"`` as the config's task describes (see ``TaskConfig``), labels as class ids."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    task = config.task
    train = _read(config, "train")
    labels = _labels(config, train)
    own = split == "test" or _has_own_dev(config)
    raw = _read(config, split) if own and split != "train" else train
    if not raw.texts:
        raise ConfigError(f"{config.source}: the {split} split has no rows (task.{split})")
    examples = Examples(raw.texts, labels.encode(raw.values, source=raw.source, column=task.label_column), raw.pairs)
    if not own:
        if len(examples) <= task.dev_size:
            raise ConfigError(f"{config.source}: field 'task.dev_size' ({task.dev_size}) must be below the {len(examples)} training rows")
        rest, dev = stratified_holdout(examples, task.dev_size, seed=task.split_seed)
        examples = dev if split == "dev" else rest
    if split == "train" and len(set(examples.labels)) < 2:
        raise ConfigError(f"{config.source}: the train split holds only label {labels.names[examples.labels[0]]}; a classifier needs at least 2 classes")
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
    """Tokenize into padded batches with ``labels`` (when labelled), in the examples' order; a sentence-pair task's two texts together."""
    return list(_iter_batches(examples, tokenizer, batch_size, max_length))


def token_counts(examples: Examples, tokenizer, *, max_length: int, batch_size: int = 1024) -> torch.Tensor:
    """How often each token id occurs in ``examples`` as the model reads them (pairs together, truncated to ``max_length``)."""
    counts = torch.zeros(len(tokenizer), dtype=torch.long)
    for start in range(0, len(examples), batch_size):
        pairs = [list(examples.pairs[start : start + batch_size])] if examples.pairs is not None else []
        encoded = tokenizer(list(examples.texts[start : start + batch_size]), *pairs, truncation=True, max_length=max_length)
        ids = torch.tensor([i for row in encoded["input_ids"] for i in row])
        counts += torch.bincount(ids, minlength=len(counts))
    return counts


def _iter_batches(examples: Examples, tokenizer, batch_size: int, max_length: int) -> Iterator[dict[str, torch.Tensor]]:
    for start in range(0, len(examples), batch_size):
        pairs = [list(examples.pairs[start : start + batch_size])] if examples.pairs is not None else []
        encoded = tokenizer(
            list(examples.texts[start : start + batch_size]),
            *pairs,  # a sentence pair is one input: [CLS] text [SEP] pair [SEP], truncated longest first
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        if examples.labels is not None:
            encoded["labels"] = torch.tensor(examples.labels[start : start + batch_size])
        yield dict(encoded)

"""Text-classification data: one text or a sentence pair per row, and a label written as an integer or a word.

Files are TSV/CSV (with a header row, or headerless with ``task.columns``),
JSON lines, a JSON array of objects or Parquet; or a Hugging Face dataset.
The task's label names, in class-id order, are resolved once from
``task.labels`` or the train split (``task_labels``), so every split, the
teacher's head and every export agree on what class ``i`` means.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from autocompress.config import ConfigError, SearchConfig

FILE_FORMATS = {".tsv": "\t", ".csv": ","}
SUFFIXES = (".tsv", ".csv", ".jsonl", ".json", ".parquet")
INTEGER = re.compile(r"[+-]?\d+")

TextInput = str | tuple[str, str]
"""What the tokenizer reads for one row: a text, or a (text, pair) of a sentence-pair task."""


@dataclass(frozen=True)
class Examples:
    """Texts (and, for a sentence-pair task, their second texts) with integer class ids, of one split."""

    texts: tuple[str, ...]
    labels: tuple[int, ...]
    pairs: tuple[str, ...] | None = None
    """Second texts aligned with ``texts`` (``task.text_pair_column``); None for one text per row."""

    def __len__(self) -> int:
        return len(self.texts)

    def head(self, n: int | None) -> "Examples":
        return self if n is None else self.subset(range(min(n, len(self))))

    def subset(self, indices: Sequence[int]) -> "Examples":
        pairs = None if self.pairs is None else tuple(self.pairs[i] for i in indices)
        return Examples(tuple(self.texts[i] for i in indices), tuple(self.labels[i] for i in indices), pairs)

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
class RawSplit:
    """A split as read, before its labels are mapped to class ids: label values as written (ints or words)."""

    source: str
    texts: tuple[str, ...]
    pairs: tuple[str, ...] | None
    values: tuple[int | str, ...]
    class_names: tuple[str, ...] | None = None
    """Names a Hugging Face ``ClassLabel`` gives the integer labels (a dataset, or a Parquet file ``datasets`` wrote)."""


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


def read_raw(
    path: Path, text_column: str, label_column: str, *, text_pair_column: str | None = None, columns: Sequence[str] | None = None
) -> RawSplit:
    """Read a .tsv/.csv/.jsonl/.json/.parquet file's texts and label values; every error is one line naming the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: data file not found (set $AUTOCOMPRESS_DATA_ROOT or task.data_root)")
    if path.suffix.lower() not in SUFFIXES:
        raise ConfigError(f"{path}: unsupported data format {path.suffix!r}; allowed: {', '.join(SUFFIXES)}")
    stat = path.stat()
    return _read_raw_cached(path.resolve(), stat.st_mtime_ns, stat.st_size, text_column, label_column, text_pair_column,
                            None if columns is None else tuple(columns))


@functools.lru_cache(maxsize=8)
def _read_raw_cached(
    path: Path, mtime_ns: int, size: int, text_column: str, label_column: str, pair_column: str | None, columns: tuple[str, ...] | None
) -> RawSplit:
    """One parse per file version: a search loads the train split for every split's labels."""
    suffix = path.suffix.lower()
    if columns is not None and suffix not in FILE_FORMATS:
        raise ConfigError(f"{path}: task.columns names the columns of headerless .tsv/.csv files; a {suffix} file names its own")
    class_names = None
    if suffix == ".parquet":
        header, rows, class_names = _parquet(path, label_column)
    else:
        text = _utf8(path)
        header, rows = _delimited(path, text, columns) if suffix in FILE_FORMATS else _json(path, text)
    wanted = {"task.text_column": text_column, "task.label_column": label_column}
    if pair_column:
        wanted["task.text_pair_column"] = pair_column
    missing = {field: column for field, column in wanted.items() if column not in header}
    if missing and (rows or header):
        named = " / ".join(f"{field}={column!r}" for field, column in missing.items())
        hint = "; a file without a header row needs task.columns" if suffix in FILE_FORMATS and columns is None else ""
        raise ConfigError(f"{path}: column{'s' * (len(missing) > 1)} {named} not found; the file has {header}{hint}")
    texts = _texts(path, rows, text_column, "task.text_column")
    pairs = _texts(path, rows, pair_column, "task.text_pair_column") if pair_column else None
    values = []
    for where, row in rows:
        value = _label_value(row.get(label_column))
        if value is None:
            raise ConfigError(f"{path}: {where}: no label in column {label_column!r} (task.label_column)")
        values.append(value)
    return RawSplit(str(path), texts, pairs, tuple(values), class_names)


Rows = list[tuple[str, dict[str, Any]]]
"""Rows of a file with where each is (``line 3``, ``row 3``), for error messages."""


def _utf8(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: bytes that are not UTF-8 ({raw[error.start : error.start + 4]!r}); save the file as UTF-8") from None


def _delimited(path: Path, text: str, columns: tuple[str, ...] | None) -> tuple[list[str], Rows]:
    """A TSV (no quoting: quotes are text) or CSV file; the header is its first line unless ``columns`` names the fields."""
    quoting = csv.QUOTE_NONE if path.suffix.lower() == ".tsv" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=FILE_FORMATS[path.suffix.lower()], quoting=quoting)
    header = list(columns) if columns is not None else next(reader, [])
    rows: Rows = []
    for fields in reader:
        if not fields:
            continue  # a blank line
        if len(fields) != len(header):
            names = f"task.columns names {len(header)}" if columns is not None else f"the header has {len(header)}"
            raise ConfigError(f"{path}: line {reader.line_num}: {len(fields)} fields, {names} ({', '.join(header)})")
        rows.append((f"line {reader.line_num}", dict(zip(header, fields))))
    return header, rows


def _json(path: Path, text: str) -> tuple[list[str], Rows]:
    """JSON lines, or (``.json`` only) one JSON array of objects."""
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}: line {error.lineno}: not a valid JSON array ({error.msg})") from None
        rows = [(f"row {number}", item) for number, item in enumerate(items, 1)]
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append((f"line {number}", json.loads(line)))
                except json.JSONDecodeError as error:
                    raise ConfigError(f"{path}: not one JSON object per line (line {number}: {error.msg})") from None
    for where, row in rows:
        if not isinstance(row, dict):
            raise ConfigError(f"{path}: {where}: expected a JSON object of columns, got {type(row).__name__}")
    return (list(rows[0][1]) if rows else []), rows


def _parquet(path: Path, label_column: str) -> tuple[list[str], Rows, tuple[str, ...] | None]:
    """A Parquet file's rows, and the ``ClassLabel`` names of its label column when ``datasets`` wrote it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise ConfigError(f"{path}: not a readable Parquet file ({str(error).splitlines()[0]})") from None
    rows = [(f"row {number}", row) for number, row in enumerate(table.to_pylist(), 1)]
    class_names = None
    metadata = (table.schema.metadata or {}).get(b"huggingface")
    if metadata:
        feature = json.loads(metadata).get("info", {}).get("features", {}).get(label_column, {})
        if feature.get("_type") == "ClassLabel" and feature.get("names"):
            class_names = tuple(feature["names"])
    return table.column_names, rows, class_names


def _texts(path: Path, rows: Rows, column: str, field: str) -> tuple[str, ...]:
    texts = []
    for where, row in rows:
        value = row.get(column)
        if value is None:
            raise ConfigError(f"{path}: {where}: no text in column {column!r} ({field})")
        texts.append(str(value))
    return tuple(texts)


def _label_value(value: Any) -> int | str | None:
    """An integer label as ``int`` (``3``, ``"3"``, ``3.0``), a word label as its stripped text; None when empty."""
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    text = str(value).strip()
    if INTEGER.fullmatch(text):
        return int(text)
    return text or None


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


def _read(config: SearchConfig, split: str) -> RawSplit:
    """The split as its own file or Hugging Face split gives it, labels as written."""
    task = config.task
    if task.hf_dataset:
        return _read_hf(config, {"train": task.hf_train_split, "dev": task.hf_dev_split, "test": task.hf_test_split}[split])
    relative = getattr(task, split)
    if relative is None:
        raise ConfigError(f"{config.source}: field 'task.{split}' is required when task.hf_dataset is not set")
    return read_raw(config.data_path(relative), task.text_column, task.label_column, text_pair_column=task.text_pair_column, columns=task.columns)


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
        label = _label_value(value)
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
    """Tokenize into padded batches with ``labels``, in the examples' order; a sentence-pair task's two texts together."""
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
        encoded["labels"] = torch.tensor(examples.labels[start : start + batch_size])
        yield dict(encoded)

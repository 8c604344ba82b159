"""Reading one task file: TSV/CSV (a header row, or headerless with ``task.columns``), JSON lines, a JSON array or Parquet.

Every error is one line naming the file, the row or line, and the field; a
file is parsed once per version (its modification time and size key the cache).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autocompress.config import ConfigError

FILE_FORMATS = {".tsv": "\t", ".csv": ","}

SUFFIXES = (".tsv", ".csv", ".jsonl", ".json", ".parquet")
TEXT_SUFFIX = ".txt"
"""Plain text, one text per non-blank line: unlabelled tasks only."""

INTEGER = re.compile(r"[+-]?\d+")

@dataclass(frozen=True)
class RawSplit:
    """A split as read, before its labels are mapped to class ids: label values as written (ints or words)."""

    source: str
    texts: tuple[str, ...]
    pairs: tuple[str, ...] | None
    values: tuple[int | str, ...]
    class_names: tuple[str, ...] | None = None
    """Names a Hugging Face ``ClassLabel`` gives the integer labels (a dataset, or a Parquet file ``datasets`` wrote)."""

def read_raw(
    path: Path, text_column: str, label_column: str | None, *, text_pair_column: str | None = None, columns: Sequence[str] | None = None
) -> RawSplit:
    """Read a .tsv/.csv/.jsonl/.json/.parquet file's texts and label values; every error is one line naming the file and the field.

    ``label_column`` None reads texts only (no values), and then also a .txt file: one text per non-blank line.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: data file not found (set $AUTOCOMPRESS_DATA_ROOT or task.data_root)")
    allowed = SUFFIXES if label_column is not None else (*SUFFIXES, TEXT_SUFFIX)
    if path.suffix.lower() not in allowed:
        extra = f" ({TEXT_SUFFIX} holds texts without labels)" if path.suffix.lower() == TEXT_SUFFIX else ""
        raise ConfigError(f"{path}: unsupported data format {path.suffix!r}{extra}; allowed: {', '.join(allowed)}")
    stat = path.stat()
    return _read_raw_cached(path.resolve(), stat.st_mtime_ns, stat.st_size, text_column, label_column, text_pair_column,
                            None if columns is None else tuple(columns))

@functools.lru_cache(maxsize=8)
def _read_raw_cached(
    path: Path, mtime_ns: int, size: int, text_column: str, label_column: str | None, pair_column: str | None, columns: tuple[str, ...] | None
) -> RawSplit:
    """One parse per file version: a search loads the train split for every split's labels."""
    suffix = path.suffix.lower()
    if suffix == TEXT_SUFFIX:
        texts = tuple(line.strip() for line in _utf8(path).splitlines() if line.strip())
        return RawSplit(str(path), texts, None, ())
    if columns is not None and suffix not in FILE_FORMATS:
        raise ConfigError(f"{path}: task.columns names the columns of headerless .tsv/.csv files; a {suffix} file names its own")
    header, rows, class_names = _parse(path, columns, label_column)
    wanted = {"task.text_column": text_column}
    if label_column is not None:
        wanted["task.label_column"] = label_column
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
    for where, row in rows if label_column is not None else ():
        value = label_value(row.get(label_column))
        if value is None:
            raise ConfigError(f"{path}: {where}: no label in column {label_column!r} (task.label_column)")
        values.append(value)
    return RawSplit(str(path), texts, pairs, tuple(values), class_names)

Rows = list[tuple[str, dict[str, Any]]]
"""Rows of a file with where each is (``line 3``, ``row 3``), for error messages."""

def read_rows(path: Path, field: str) -> tuple[list[str], Rows]:
    """The columns and rows of a file that is not a split (a labelled pairs or retrieval file), ``field`` naming the config
    field that points at it in errors: .tsv/.csv with a header row, .jsonl, .json or .parquet."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: data file not found ({field}; set $AUTOCOMPRESS_DATA_ROOT or task.data_root)")
    if path.suffix.lower() not in SUFFIXES:
        raise ConfigError(f"{path}: unsupported data format {path.suffix!r} for {field}; allowed: {', '.join(SUFFIXES)}")
    stat = path.stat()
    header, rows, _ = _parse_cached(path.resolve(), stat.st_mtime_ns, stat.st_size)
    return header, rows

@functools.lru_cache(maxsize=8)
def _parse_cached(path: Path, mtime_ns: int, size: int) -> tuple[list[str], Rows, tuple[str, ...] | None]:
    return _parse(path, None, None)

def _parse(path: Path, columns: tuple[str, ...] | None, label_column: str | None) -> tuple[list[str], Rows, tuple[str, ...] | None]:
    """Header, rows and (Parquet written by ``datasets``) the label column's class names of a non-text file."""
    if path.suffix.lower() == ".parquet":
        return _parquet(path, label_column)
    text = _utf8(path)
    header, rows = _delimited(path, text, columns) if path.suffix.lower() in FILE_FORMATS else _json(path, text)
    return header, rows, None

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

def _parquet(path: Path, label_column: str | None) -> tuple[list[str], Rows, tuple[str, ...] | None]:
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

def label_value(value: Any) -> int | str | None:
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

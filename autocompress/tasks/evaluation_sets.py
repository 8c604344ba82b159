"""Labelled sets an embedding task scores beside its texts: sentence pairs with a gold similarity (``task.pairs``,
STS-B style) and queries retrieving from a corpus with relevance judgements (``task.retrieval``, BEIR's layout).

Their texts travel as extra batches after the split's own, each row marked with
which list it belongs to (``EVAL_KIND``) and its place there (``EVAL_INDEX``),
a pair's gold score and a query's judged documents beside it. Every scorer
(torch, ONNX Runtime, an export reloaded in its own tool) embeds batches and
hands them to the head, so the labels reach ``SentenceEmbedding.scores``
whichever runtime produced the embeddings, and nothing else needs to know.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autocompress.config import ConfigError, SearchConfig
from autocompress.tasks.data import Examples, batches
from autocompress.tasks.embedding_metrics import gold_spearman, retrieval_scores
from autocompress.tasks.files import Rows, label_value, read_rows

PAIR_FIRST, PAIR_SECOND, QUERY, DOCUMENT = 1, 2, 3, 4
"""``EVAL_KIND`` values: which list of an evaluation set a row's text belongs to."""
EVAL_KIND = "eval_kind"
EVAL_INDEX = "eval_index"
GOLD_SCORE = "gold_score"
"""A pair's gold similarity, on its first text's row."""
JUDGED_ROWS = "judged_rows"
"""A query's judged corpus rows, padded with -1, and their grades (``JUDGED_GRADES``)."""
JUDGED_GRADES = "judged_grades"
QRELS_COLUMNS = ("query-id", "corpus-id", "score")
"""The columns of a judgements file, as BEIR writes ``qrels/<split>.tsv``."""


@dataclass(frozen=True)
class PairSet:
    """Sentence pairs and their gold similarity scores."""

    first: tuple[str, ...]
    second: tuple[str, ...]
    scores: tuple[float, ...]


@dataclass(frozen=True)
class RetrievalSet:
    """The queries judged on one split, the whole corpus, and per query its judged ``(corpus row, grade)`` pairs."""

    queries: tuple[str, ...]
    corpus: tuple[str, ...]
    judgements: tuple[tuple[tuple[int, float], ...], ...]


@dataclass(frozen=True)
class EvaluationSets:
    """What one split scores beside its texts; empty for train and for a task without labelled files."""

    pairs: PairSet | None = None
    retrieval: RetrievalSet | None = None

    def __bool__(self) -> bool:
        return self.pairs is not None or self.retrieval is not None

    def batches(self, tokenizer: Any, *, batch_size: int, max_length: int) -> list[dict[str, torch.Tensor]]:
        """Tokenized batches of every text of the sets, each list sorted by length, rows marked and labelled."""
        out: list[dict[str, torch.Tensor]] = []
        if self.pairs is not None:
            gold = torch.tensor(self.pairs.scores, dtype=torch.float32)
            out += _marked(self.pairs.first, PAIR_FIRST, tokenizer, batch_size, max_length, lambda rows: {GOLD_SCORE: gold[rows]})
            out += _marked(self.pairs.second, PAIR_SECOND, tokenizer, batch_size, max_length)
        if self.retrieval is not None:
            judged = self.retrieval.judgements
            out += _marked(self.retrieval.queries, QUERY, tokenizer, batch_size, max_length, lambda rows: _judged(judged, rows))
            out += _marked(self.retrieval.corpus, DOCUMENT, tokenizer, batch_size, max_length)
        return out


def load_evaluation_sets(config: SearchConfig, split: str) -> EvaluationSets:
    """The labelled sets ``config`` names for ``split`` (dev or test; train has none), read and checked."""
    task = config.task
    if split == "train":
        return EvaluationSets()
    pairs = task.pairs and getattr(task.pairs, split)
    retrieval = task.retrieval and getattr(task.retrieval, split)
    return EvaluationSets(
        pairs=_read_pairs(config, split) if pairs else None,
        retrieval=_read_retrieval(config, split) if retrieval else None,
    )


def evaluation_scores(outputs: np.ndarray, batches: Sequence[Mapping[str, torch.Tensor]], *, precision: str = "float32") -> dict[str, float]:
    """``gold_spearman``, ``ndcg_at_10`` and ``recall_at_100`` (those whose sets the batches carry) from the embeddings
    ``outputs`` of every row of ``batches``, in order; ``precision``: how an index stores the corpus (``retrieval_scores``)."""
    rows: dict[int, dict[int, np.ndarray]] = {}
    gold: dict[int, float] = {}
    judged: dict[int, dict[int, float]] = {}
    start = 0
    for batch in batches:
        size = len(batch["input_ids"])
        if EVAL_KIND in batch:
            for offset, (kind, index) in enumerate(zip(batch[EVAL_KIND].tolist(), batch[EVAL_INDEX].tolist())):
                rows.setdefault(kind, {})[index] = outputs[start + offset]
                if kind == PAIR_FIRST:
                    gold[index] = float(batch[GOLD_SCORE][offset])
                elif kind == QUERY:
                    documents, grades = batch[JUDGED_ROWS][offset].tolist(), batch[JUDGED_GRADES][offset].tolist()
                    judged[index] = {d: g for d, g in zip(documents, grades) if d >= 0}
        start += size
    scores: dict[str, float] = {}
    if PAIR_FIRST in rows:
        order = sorted(rows[PAIR_FIRST])
        scores["gold_spearman"] = gold_spearman(_stacked(rows[PAIR_FIRST], order), _stacked(rows[PAIR_SECOND], order), [gold[i] for i in order])
    if QUERY in rows:
        queries = sorted(rows[QUERY])
        corpus = _stacked(rows[DOCUMENT], sorted(rows[DOCUMENT]))
        scores |= retrieval_scores(_stacked(rows[QUERY], queries), corpus, [judged[q] for q in queries], precision=precision)
    return scores


def _marked(texts: Sequence[str], kind: int, tokenizer: Any, batch_size: int, max_length: int,
            extra: Callable[[torch.Tensor], dict[str, torch.Tensor]] | None = None) -> list[dict[str, torch.Tensor]]:
    """``texts`` batched shortest first, each row marked ``kind`` with its index, plus ``extra(rows)``'s labels."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    tokenized = batches(Examples(tuple(texts[i] for i in order), None), tokenizer, batch_size=batch_size, max_length=max_length)
    for start, batch in zip(range(0, len(order), batch_size), tokenized):
        rows = torch.tensor(order[start : start + batch_size])
        batch[EVAL_KIND] = torch.full_like(rows, kind)
        batch[EVAL_INDEX] = rows
        batch.update(extra(rows) if extra else {})
    return tokenized


def _judged(judgements: Sequence[Sequence[tuple[int, float]]], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each query row's judged corpus rows and grades, padded with -1 (and 0) to the batch's longest list."""
    lists = [judgements[int(q)] for q in rows]
    width = max(len(judged) for judged in lists)
    documents = torch.full((len(lists), width), -1, dtype=torch.long)
    grades = torch.zeros((len(lists), width), dtype=torch.float32)
    for row, judged in enumerate(lists):
        for column, (document, grade) in enumerate(judged):
            documents[row, column], grades[row, column] = document, grade
    return {JUDGED_ROWS: documents, JUDGED_GRADES: grades}


def _stacked(by_index: Mapping[int, np.ndarray], order: Sequence[int]) -> np.ndarray:
    return np.stack([by_index[i] for i in order])


def _read_pairs(config: SearchConfig, split: str) -> PairSet:
    pairs = config.task.pairs
    field = f"task.pairs.{split}"
    path = config.data_path(getattr(pairs, split))
    _, rows = _rows(path, field)
    first = _column(path, rows, pairs.sentence1_column, "task.pairs.sentence1_column")
    second = _column(path, rows, pairs.sentence2_column, "task.pairs.sentence2_column")
    values = _column(path, rows, pairs.score_column, "task.pairs.score_column", text=False)
    scores = tuple(_number(path, where, value, "task.pairs.score_column") for (where, _), value in zip(rows, values))
    if len(rows) < 2:
        raise ConfigError(f"{path}: {field} holds {len(rows)} pair(s); a rank correlation needs at least 2")
    return PairSet(first, second, scores)


def _read_retrieval(config: SearchConfig, split: str) -> RetrievalSet:
    settings = config.task.retrieval
    query_path, corpus_path = config.data_path(settings.queries), config.data_path(settings.corpus)
    query_ids, query_texts = _identified(query_path, settings, "task.retrieval.queries", title=None)
    corpus_ids, corpus_texts = _identified(corpus_path, settings, "task.retrieval.corpus", title=settings.title_column)
    query_row = {query_id: row for row, query_id in enumerate(query_ids)}
    corpus_row = {document: row for row, document in enumerate(corpus_ids)}
    path = config.data_path(getattr(settings, split))
    _, rows = _rows(path, f"task.retrieval.{split}")
    judged: dict[str, list[tuple[int, float]]] = {}
    for (where, row), query, document in zip(rows, *(_column(path, rows, column, f"task.retrieval.{split}") for column in QRELS_COLUMNS[:2])):
        if query not in query_row:
            raise ConfigError(f"{path}: {where}: query-id {query!r} is not in {query_path} (task.retrieval.queries)")
        if document not in corpus_row:
            raise ConfigError(f"{path}: {where}: corpus-id {document!r} is not in {corpus_path} (task.retrieval.corpus)")
        grade = _number(path, where, row.get(QRELS_COLUMNS[2]), f"task.retrieval.{split}")
        judged.setdefault(query, []).append((corpus_row[document], grade))
    if not any(grade > 0 for judgements in judged.values() for _, grade in judgements):
        raise ConfigError(f"{path}: no judgement with a score above 0 (task.retrieval.{split}): no query has a relevant document")
    queries = tuple(judged)
    return RetrievalSet(tuple(query_texts[query_row[q]] for q in queries), corpus_texts, tuple(tuple(judged[q]) for q in queries))


def _identified(path: Path, settings: Any, field: str, *, title: str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Ids and texts of a queries or corpus file (a corpus's title, when present, before its text); ids once each."""
    _, rows = _rows(path, field)
    ids = _column(path, rows, settings.id_column, "task.retrieval.id_column")
    texts = _column(path, rows, settings.text_column, "task.retrieval.text_column")
    if title is not None:
        titles = [str(row.get(title) or "").strip() for _, row in rows]
        texts = tuple(f"{heading} {text}".strip() if heading else text for heading, text in zip(titles, texts))
    seen: set[str] = set()
    for (where, _), identifier in zip(rows, ids):
        if identifier in seen:
            raise ConfigError(f"{path}: {where}: id {identifier!r} appears twice (task.retrieval.id_column)")
        seen.add(identifier)
    return ids, texts


def _rows(path: Path, field: str) -> tuple[list[str], Rows]:
    header, rows = read_rows(path, field)
    if not rows:
        raise ConfigError(f"{path}: {field} names a file without rows")
    return header, rows


def _column(path: Path, rows: Rows, column: str, field: str, *, text: bool = True) -> tuple[Any, ...]:
    values = []
    for where, row in rows:
        value = row.get(column)
        if value is None or (text and not str(value).strip()):
            raise ConfigError(f"{path}: {where}: no value in column {column!r} ({field}); the row has {sorted(row)}")
        values.append(str(value) if text else value)
    return tuple(values)


def _number(path: Path, where: str, value: Any, field: str) -> float:
    parsed = label_value(value)
    try:
        return float(parsed)
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: {where}: score {value!r} is not a number ({field})") from None

"""An embedding task's labelled sets: sentence pairs with gold scores and BEIR-layout retrieval files, read, batched
beside a split's texts and scored from whatever embedded the batches."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from autocompress.config import ConfigError, parse_config
from autocompress.models.loading import load_tokenizer
from autocompress.models.pooling import Pooling
from autocompress.tasks import SentenceEmbedding, gold_spearman, load_evaluation_sets, retrieval_scores
from autocompress.tasks.evaluation_sets import (
    DOCUMENT,
    EVAL_INDEX,
    EVAL_KIND,
    GOLD_SCORE,
    JUDGED_ROWS,
    PAIR_FIRST,
    PAIR_SECOND,
    QUERY,
    evaluation_scores,
)

DATA = Path(__file__).resolve().parents[1] / "data"
PAIRS = {"dev": "similarity/dev.jsonl", "test": "similarity/test.jsonl"}
RETRIEVAL = {"queries": "retrieval/queries.jsonl", "corpus": "retrieval/corpus.jsonl", "dev": "retrieval/qrels/dev.tsv",
             "test": "retrieval/qrels/test.tsv"}


def config(data_root=DATA, **task):
    return parse_config({"task": {"type": "embedding", "data_root": str(data_root), "train": "topics/train.tsv", "columns": ["label", "text"],
                                  "text_column": "text", "test_size": 64, "dev_size": 32, **task}}, source="emb.yaml")


def vector(text: str) -> np.ndarray:
    """A fixed pseudo-random embedding per text: what any model would give the same text wherever it sits in the batches."""
    return np.random.default_rng(int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)).normal(size=16)


def test_pairs_and_retrieval_files_are_read_per_split():
    dev = load_evaluation_sets(config(pairs=PAIRS, retrieval=RETRIEVAL), "dev")
    rows = [json.loads(line) for line in (DATA / PAIRS["dev"]).read_text().splitlines()]
    assert dev.pairs.first == tuple(r["sentence1"] for r in rows) and dev.pairs.scores == tuple(r["score"] for r in rows)
    corpus = [json.loads(line) for line in (DATA / RETRIEVAL["corpus"]).read_text().splitlines()]
    assert dev.retrieval.corpus[0] == f"{corpus[0]['title']} {corpus[0]['text']}" and dev.retrieval.corpus[1] == corpus[1]["text"]
    qrels = [line.split("\t") for line in (DATA / RETRIEVAL["dev"]).read_text().splitlines()[1:]]
    assert len(dev.retrieval.queries) == len({query for query, _, _ in qrels})  # only the queries judged on dev
    first = [(int(document[1:]), float(grade)) for query, document, grade in qrels if query == qrels[0][0]]
    assert dev.retrieval.judgements[0] == tuple(first)
    test = load_evaluation_sets(config(pairs={"test": PAIRS["test"]}, retrieval=RETRIEVAL), "test")
    assert test.retrieval.queries and not set(test.retrieval.queries) & set(dev.retrieval.queries)
    assert load_evaluation_sets(config(pairs={"test": PAIRS["test"]}), "dev").pairs is None
    assert not load_evaluation_sets(config(pairs=PAIRS, retrieval=RETRIEVAL), "train")


def test_batches_mark_every_text_once_and_scores_undo_their_order():
    sets = load_evaluation_sets(config(pairs=PAIRS, retrieval=RETRIEVAL), "dev")
    tokenizer = load_tokenizer("default")
    batches = sets.batches(tokenizer, batch_size=16, max_length=32)
    marked = {kind: sorted(i for b in batches for k, i in zip(b[EVAL_KIND].tolist(), b[EVAL_INDEX].tolist()) if k == kind)
              for kind in (PAIR_FIRST, PAIR_SECOND, QUERY, DOCUMENT)}
    sizes = {PAIR_FIRST: 40, PAIR_SECOND: 40, QUERY: len(sets.retrieval.queries), DOCUMENT: 120}
    assert marked == {kind: list(range(size)) for kind, size in sizes.items()}
    assert all(GOLD_SCORE in b for b in batches if b[EVAL_KIND][0] == PAIR_FIRST)
    assert all((b[JUDGED_ROWS] >= -1).all() and (b[JUDGED_ROWS].max(dim=1).values >= 0).all() for b in batches if b[EVAL_KIND][0] == QUERY)
    texts = {PAIR_FIRST: sets.pairs.first, PAIR_SECOND: sets.pairs.second, QUERY: sets.retrieval.queries, DOCUMENT: sets.retrieval.corpus}
    outputs = np.concatenate([np.stack([vector(texts[k][i]) for k, i in zip(b[EVAL_KIND].tolist(), b[EVAL_INDEX].tolist())]) for b in batches])
    embed = lambda strings: np.stack([vector(s) for s in strings])  # noqa: E731
    expected = {"gold_spearman": gold_spearman(embed(sets.pairs.first), embed(sets.pairs.second), sets.pairs.scores),
                **retrieval_scores(embed(sets.retrieval.queries), embed(sets.retrieval.corpus), [dict(j) for j in sets.retrieval.judgements])}
    assert evaluation_scores(outputs, batches) == pytest.approx(expected)


def test_the_head_scores_texts_and_labelled_sets_apart():
    sets = load_evaluation_sets(config(pairs=PAIRS), "dev")
    tokenizer = load_tokenizer("default")
    pooling = Pooling("mean", normalize=True, declared=False, source="test")
    texts = [f"text number {i}" for i in range(12)]
    own = tokenizer(texts, padding=True, return_tensors="pt")
    own = {**own, "teacher_embedding": torch.tensor(np.stack([vector(t) for t in texts]), dtype=torch.float32)}
    batches = [own, *sets.batches(tokenizer, batch_size=16, max_length=32)]
    kinds = {PAIR_FIRST: sets.pairs.first, PAIR_SECOND: sets.pairs.second}
    outputs = np.concatenate([own["teacher_embedding"].numpy()] + [
        np.stack([vector(kinds[k][i]) for k, i in zip(b[EVAL_KIND].tolist(), b[EVAL_INDEX].tolist())]) for b in batches[1:]])
    scores = SentenceEmbedding("gold_spearman", pooling).scores(outputs, batches)
    assert scores["cosine"] == pytest.approx(1.0) and scores["recall_at_10"] == 1.0  # the texts' own rows against their teacher
    assert set(scores) == {"cosine", "recall_at_10", "spearman", "gold_spearman"}
    with pytest.raises(ValueError, match="the batches carry no ndcg_at_10 set"):
        SentenceEmbedding("ndcg_at_10", pooling).scores(outputs, batches)
    # a distillation's early scoring reads only what its metric needs: a label-free one skips the labelled sets
    assert SentenceEmbedding("cosine", pooling).metric_batches(batches) == [own]
    assert SentenceEmbedding("gold_spearman", pooling).metric_batches(batches) == batches


@pytest.mark.parametrize(("task", "message"), [
    ({"metric": "ndcg_at_10", "retrieval": {**RETRIEVAL, "test": None}}, "task.metric 'ndcg_at_10' is scored on task.retrieval's files: set task.retrieval.test"),
    ({"metric": "gold_spearman"}, "set task.pairs.dev and task.pairs.test"),
    ({"pairs": {"sentence1_column": "a"}}, "task.pairs names no file for any split"),
    ({"type": "sequence-classification", "pairs": PAIRS, "train": "sst2/train.tsv"}, "task.pairs is scored by an embedding task"),
])
def test_bad_settings_are_one_line(task, message):
    with pytest.raises(ConfigError) as error:
        config(**task)
    assert message in str(error.value) and "\n" not in str(error.value)


def write(folder: Path, name: str, text: str) -> str:
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return name


@pytest.mark.parametrize(("files", "message"), [
    ({"pairs.jsonl": '{"sentence1": "a", "sentence2": "b", "score": "high"}\n{"sentence1": "c", "sentence2": "d", "score": 1}\n'},
     "pairs.jsonl: line 1: score 'high' is not a number (task.pairs.score_column)"),
    ({"pairs.jsonl": '{"sentence1": "a", "text": "b", "score": 1}\n'},
     "pairs.jsonl: line 1: no value in column 'sentence2' (task.pairs.sentence2_column)"),
    ({"qrels.tsv": "query-id\tcorpus-id\tscore\nq0\tmissing\t1\n"}, "qrels.tsv: line 2: corpus-id 'missing' is not in"),
    ({"qrels.tsv": "query-id\tcorpus-id\tscore\nq99\td0\t1\n"}, "qrels.tsv: line 2: query-id 'q99' is not in"),
    ({"qrels.tsv": "query-id\tcorpus-id\tscore\nq0\td0\t0\n"}, "qrels.tsv: no judgement with a score above 0"),
    ({"corpus.jsonl": '{"_id": "d0", "text": "x"}\n{"_id": "d0", "text": "y"}\n', "qrels.tsv": "query-id\tcorpus-id\tscore\nq0\td0\t1\n"},
     "corpus.jsonl: line 2: id 'd0' appears twice"),
    ({"qrels.txt": "q0 d0 1\n"}, "unsupported data format '.txt' for task.retrieval.dev"),
])
def test_bad_files_are_one_line_naming_the_file_row_and_field(tmp_path, files, message):
    for name, text in files.items():
        write(tmp_path, name, text)
    if "pairs.jsonl" in files:
        task = {"pairs": {"dev": "pairs.jsonl"}}
    else:
        for name in ("corpus.jsonl", "queries.jsonl"):
            if name not in files:
                write(tmp_path, name, (DATA / "retrieval" / name).read_text())
        task = {"retrieval": {"queries": "queries.jsonl", "corpus": "corpus.jsonl", "dev": next(n for n in files if n.startswith("qrels"))}}
    (tmp_path / "topics").symlink_to(DATA / "topics")
    with pytest.raises(ConfigError) as error:
        load_evaluation_sets(config(tmp_path, **task), "dev")
    assert message in str(error.value) and "\n" not in str(error.value)

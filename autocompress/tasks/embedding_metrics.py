"""Label-free quality of a compressed sentence-embedding model, measured against its teacher.

An embedding task has no labels to score, so the compressed model (the
candidate) and the teacher embed the same texts and the scores say how much of
the teacher's geometry survives: ``cosine`` compares each text's two vectors
directly (it only makes sense while both live in the same space, as they do
after quantization or pruning), ``recall_at_10`` asks whether each text keeps its
nearest neighbours (what retrieval sees), and ``spearman`` whether all pairwise
similarities keep their order (what ranking and clustering see). The last two
are invariant to any rotation of the candidate's space.

With labels (``task.pairs``, ``task.retrieval``), the scores say what the
model is for rather than how close it stays: ``gold_spearman`` ranks sentence
pairs' cosines against human similarity scores (sentence-transformers'
``EmbeddingSimilarityEvaluator``), ``ndcg_at_10`` and ``recall_at_100`` rank a
corpus for each judged query (BEIR's, with linear gains as ``pytrec_eval``).

Output quantization follows sentence-transformers' ``quantize_embeddings`` so
that the vectors scored here are the ones a deployment would store, and
``quantized_recall`` measures neighbours on them with the similarity a vector
index uses for that precision.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import spearmanr

EMBEDDING_METRICS: tuple[str, ...] = ("cosine", "recall_at_10", "spearman")
"""The metrics scored on any texts against the teacher; the labelled ones come from ``gold_spearman`` and ``retrieval_scores``."""
PRECISIONS: tuple[str, ...] = ("float32", "int8", "binary")

_PAIR_CHUNK = 16_384  # pairs per einsum in similarity_spearman: bounds the (pairs, dim) temporaries


def embedding_scores(candidate: ArrayLike, teacher: ArrayLike, *, metric: str = "cosine", precision: str = "float32") -> dict[str, float]:
    """Every metric of ``EMBEDDING_METRICS``; ``metric``, the one the search optimizes, is checked to fail early.

    ``precision``: how an index stores the candidate's vectors; recall@10 is
    found on those (``quantized_recall``), cosine and Spearman on the vectors themselves.
    """
    if metric not in EMBEDDING_METRICS:
        raise ValueError(f"unknown embedding metric {metric!r}; allowed: {', '.join(EMBEDDING_METRICS)}")
    candidate, teacher = _paired(candidate, teacher)
    recall = neighbour_recall(candidate, teacher, k=10) if precision == "float32" else quantized_recall(candidate, teacher, precision)
    return {"cosine": mean_cosine(candidate, teacher), "recall_at_10": recall, "spearman": similarity_spearman(candidate, teacher)}


def mean_cosine(candidate: ArrayLike, teacher: ArrayLike) -> float:
    """Mean cosine between row i of the candidate and row i of the teacher; a zero row scores 0 (not NaN)."""
    candidate, teacher = _paired(candidate, teacher)
    return float(np.einsum("ij,ij->i", _unit(candidate), _unit(teacher)).mean())


def neighbour_recall(candidate: ArrayLike, teacher: ArrayLike, k: int = 10, *, chunk: int = 1024) -> float:
    """Mean fraction of each row's k nearest other rows (cosine) under the teacher that the candidate also finds.

    Rows are scored ``chunk`` at a time so memory stays ``chunk x rows``.
    """
    candidate, teacher = _paired(candidate, teacher)
    unit = _unit(candidate)
    return _recall(lambda rows: unit[rows] @ unit.T, teacher, k, chunk)


def similarity_spearman(candidate: ArrayLike, teacher: ArrayLike, *, max_pairs: int = 500_000, seed: int = 0) -> float:
    """Spearman correlation of the candidate's and the teacher's cosine similarity over pairs of rows.

    All pairs i < j when there are at most ``max_pairs``, else ``max_pairs``
    pairs drawn uniformly with replacement from ``default_rng(seed)``. When
    either side's similarities are all equal (e.g. identical rows) there is no
    order to compare and Spearman is undefined: this returns 0.0, "no evidence
    of agreement", rather than a NaN that would poison a search objective.
    """
    candidate, teacher = _paired(candidate, teacher)
    n = len(candidate)
    if n < 2:
        raise ValueError(f"spearman needs at least 2 rows to form a pair, got {n}")
    if n * (n - 1) // 2 <= max_pairs:
        first, second = np.triu_indices(n, 1)
    else:
        rng = np.random.default_rng(seed)
        first = rng.integers(0, n, max_pairs)
        second = rng.integers(0, n - 1, max_pairs)
        second += second >= first  # a uniform other row: never the row itself
    sims = [_pair_cosines(_unit(x), first, second) for x in (candidate, teacher)]
    if any(np.all(s == s[0]) for s in sims):  # scipy's own test for constant input
        return 0.0
    return float(spearmanr(*sims).statistic)


def gold_spearman(first: ArrayLike, second: ArrayLike, gold: ArrayLike) -> float:
    """Spearman correlation of each pair's cosine (row i of ``first`` with row i of ``second``), rounded to 6 decimals, with
    its gold score; 0.0 when either side is constant (no order to compare), as ``similarity_spearman``."""
    first, second = _paired(first, second)
    gold = np.asarray(gold, dtype=np.float64).ravel()
    if len(gold) != len(first) or len(gold) < 2:
        raise ValueError(f"gold_spearman needs one gold score per pair and at least 2 pairs, got {len(gold)} scores for {len(first)} pairs")
    # to 6 decimals: pairs whose cosines differ by float rounding alone (the same two texts, say) tie in every runtime
    cosines = np.round(np.einsum("ij,ij->i", _unit(first), _unit(second)), 6)
    if np.all(cosines == cosines[0]) or np.all(gold == gold[0]):
        return 0.0
    return float(spearmanr(cosines, gold).statistic)


def retrieval_scores(
    queries: ArrayLike, corpus: ArrayLike, judgements: Sequence[Mapping[int, float]], *, precision: str = "float32", chunk: int = 1024
) -> dict[str, float]:
    """``ndcg_at_10`` and ``recall_at_100`` of each query over the corpus, averaged over the queries with a relevant document.

    ``judgements[q]`` maps corpus rows to query q's graded relevance (> 0:
    relevant). Documents are ranked by ``quantized_similarity`` at
    ``precision`` (int8 ranges from the corpus, as an index calibrates them),
    ties to the lower row. nDCG uses linear gains, ``rel / log2(rank + 1)``,
    over the ideal order of the query's judgements; recall@100 is the share of
    relevant documents among the first 100 (every document when the corpus is smaller).
    """
    queries, corpus = np.asarray(queries), np.asarray(corpus)
    if queries.ndim != 2 or corpus.ndim != 2 or queries.shape[1] != corpus.shape[1] or len(judgements) != len(queries):
        raise ValueError(f"queries {queries.shape} and corpus {corpus.shape} must be (rows, dim) of one dim, with one judgement per query ({len(judgements)})")
    judged = [q for q, relevance in enumerate(judgements) if any(grade > 0 for grade in relevance.values())]
    if not judged:
        raise ValueError("no query has a relevant document (a relevance above 0): nothing to rank")
    _check_precision(precision)
    ranges = None if precision != "int8" else np.vstack((corpus.min(axis=0), corpus.max(axis=0)))
    stored = quantize_embeddings(corpus, precision, ranges=ranges)
    asked = quantize_embeddings(queries[judged], precision, ranges=ranges)
    depth = min(100, len(corpus))
    ranked = _neighbours(lambda rows: quantized_similarity(asked[rows], stored, precision), len(judged), depth, chunk, own=False)
    discounts = 1 / np.log2(np.arange(2, 12))
    ndcg, recall = [], []
    for found, q in zip(ranked, judged):
        relevance = judgements[q]
        gains = np.array([relevance.get(int(row), 0.0) for row in found[:10]], dtype=np.float64)
        ideal = np.sort(np.array([grade for grade in relevance.values() if grade > 0], dtype=np.float64))[::-1][:10]
        ndcg.append(float(gains @ discounts[: len(gains)] / (ideal @ discounts[: len(ideal)])))
        relevant = {row for row, grade in relevance.items() if grade > 0}
        recall.append(len(relevant.intersection(found.tolist())) / len(relevant))
    return {"ndcg_at_10": float(np.mean(ndcg)), "recall_at_100": float(np.mean(recall))}


def quantize_embeddings(embeddings: ArrayLike, precision: str, *, ranges: np.ndarray | None = None) -> np.ndarray:
    """``embeddings`` as sentence-transformers' ``quantize_embeddings`` stores them at ``precision``.

    int8: each dimension's [min, max] (from ``ranges``, shape (2, dim), else the
    embeddings themselves) is cut into 256 buckets stored as -128..127. binary:
    whether each value is > 0, packed 8 to a byte and offset by -128 into int8
    (sentence-transformers' "binary"; its "ubinary" keeps the raw uint8 bytes).
    """
    _check_precision(precision)
    embeddings = np.asarray(embeddings)
    if precision == "float32":
        return embeddings.astype(np.float32)
    if precision == "binary":
        return (np.packbits(embeddings > 0, axis=-1).astype(np.int16) - 128).astype(np.int8)
    if ranges is None:
        if embeddings.ndim == 1 or len(embeddings) < 2:
            raise ValueError("int8 ranges cannot come from a single embedding; pass ranges of shape (2, dim)")
        ranges = np.vstack((embeddings.min(axis=0), embeddings.max(axis=0)))
    ranges = np.asarray(ranges).astype(np.float32, copy=False)
    starts = ranges[0, :]
    steps = (ranges[1, :] - starts) / 255
    steps = np.where(steps == 0, 1, steps)  # a constant dimension: every value falls in bucket 0
    buckets = np.clip(np.floor((embeddings - starts) / steps), 0, 255)
    return (buckets - 128).astype(np.int8)


def bytes_per_vector(dim: int, precision: str) -> int:
    """Storage of one ``dim``-dimensional vector at ``precision``, as ``quantize_embeddings`` lays it out."""
    _check_precision(precision)
    return {"float32": 4 * dim, "int8": dim, "binary": -(-dim // 8)}[precision]


def quantized_similarity(queries_q: np.ndarray, corpus_q: np.ndarray, precision: str) -> np.ndarray:
    """The (queries, corpus) similarity a vector index ranks by at ``precision``; higher is more similar.

    float32: cosine (float64). int8: the int32 dot product of the stored
    values, as sentence-transformers' usearch int8 index ("ip") uses; it is not
    the cosine of the dequantized vectors. binary: minus the Hamming distance
    between the sign bits (int32), as its "hamming" index uses.
    """
    _check_precision(precision)
    if precision == "float32":
        return _unit(queries_q) @ _unit(corpus_q).T
    if precision == "int8":
        # float64 BLAS is exact here (|dot| <= 128**2 * dim, far below 2**53) and much faster than integer matmul
        return (np.asarray(queries_q, dtype=np.float64) @ np.asarray(corpus_q, dtype=np.float64).T).astype(np.int32)
    queries, corpus = (_bits(x) for x in (queries_q, corpus_q))
    hamming = queries.sum(axis=1)[:, None] + corpus.sum(axis=1)[None, :] - 2 * (queries @ corpus.T)
    return (-hamming).astype(np.int32)


def quantized_recall(
    candidate: ArrayLike,
    teacher: ArrayLike,
    precision: str,
    k: int = 10,
    ranges: np.ndarray | None = None,
    *,
    chunk: int = 1024,
) -> float:
    """``neighbour_recall`` with the candidate's neighbours found on its vectors quantized to ``precision``.

    The teacher's neighbours stay float cosine: the score is what a quantized
    index of the compressed model retrieves, against the uncompressed truth.
    ``ranges`` as in ``quantize_embeddings``; None takes them from the candidate.
    """
    candidate, teacher = _paired(candidate, teacher)
    stored = quantize_embeddings(candidate, precision, ranges=ranges)
    return _recall(lambda rows: quantized_similarity(stored[rows], stored, precision), teacher, k, chunk)


def _recall(candidate_similarity: Callable[[slice], np.ndarray], teacher: np.ndarray, k: int, chunk: int) -> float:
    """Mean overlap of the k nearest rows by ``candidate_similarity`` (slice vs all rows) and by teacher cosine."""
    n = len(teacher)
    if not 1 <= k < n:
        raise ValueError(f"recall@{k} needs 1 <= k < rows, got {n} rows and k={k}")
    unit = _unit(teacher)
    found = _neighbours(candidate_similarity, n, k, chunk)
    truth = _neighbours(lambda rows: unit[rows] @ unit.T, n, k, chunk)
    overlap = (found[:, :, None] == truth[:, None, :]).sum(axis=(1, 2))
    return float(overlap.mean() / k)


def _neighbours(similarity: Callable[[slice], np.ndarray], n: int, k: int, chunk: int, *, own: bool = True) -> np.ndarray:
    """The (n, k) indices of each row's k most similar other rows, ties to the lower index; ``own=False``: rows of
    another set (queries against a corpus), so none is skipped.

    Equal to ``argsort(-similarity, kind="stable")[:, :k]`` without the row
    itself, but a partition finds the k-th value first and only the rows' few
    candidates at or above it are sorted, which is several times faster.
    """
    found = np.empty((n, k), dtype=np.intp)
    for start in range(0, n, chunk):
        rows = slice(start, min(start + chunk, n))
        negated = -np.asarray(similarity(rows), dtype=np.float64)
        m = len(negated)
        if own:
            negated[np.arange(m), np.arange(start, start + m)] = np.inf  # never its own neighbour
        kth = np.partition(negated, k - 1, axis=1)[:, k - 1 : k]
        row, col = np.nonzero(negated <= kth)
        order = np.lexsort((col, negated[row, col], row))  # by row, then similarity, then index
        row, col = row[order], col[order]
        rank = np.arange(len(row)) - np.searchsorted(row, row)
        found[rows] = col[rank < k].reshape(m, k)
    return found


def _pair_cosines(unit: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Cosine of each pair (first[p], second[p]) of unit rows, a chunk of pairs at a time."""
    return np.concatenate(
        [
            np.einsum("ij,ij->i", unit[first[p : p + _PAIR_CHUNK]], unit[second[p : p + _PAIR_CHUNK]])
            for p in range(0, len(first), _PAIR_CHUNK)
        ]
    )


def _paired(candidate: ArrayLike, teacher: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Both embeddings as arrays, after checking they are the same texts: same (rows, dim) and at least one row."""
    candidate, teacher = np.asarray(candidate), np.asarray(teacher)
    if candidate.ndim != 2 or candidate.shape != teacher.shape:
        raise ValueError(
            f"candidate and teacher must be (rows, dim) of the same shape, got {candidate.shape} and {teacher.shape}"
        )
    if len(candidate) == 0:
        raise ValueError("no rows: candidate and teacher embeddings are empty")
    return candidate, teacher


def _unit(x: ArrayLike) -> np.ndarray:
    """Rows scaled to length 1 in float64; a zero row stays zero, so its cosine with anything is 0."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def _bits(packed: np.ndarray) -> np.ndarray:
    """The sign bits of ``binary`` vectors (undoing the -128 offset) as float64 0/1, ready for an exact BLAS product."""
    return np.unpackbits(np.ascontiguousarray(packed, dtype=np.int8).view(np.uint8) ^ 0x80, axis=1).astype(np.float64)


def _check_precision(precision: str) -> None:
    """Raise ``ValueError`` for a precision outside ``PRECISIONS``."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; allowed: {', '.join(PRECISIONS)}")

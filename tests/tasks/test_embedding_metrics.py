"""Label-free embedding metrics against a teacher, and sentence-transformers-compatible output quantization."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.stats import spearmanr

from autocompress.tasks.embedding_metrics import (
    EMBEDDING_METRICS,
    PRECISIONS,
    bytes_per_vector,
    embedding_scores,
    gold_spearman,
    mean_cosine,
    neighbour_recall,
    quantize_embeddings,
    quantized_recall,
    quantized_similarity,
    retrieval_scores,
    similarity_spearman,
)


def circle(order: list[int]) -> np.ndarray:
    """12 unit vectors 30 degrees apart, row order[p] at position p: each row's 2 nearest are its circle neighbours."""
    angles = np.empty(12)
    angles[order] = np.radians(30 * np.arange(12))
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def brute_recall(candidate_similarity: np.ndarray, teacher_similarity: np.ndarray, k: int) -> float:
    """The definition, unchunked: stable argsort of each full row, self excluded."""

    def top(similarity: np.ndarray) -> np.ndarray:
        similarity = similarity.astype(np.float64)
        np.fill_diagonal(similarity, -np.inf)
        return np.argsort(-similarity, axis=1, kind="stable")[:, :k]

    pairs = zip(top(candidate_similarity), top(teacher_similarity))
    return float(np.mean([len(set(a) & set(b)) for a, b in pairs]) / k)


def cosines(x: np.ndarray) -> np.ndarray:
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    return unit @ unit.T


def noisy_pair(rows: int, dim: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """A float32 teacher and a candidate that is the teacher plus ``noise``, seeded so every test sees fixed data."""
    rng = np.random.default_rng(rows)
    teacher = rng.standard_normal((rows, dim)).astype(np.float32)
    return teacher + noise * rng.standard_normal((rows, dim)).astype(np.float32), teacher


def test_mean_cosine_by_hand_and_a_zero_row_scores_zero():
    candidate = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0], [0.0, 0.0]])
    teacher = np.array([[1.0, 0.0], [1.0, 1.0], [4.0, 3.0], [1.0, 0.0]])
    # 1, 2 / (2 * sqrt 2), (12 + 12) / 25, and 0 for the zero row
    assert mean_cosine(candidate, teacher) == pytest.approx((1 + 1 / math.sqrt(2) + 24 / 25 + 0) / 4)


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        # rows 0 and 1 trade places: rows 0, 1, 2, 11 each keep one of their two neighbours
        ([1, 0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], (8 + 4 * 0.5) / 12),
        # rows 0 and 6 trade places: 0 and 6 keep none, 1, 5, 7, 11 keep one
        ([6, 1, 2, 3, 4, 5, 0, 7, 8, 9, 10, 11], (6 + 4 * 0.5) / 12),
    ],
)
def test_neighbour_recall_counts_the_kept_neighbours(order, expected):
    teacher = circle(list(range(12)))
    assert neighbour_recall(teacher, teacher, k=2) == 1.0
    assert neighbour_recall(circle(order), teacher, k=2) == pytest.approx(expected)


def test_spearman_by_hand_on_three_pairs():
    # teacher cosines (ab, ac, bc) = (1/sqrt2, 1/sqrt3, 2/sqrt6): ranks (2, 1, 3)
    teacher = np.array([[1.0, 0, 0], [1, 1, 0], [1, 1, 1]])
    # candidate cosines (0, 1/3, 2/3): ranks (1, 2, 3); sum d^2 = 2, rho = 1 - 6 * 2 / (3 * 8)
    candidate = np.array([[1.0, 0, 0], [0, 1, 0], [1, 2, 2]])
    assert similarity_spearman(candidate, teacher) == pytest.approx(0.5)
    assert similarity_spearman(candidate * [[2.0], [0.5], [3.0]], teacher) == pytest.approx(0.5)  # lengths don't count


def test_spearman_of_constant_similarities_is_zero_without_a_warning():
    identical = np.ones((5, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert similarity_spearman(identical, np.random.default_rng(0).standard_normal((5, 3))) == 0.0
        assert similarity_spearman(identical, identical) == 0.0


def test_spearman_uses_every_pair_up_to_max_pairs_then_a_seeded_sample():
    candidate, teacher = noisy_pair(200, 8, 0.5)
    full = spearmanr(cosines(candidate)[np.triu_indices(200, 1)], cosines(teacher)[np.triu_indices(200, 1)]).statistic
    assert similarity_spearman(candidate, teacher, max_pairs=200 * 199 // 2) == pytest.approx(full)
    sampled = similarity_spearman(candidate, teacher, max_pairs=2000, seed=3)
    assert sampled == similarity_spearman(candidate, teacher, max_pairs=2000, seed=3)
    assert sampled != similarity_spearman(candidate, teacher, max_pairs=2000, seed=4)
    assert sampled != pytest.approx(full, abs=1e-6) and sampled == pytest.approx(full, abs=0.05)


def test_a_sampled_pair_is_never_a_row_with_itself():
    basis = np.eye(20)  # 190 pairs, every one of cosine 0: constant, unless a self pair (cosine 1) slips in
    assert similarity_spearman(basis, basis, max_pairs=100) == 0.0


def test_identical_embeddings_score_one_on_every_metric():
    teacher = np.random.default_rng(0).standard_normal((60, 8))
    scores = embedding_scores(teacher, teacher.copy(), metric="spearman")
    assert scores == pytest.approx(dict.fromkeys(EMBEDDING_METRICS, 1.0))


def test_a_rotation_keeps_the_geometry_but_not_the_row_to_row_cosine():
    rng = np.random.default_rng(0)
    teacher = rng.standard_normal((150, 16))
    rotation, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    scores = embedding_scores(teacher @ rotation, teacher)
    assert scores["recall_at_10"] == 1.0
    assert scores["spearman"] == pytest.approx(1.0, abs=1e-9)
    assert scores["cosine"] < 0.5  # row i is compared across two different spaces


def test_chunked_recall_equals_the_unchunked_definition():
    candidate, teacher = noisy_pair(3000, 16, 0.4)
    recall = neighbour_recall(candidate, teacher, k=10, chunk=257)
    assert 0.2 < recall < 0.9  # a case where the neighbour sets really differ
    assert recall == pytest.approx(brute_recall(cosines(candidate), cosines(teacher), 10), abs=1e-12)


def test_ties_go_to_the_lower_index_as_a_stable_argsort_does():
    candidate, teacher = noisy_pair(300, 10, 0.5)  # 10 sign bits: many rows tie in Hamming distance
    bits = candidate > 0
    hamming = (bits[:, None, :] != bits[None, :, :]).sum(axis=2)
    expected = brute_recall(-hamming, cosines(teacher), 5)
    assert quantized_recall(candidate, teacher, "binary", k=5, chunk=64) == pytest.approx(expected, abs=1e-12)


def test_quantized_recall_at_float32_is_neighbour_recall():
    candidate, teacher = noisy_pair(400, 12, 0.5)
    assert quantized_recall(candidate, teacher, "float32", chunk=100) == neighbour_recall(candidate, teacher, chunk=100)


def test_quantized_recall_at_int8_uses_the_int8_dot_product():
    candidate, teacher = noisy_pair(300, 12, 0.3)
    stored = quantize_embeddings(candidate, "int8").astype(np.int64)
    expected = brute_recall(stored @ stored.T, cosines(teacher), 10)
    assert quantized_recall(candidate, teacher, "int8") == pytest.approx(expected, abs=1e-12)


def test_quantized_similarity_by_hand():
    queries = np.array([[1, 2], [-3, 4]], dtype=np.int8)
    assert quantized_similarity(queries, np.array([[5, 6]], dtype=np.int8), "int8").tolist() == [[17], [9]]
    extreme = np.full((1, 300), -128, dtype=np.int8)  # 128**2 * 300 overflows int16
    assert quantized_similarity(extreme, extreme, "int8").tolist() == [[128**2 * 300]]
    signs = quantize_embeddings(np.array([[1.0, -1, 1], [-1, -1, -1]]), "binary")
    ones = quantize_embeddings(np.ones((1, 3)), "binary")
    assert quantized_similarity(signs, ones, "binary").tolist() == [[-1], [-3]]  # Hamming 1 and 3
    float_sims = quantized_similarity(np.array([[1.0, 0]]), np.array([[3.0, 4.0], [0, 2]]), "float32")
    assert float_sims == pytest.approx(np.array([[0.6, 0.0]]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_quantize_embeddings_matches_sentence_transformers(dtype):
    st_quantize = pytest.importorskip("sentence_transformers").quantize_embeddings
    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((200, 20)).astype(dtype)
    embeddings[0, :5] = 0.0  # zero is not > 0: a 0 bit
    embeddings[:, 7] = 0.25  # a constant dimension: step 0 becomes 1
    calibration = rng.standard_normal((50, 20)).astype(dtype)  # narrower ranges: some values clip
    ranges = np.vstack((calibration.min(axis=0), calibration.max(axis=0)))
    for precision, kwargs in [("float32", {}), ("int8", {}), ("int8", {"ranges": ranges}), ("binary", {})]:
        ours = quantize_embeddings(embeddings, precision, **kwargs)
        theirs = st_quantize(embeddings, precision, **kwargs)
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        np.testing.assert_array_equal(ours, theirs)
        assert ours.nbytes == len(embeddings) * bytes_per_vector(20, precision)


def test_bytes_per_vector():
    assert [bytes_per_vector(384, p) for p in PRECISIONS] == [1536, 384, 48]
    assert bytes_per_vector(20, "binary") == 3


@pytest.mark.parametrize(
    ("call", "names"),
    [
        (lambda: embedding_scores(np.ones((20, 3)), np.ones((20, 3)), metric="ndcg"), EMBEDDING_METRICS),
        (lambda: quantize_embeddings(np.ones((20, 3)), "uint8"), PRECISIONS),
        (lambda: bytes_per_vector(8, "ubinary"), PRECISIONS),
        (lambda: quantized_similarity(np.ones((1, 3)), np.ones((1, 3)), "float16"), PRECISIONS),
        (lambda: embedding_scores(np.ones((20, 3)), np.ones((20, 4))), ["(20, 3)", "(20, 4)"]),
        (lambda: mean_cosine(np.ones((0, 3)), np.ones((0, 3))), ["no rows"]),
        (lambda: neighbour_recall(np.eye(10), np.eye(10), k=10), ["10 rows", "k=10"]),
        (lambda: quantized_recall(np.eye(5), np.eye(5), "binary", k=0), ["5 rows", "k=0"]),
        (lambda: similarity_spearman(np.ones((1, 3)), np.ones((1, 3))), ["2 rows", "got 1"]),
        (lambda: quantize_embeddings(np.ones((1, 3)), "int8"), ["ranges"]),
    ],
)
def test_errors_are_one_line_and_name_what_is_allowed(call, names):
    with pytest.raises(ValueError) as raised:
        call()
    message = str(raised.value)
    assert "\n" not in message
    assert all(name in message for name in names), message


def test_an_index_precision_changes_recall_only():
    rng = np.random.default_rng(3)
    teacher = rng.normal(size=(200, 16))
    candidate = teacher + 0.3 * rng.normal(size=(200, 16))
    floats, binary = embedding_scores(candidate, teacher), embedding_scores(candidate, teacher, precision="binary")
    assert binary["recall_at_10"] == quantized_recall(candidate, teacher, "binary") < floats["recall_at_10"]
    assert (binary["cosine"], binary["spearman"]) == (floats["cosine"], floats["spearman"])


def test_gold_spearman_ranks_pair_cosines_against_the_gold_scores():
    first = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    second = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [1.0, 0.9]])  # cosines 1, 0.707, 0, 0.9986
    assert gold_spearman(first, second, [3, 1, 0, 2]) == pytest.approx(1.0)  # cosine ranks (4, 2, 1, 3), the gold's too
    assert gold_spearman(first, second, [2, 1, 0, 3]) == pytest.approx(0.8)  # gold ranks (3, 2, 1, 4): 1 - 6 * 2 / (4 * 15)
    assert gold_spearman(first, second, [1, 1, 1, 1]) == 0.0  # no order among the gold scores: no evidence
    with pytest.raises(ValueError, match="one gold score per pair"):
        gold_spearman(first, second, [1, 2])


def test_retrieval_ndcg_and_recall_by_hand():
    corpus = np.array([[1, 0], [0.8, 0.6], [0, 1], [-1, 0]], dtype=float)
    queries = np.array([[1, 0.1], [0, 1], [-1, -1]], dtype=float)
    judgements = [{1: 1.0}, {0: 2.0, 2: 1.0}, {3: 0.0}]  # the third query has nothing relevant: it does not count
    # query 0 ranks documents 0, 1, 2, 3: its one relevant document second, DCG 1/log2(3), ideal 1
    # query 1 ranks 2, 1, then 0 and 3 tied at cosine 0 (the lower row first): DCG 1 + 2/log2(4) = 2, ideal 2 + 1/log2(3)
    expected = (1 / math.log2(3) + 2 / (2 + 1 / math.log2(3))) / 2
    scores = retrieval_scores(queries, corpus, judgements)
    assert scores == {"ndcg_at_10": pytest.approx(expected), "recall_at_100": 1.0}  # 4 documents: all within 100


def test_retrieval_recall_at_100_counts_the_first_hundred_only():
    rng = np.random.default_rng(0)
    corpus = rng.normal(size=(150, 8))
    query = corpus[:1] + 1e-3
    order = np.argsort(-(corpus / np.linalg.norm(corpus, axis=1, keepdims=True)) @ (query[0] / np.linalg.norm(query[0])), kind="stable")
    judged = {int(order[5]): 1.0, int(order[99]): 1.0, int(order[100]): 1.0, int(order[149]): 3.0}
    scores = retrieval_scores(query, corpus, [judged])
    assert scores["recall_at_100"] == pytest.approx(2 / 4)
    assert scores["ndcg_at_10"] == pytest.approx((1 / math.log2(7)) / (3 + 1 / math.log2(3) + 1 / math.log2(4) + 1 / math.log2(5)))


@pytest.mark.parametrize("precision", ["int8", "binary"])
def test_retrieval_on_stored_vectors_ranks_by_the_index_similarity(precision):
    rng = np.random.default_rng(1)
    corpus, queries = rng.normal(size=(200, 64)), rng.normal(size=(20, 64))
    judged = [{int(np.argmax(corpus @ q)): 1.0} for q in queries]  # each query's best dot product
    ranges = np.vstack((corpus.min(axis=0), corpus.max(axis=0)))
    stored, asked = (quantize_embeddings(x, precision, ranges=ranges if precision == "int8" else None) for x in (corpus, queries))
    top = np.argsort(-quantized_similarity(asked, stored, precision), axis=1, kind="stable")[:, :100]
    expected = np.mean([next(iter(j)) in row for j, row in zip(judged, top)])
    scores = retrieval_scores(queries, corpus, judged, precision=precision)
    assert scores["recall_at_100"] == pytest.approx(expected) and scores["ndcg_at_10"] < retrieval_scores(queries, corpus, judged)["ndcg_at_10"]


def test_retrieval_refuses_judgements_without_a_relevant_document():
    with pytest.raises(ValueError, match="no query has a relevant document"):
        retrieval_scores(np.eye(2), np.eye(2), [{0: 0.0}, {}])

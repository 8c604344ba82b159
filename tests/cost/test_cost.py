"""The learned cost model: estimator conventions, accuracy on a synthetic latency law over real policy features, safe storage."""

from __future__ import annotations

import numpy as np
import pytest
import skops.io as sio
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.feature_extraction import DictVectorizer
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.linear_model import BayesianRidge
from sklearn.metrics import r2_score
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from autocompress.cost import CostModel, CostModelStore, cost_terms, is_clearly_infeasible, policy_features
from autocompress.policy import LayerSpec, Policy

LAYERS, HIDDEN, HEAD_DIM = 6, 384, 32  # all-MiniLM-L6-v2
KERNELS = ("int8", "nbits8", "lowbit", "fp16", "float")
MS_PER_FLOP = {"int8": 1.125e-9, "nbits8": 2.25e-9, "lowbit": 1.5e-9, "fp16": 2.75e-9, "float": 2.5e-9}
"""Synthetic speed of each kernel the featurizer names: MatMulInteger about twice MatMulNBits at 8 bits."""
EMBEDDING_MS = {4: 0.06, 8: 0.04, 32: 0.02}
"""GatherBlockQuantized unpacks nibbles, the int8 Gather adds a Cast and Mul, float is a plain Gather."""


@pytest.fixture(scope="module")
def minilm():
    from autocompress.models.loading import load_classifier

    return load_classifier("default")


def random_policy(rng: np.random.Generator) -> Policy:
    """A random MiniLM policy: per-block bits (and pruning), one group size, heads, FFN width, kept blocks, embedding bits."""
    layers = {
        f"re:.*\\.layer\\.{i}\\..*": LayerSpec(bits=int(rng.choice([4, 8, 16, 32])), prune_ratio=float(rng.choice([0.0, 0.25, 0.5])))
        for i in range(LAYERS)
    }
    return Policy(
        layers=layers,
        group_size=[None, 32][rng.integers(2)],
        heads={i: int(rng.integers(4, 13)) for i in range(LAYERS)},
        ffn={i: int(rng.choice(np.arange(512, 1537, 128))) for i in range(LAYERS)},
        kept_blocks=tuple(i for i in range(LAYERS) if rng.random() < 0.85) or (0,),
        embedding_bits=int(rng.choice([4, 8, 32])),
    )


def true_latency_ms(features: dict[str, float]) -> float:
    """A synthetic latency law read off the real features, by their meaning.

    Fixed overhead and the embedding gather, then per kept block: the FLOPs of
    its four attention projections (``heads`` x 32 wide) and two FFN matmuls
    (``ffn`` wide) at the speed of the kernels its Linears run on (the
    ``int8``/``nbits8``/``lowbit``/``fp16``/``float`` fractions), plus float
    attention scores (quadratic in ``seq_len``, not a cost term: the model
    only approximates it). Sparsity costs nothing: the kernels are dense.
    """
    seq = features["seq_len"]
    ms = 0.3 + 0.004 * seq + EMBEDDING_MS[int(features["embedding_bits"])]
    for i in range(LAYERS):
        if features[f"layer{i}.kept"]:
            heads, ffn = features[f"layer{i}.heads"], features[f"layer{i}.ffn"]
            ms_per_flop = sum(features[f"layer{i}.{kernel}"] * MS_PER_FLOP[kernel] for kernel in KERNELS)
            linear_flops = 2 * seq * (4 * heads * HEAD_DIM * HIDDEN + 2 * ffn * HIDDEN)
            ms += 0.05 + linear_flops * ms_per_flop + 4 * heads * HEAD_DIM * seq * seq * MS_PER_FLOP["float"]
    return ms


def measurements(model, seed: int, n: int, *, noise: float = 0.03) -> tuple[list[dict[str, float]], np.ndarray]:
    """``n`` random policies' real features (``policy_features`` on ``model``) and their noisy synthetic latency."""
    rng = np.random.default_rng(seed)
    X = [policy_features(random_policy(rng), model, seq_len=float(rng.integers(16, 65))) for _ in range(n)]
    y = np.array([true_latency_ms(x) * (1 + noise * rng.standard_normal()) for x in X])
    return X, y


def mape(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.abs(y_pred - y_true) / y_true))


def uniform(model, *, kept: int, heads: int, ffn: int, bits: int, group_size: int | None = None, seq_len: float) -> dict[str, float]:
    """Features of one policy applied alike to the first ``kept`` blocks."""
    chosen = Policy(
        layers={"re:.*": LayerSpec(bits=bits)},
        group_size=group_size,
        heads=dict.fromkeys(range(LAYERS), heads),
        ffn=dict.fromkeys(range(LAYERS), ffn),
        kept_blocks=tuple(range(kept)),
        embedding_bits=8,
    )
    return policy_features(chosen, model, seq_len=seq_len)


@pytest.fixture(scope="module")
def held_out(minilm) -> tuple[list[dict[str, float]], np.ndarray]:
    X, _ = measurements(minilm, 999, 200, noise=0.0)
    return X, np.array([true_latency_ms(x) for x in X])


@pytest.fixture(scope="module")
def fitted(minilm) -> CostModel:
    return CostModel().fit(*measurements(minilm, 1, 60))


# --- estimator conventions -------------------------------------------------------------


def test_follows_scikit_learn_estimator_conventions(minilm):
    regressor = BayesianRidge(alpha_1=1e-5)
    model = CostModel(regressor=regressor)
    assert model.regressor is regressor and model.get_params(deep=False) == {"regressor": regressor}
    assert vars(model) == {"regressor": regressor}  # __init__ stores its arguments and nothing else
    with pytest.raises(NotFittedError):
        model.predict([{"seq_len": 1.0}])
    X, y = measurements(minilm, 0, 10)
    assert model.fit(X, y) is model
    assert model.n_samples_fit_ == 10 and regressor.get_params() == model.pipeline_[-1].get_params()
    assert not hasattr(regressor, "coef_")  # the given regressor is cloned, not fitted in place
    copy = clone(model)
    assert copy.get_params(deep=False)["regressor"] is not regressor
    assert copy.get_params()["regressor__alpha_1"] == 1e-5
    with pytest.raises(NotFittedError):
        copy.predict(X)
    assert model.__sklearn_tags__().input_tags.dict
    assert cross_val_score(CostModel(), *measurements(minilm, 1, 60), cv=3).min() > 0.85  # composes with sklearn tools (0.92 measured)


@pytest.mark.parametrize(
    ("X", "y", "message"),
    [
        ({"seq_len": 1.0}, [1.0], "X must be a list of feature dicts"),
        ([{"seq_len": "long"}, {"seq_len": 2.0}], [1.0, 2.0], r"X\[0\]\['seq_len'\] = 'long'"),
        ([{"seq_len": float("nan")}, {"seq_len": 2.0}], [1.0, 2.0], "expected a finite number"),
        ([{"seq_len": 1.0}, {"seq_len": 2.0}], [1.0], "y must be a 1-D sequence of 2 numbers"),
        ([{"seq_len": 1.0}, {"seq_len": 2.0}], [1.0, np.inf], "y must hold finite numbers"),
        ([{"seq_len": 1.0}], [1.0], "at least 2 samples"),
    ],
)
def test_fit_rejects_bad_input_naming_it(X, y, message):
    with pytest.raises((TypeError, ValueError), match=message):
        CostModel().fit(X, y)


def test_cost_terms_sum_kept_layers_and_cross_globals():
    terms = cost_terms(
        {"layer0.kept": 1, "layer0.heads": 2, "layer0.ffn": 3, "layer1.kept": 0, "layer1.heads": 5, "layer1.ffn": 7, "seq_len": 10.0}
    )
    assert terms["layer.kept"] == 1  # the dropped layer1 contributes nothing
    assert terms["layer.heads"] == 2 and terms["layer.ffn*heads"] == 6 and terms["layer.heads*heads"] == 4
    assert terms["seq_len"] == 10 and terms["seq_len*layer.ffn"] == 30 and terms["seq_len*layer.ffn*heads"] == 60
    assert cost_terms({"block3.heads": 4})["block.kept"] == 1  # a group without "kept" counts as kept
    assert cost_terms({"encoder.layer.0.ffn": 2, "encoder.layer.1.ffn": 3})["encoder.layer.ffn"] == 5


# --- accuracy and uncertainty ----------------------------------------------------------


def test_accuracy_improves_with_data_and_beats_raw_features(minilm, held_out):
    X_test, y_test = held_out
    errors = {n: mape(y_test, CostModel().fit(*measurements(minilm, 1, n)).predict(X_test)) for n in (8, 60)}
    assert errors[60] < errors[8] / 2  # 0.021 vs 0.133 measured
    assert errors[60] < 0.04  # the same fit on each layer's mean bit width instead of its kernel gives 0.054
    raw = make_pipeline(DictVectorizer(sparse=False), StandardScaler(), BayesianRidge()).fit(*measurements(minilm, 1, 60))
    assert errors[60] < mape(y_test, raw.predict(X_test)) / 2  # the cost terms are what make it work (raw: 0.129)


def test_cost_model_tells_kernels_apart_at_equal_bits(minilm):
    """8-bit per channel (MatMulInteger) and 8-bit in groups (MatMulNBits) differ only in kernel: priced apart.

    Features that carried only the bit width would give both the same price.
    """
    fitted = CostModel().fit(*measurements(minilm, 1, 100))  # a uniform model lies at the edge of random mixes
    per_channel = uniform(minilm, kept=LAYERS, heads=12, ffn=1536, bits=8, seq_len=32.0)
    grouped = uniform(minilm, kept=LAYERS, heads=12, ffn=1536, bits=8, group_size=32, seq_len=32.0)
    assert per_channel != grouped  # else no model could tell them apart
    true_ratio = true_latency_ms(grouped) / true_latency_ms(per_channel)
    (fast, slow), (fast_std, slow_std) = fitted.predict([per_channel, grouped], return_std=True)
    assert slow / fast == pytest.approx(true_ratio, rel=0.2)  # 1.37 predicted, 1.49 true
    assert slow - fast > fast_std + slow_std


def test_score_is_r2(fitted, held_out):
    X_test, y_test = held_out
    assert fitted.score(X_test, y_test) == pytest.approx(r2_score(y_test, fitted.predict(X_test)))
    assert fitted.score(X_test, y_test) > 0.95


def test_std_grows_away_from_the_data(minilm, fitted, held_out):
    X_test, _ = held_out
    _, std_near = fitted.predict(X_test, return_std=True)
    # the full float model on longer inputs than any measured (16-64 tokens)
    far = [uniform(minilm, kept=LAYERS, heads=12, ffn=1536, bits=32, seq_len=64.0 * k) for k in (2, 4)]
    _, std_far = fitted.predict(far, return_std=True)
    assert std_far[0] > 2 * np.median(std_near)
    assert std_far[1] > 2 * std_far[0]


def test_prediction_interval_is_mean_plus_minus_z_std(fitted, held_out):
    X_test = held_out[0][:5]
    mean, std = fitted.predict(X_test, return_std=True)
    lower, upper = fitted.prediction_interval(X_test, z=1.5)
    np.testing.assert_allclose(lower, mean - 1.5 * std)
    np.testing.assert_allclose(upper, mean + 1.5 * std)
    with pytest.raises(ValueError, match="z must be a finite number >= 0"):
        fitted.prediction_interval(X_test, z=-1)


def test_rejects_only_clearly_infeasible_candidates(minilm, fitted):
    limit = 2.1
    big = uniform(minilm, kept=LAYERS, heads=12, ffn=1536, bits=32, seq_len=64.0)
    small = uniform(minilm, kept=1, heads=4, ffn=512, bits=4, group_size=32, seq_len=16.0)
    near = uniform(minilm, kept=LAYERS, heads=8, ffn=1024, bits=16, seq_len=32.0)
    assert true_latency_ms(big) > 2 * limit and true_latency_ms(small) < limit / 4
    assert 0.8 * limit < true_latency_ms(near) < limit

    reject, predicted = is_clearly_infeasible(fitted, big, limit=limit)
    assert reject and predicted == pytest.approx(true_latency_ms(big), rel=0.1)
    assert is_clearly_infeasible(fitted, small, limit=limit)[0] is False
    assert is_clearly_infeasible(fitted, near, limit=limit)[0] is False
    assert is_clearly_infeasible(fitted, big, limit=limit, z=1e6)[0] is False  # a wide enough interval never rejects

    few = CostModel().fit(*measurements(minilm, 1, 7))
    assert is_clearly_infeasible(few, big, limit=limit, z=1.0)[0] is False  # too few samples to trust
    assert is_clearly_infeasible(few, big, limit=limit, z=1.0, min_samples=5)[0] is True
    with pytest.raises(ValueError, match="limit must be a finite number"):
        is_clearly_infeasible(fitted, big, limit=float("nan"))


# --- storage ---------------------------------------------------------------------------


def test_store_round_trip_gives_identical_predictions(minilm, tmp_path, held_out):
    store = CostModelStore(tmp_path)
    assert store.load("cpu-a", "latency_ms") is None
    X, y = measurements(minilm, 1, 10)
    counts = [store.add("cpu-a", "latency_ms", x, v) for x, v in zip(X, y)]
    assert counts == list(range(1, 11))
    features, values = store.samples("cpu-a", "latency_ms")
    assert features == X and values == list(y)
    fitted = store.fit("cpu-a", "latency_ms")
    loaded = CostModelStore(tmp_path).load("cpu-a", "latency_ms")
    assert isinstance(loaded, CostModel) and loaded is not fitted
    for a, b in zip(fitted.predict(held_out[0], return_std=True), loaded.predict(held_out[0], return_std=True)):
        np.testing.assert_array_equal(a, b)
    assert store.load("cpu-b", "latency_ms") is None and store.load("cpu-a", "size_mb") is None  # keyed by both


def test_store_refits_as_measurements_arrive(minilm, tmp_path, held_out):
    store = CostModelStore(tmp_path)
    X, y = measurements(minilm, 1, 30)
    for x, v in zip(X[:8], y[:8]):
        store.add("cpu-a", "latency_ms", x, v)
    early = mape(held_out[1], store.fit("cpu-a", "latency_ms").predict(held_out[0]))
    for x, v in zip(X[8:], y[8:]):
        store.add("cpu-a", "latency_ms", x, v)
    store.fit("cpu-a", "latency_ms")
    loaded = store.load("cpu-a", "latency_ms")
    assert loaded.n_samples_fit_ == 30
    assert mape(held_out[1], loaded.predict(held_out[0])) < early


class Tripwire:
    """A type outside the allow-list; constructing it on load would flip the flag."""

    constructed = False

    def __init__(self) -> None:
        self.payload = "anything"

    def __setstate__(self, state):
        Tripwire.constructed = True
        self.__dict__.update(state)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (lambda: sio.dumps(Tripwire()), r"Untrusted types found .*Tripwire"),
        (lambda: b"not a zip file", "refusing to load"),
        (lambda: sio.dumps(BayesianRidge()), "not a CostModel"),
    ],
)
def test_store_refuses_tampered_files(tmp_path, monkeypatch, content, message):
    monkeypatch.setattr(Tripwire, "constructed", False)
    store = CostModelStore(tmp_path)
    path = tmp_path / "cpu-a" / "latency_ms.skops"
    path.parent.mkdir()
    path.write_bytes(content())
    with pytest.raises(ValueError, match=message):
        store.load("cpu-a", "latency_ms")
    assert Tripwire.constructed is False


def test_store_validates_keys_data_and_storable_estimators(minilm, tmp_path):
    store = CostModelStore(tmp_path)
    X, y = measurements(minilm, 1, 4)
    with pytest.raises(ValueError, match="fingerprint_id must be"):
        store.add("../escape", "latency_ms", X[0], y[0])
    with pytest.raises(ValueError, match="target must be"):
        store.load("cpu-a", "a/b")
    with pytest.raises(ValueError, match="value must be a finite number"):
        store.add("cpu-a", "latency_ms", X[0], float("inf"))
    for x, v in zip(X, y):
        store.add("cpu-a", "latency_ms", x, v)
    with pytest.raises(ValueError, match="types the store will not load back"):
        store.fit("cpu-a", "latency_ms", estimator=CostModel(regressor=GaussianProcessRegressor()))
    assert store.load("cpu-a", "latency_ms") is None  # nothing unloadable was written
    with (tmp_path / "cpu-a" / "latency_ms.jsonl").open("a") as f:
        f.write('{"features": {}, "val')
    with pytest.raises(ValueError, match=r"latency_ms.jsonl:5: not a cost sample"):
        store.samples("cpu-a", "latency_ms")


@pytest.mark.parametrize(
    ("bits", "group_size", "scheme", "kernel"),
    [
        (8, None, "linear", "int8"),  # MatMulInteger
        (8, 32, "linear", "nbits8"),  # MatMulNBits, about twice as slow here: the bit width alone does not tell
        (4, None, "linear", "lowbit"),
        (2, 32, "linear", "lowbit"),
        (16, None, "linear", "fp16"),
        (32, None, "linear", "float"),
        (4, None, "kmeans", "float"),  # simulation-only, runs as a float MatMul
    ],
)
def test_policy_features_name_the_kernel_each_layer_runs_on(minilm, bits, group_size, scheme, kernel):
    chosen = Policy(layers={"re:.*layer\\.1\\..*": LayerSpec(bits=bits)}, group_size=group_size, scheme=scheme, kept_blocks=(1, 3, 5))
    features = policy_features(chosen, minilm, seq_len=20.0)
    assert features[f"layer1.{kernel}"] == 1.0
    assert sum(features[f"layer1.{k}"] for k in KERNELS) == 1.0
    assert features["layer0.float"] == 1.0 and features["layer0.kept"] == 0.0 and features["layer1.kept"] == 1.0
    assert features["seq_len"] == 20.0 and features["layer1.heads"] == 12.0 and features["layer1.ffn"] == 1536.0

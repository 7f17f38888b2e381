"""The compiler's contract (docs/design.md §3-§4): exact outputs, block bounds, the right errors."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import exactformer as ef
from conftest import near_duplicates, random_dataset, reference_feasible
from exactformer import Dataset, DatasetError, InfeasibleError
from exactformer.compiler import paper_bound, strict_bound


@st.composite
def datasets(draw, max_n=6, max_d=4):
    """Random datasets with pooled (shared, duplicated) tokens, permutations and equal means."""
    d = draw(st.integers(2, max_d))
    scale = 10.0 ** draw(st.integers(-5, 5))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    pool = rng.standard_normal((draw(st.integers(2, 8)), d)) * scale
    tpool = rng.standard_normal((draw(st.integers(1, 4)), d)) * scale
    consistent = draw(st.booleans())
    f = rng.integers(0, len(tpool), size=len(pool))  # one target per pooled value
    xs, ys = [], []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["pool", "fresh", "perm", "mean"]))
        if kind == "perm" and xs:  # a permutation of an earlier sequence: equal distribution
            src = int(rng.integers(len(xs)))
            x = xs[src][rng.permutation(len(xs[src]))]
        elif kind == "mean" and xs:  # same mean as an earlier sequence, other distribution
            src = xs[int(rng.integers(len(xs)))]
            x = np.concatenate([src, src.mean(axis=0, keepdims=True)])
        elif kind == "fresh":
            x = rng.standard_normal((int(rng.integers(1, max_n + 1)), d)) * scale
        else:
            x = pool[rng.integers(0, len(pool), size=int(rng.integers(1, max_n + 1)))]
        m = int(rng.integers(1, len(x) + 1))
        if consistent:  # target a function of the value where the value is pooled
            idx = [np.flatnonzero((pool == row).all(axis=1)) for row in x[:m]]
            y = np.stack([tpool[f[i[0]]] if len(i) else tpool[int(rng.integers(len(tpool)))]
                          for i in idx])
        else:
            y = tpool[rng.integers(0, len(tpool), size=m)]
        xs.append(x)
        ys.append(y)
    return Dataset.from_sequences(xs, ys)


def check_model(model, ds, compact, exact):
    report = ef.verify(model, ds)
    assert report.passed, report.summary()
    if exact:
        assert report.exact and report.max_abs_error == 0
    else:
        assert report.max_rel_error <= (1e-10 if compact else 1e-12)
    assert model.rank <= 2
    if compact:
        info = model.info
        assert model.n_blocks <= 4 + info["split_rounds"] + info["snap_layers"] - 1
    else:
        assert model.width <= 4
        assert model.n_blocks <= strict_bound(ds) < paper_bound(ds)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ds=datasets(), compact=st.booleans(), seed=st.integers(0, 3))
def test_float_contract(ds, compact, seed):
    feasible = reference_feasible(ds.inputs, ds.targets)
    if feasible and near_duplicates(ds):
        with pytest.raises(DatasetError, match="too close for a float64"):
            ef.compile(ds, compact=compact, seed=seed)
        return
    if not feasible:
        with pytest.raises(InfeasibleError):
            ef.compile(ds, compact=compact, seed=seed)
        return
    check_model(ef.compile(ds, compact=compact, seed=seed), ds, compact, exact=False)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ds=datasets(max_n=4, max_d=3), compact=st.booleans())
def test_exact_contract(ds, compact):
    if not reference_feasible(ds.inputs, ds.targets):
        with pytest.raises(InfeasibleError):
            ef.compile(ds, compact=compact, exact=True)
        return
    check_model(ef.compile(ds, compact=compact, exact=True), ds, compact, exact=True)


@pytest.mark.parametrize("scale", [1e-5, 1.0, 1e5])
@pytest.mark.parametrize("compact", [False, True])
def test_random_data_with_distinct_means(scale, compact):
    ds = random_dataset(np.random.default_rng(7), N=30, n=(3, 12), d=5, m=(1, 3), scale=scale)
    model = ef.compile(ds, compact=compact)
    check_model(model, ds, compact, exact=False)
    if not compact:  # distinct means: no split, at most 2Σm + 2 blocks
        assert model.info["split_rounds"] == 0
        assert model.n_blocks <= 2 * int(ds.output_lengths.sum()) + 2


def test_classification_folds_the_projection():
    rng = np.random.default_rng(3)
    codes = np.eye(3)[:, :3] * 2.0
    xs = [rng.standard_normal((6, 3)) for _ in range(12)]
    ys = [codes[[i % 3]] for i in range(12)]
    ds = Dataset.from_sequences(xs, ys)
    model = ef.compile(ds)
    # N + C + 1 blocks: broadcast, N main-leader moves (last one holds the collapse), C snaps
    assert model.n_blocks == 12 + 3 + 1
    assert not any("projection" in b.kind for b in model.blocks)
    assert ef.verify(model, ds).passed


def test_seed_changes_weights_not_correctness():
    ds = random_dataset(np.random.default_rng(1), N=6)
    a, b = ef.compile(ds, seed=1), ef.compile(ds, seed=2)
    assert a.n_blocks == b.n_blocks
    assert not np.array_equal(a.blocks[0].sa.V, b.blocks[0].sa.V)
    assert ef.verify(a, ds).passed and ef.verify(b, ds).passed


def test_same_seed_same_model():
    ds = random_dataset(np.random.default_rng(1), N=6)
    a, b = ef.compile(ds, seed=5), ef.compile(ds, seed=5)
    for (na, ta), (nb, tb) in zip(a.named_tensors(), b.named_tensors()):
        assert na == nb and np.array_equal(ta, tb)


def test_large_d_and_many_sequences():
    ds = random_dataset(np.random.default_rng(2), N=200, n=(5, 30), d=64, m=(1, 2))
    check_model(ef.compile(ds), ds, False, False)
    check_model(ef.compile(ds, compact=True), ds, True, False)


def structured_dataset(N, n=60, d=8, seed=0):
    """Tokens from a small integer vocabulary: every value repeats within and across sequences."""
    rng = np.random.default_rng(seed)
    vocab = rng.integers(-3, 4, size=(30, d)).astype(float)
    tv = rng.integers(-2, 3, size=(10, d)).astype(float)
    f = rng.integers(0, 10, size=30)
    xs, ys = [], []
    for _ in range(N):
        idx = rng.integers(0, 30, size=n)
        xs.append(vocab[idx])
        ys.append(tv[f[idx[:2]]])
    return Dataset.from_sequences(xs, ys)


@pytest.mark.parametrize("compact", [False, True])
def test_structured_data_with_repeated_tokens(compact):
    ds = structured_dataset(120)
    model = ef.compile(ds, compact=compact)
    check_model(model, ds, compact, exact=False)
    # the batched fast forward agrees with the plain layer-by-layer formula
    X = np.concatenate(ds.inputs)
    seg = np.concatenate([[0], np.cumsum(ds.input_lengths)])
    for blk in model.blocks:
        X = blk.ff(X) if blk.ff is not None else X
        X = blk.sa(X, seg) if blk.sa is not None else X
    fast = np.concatenate(model.run(ds.inputs))
    np.testing.assert_allclose(fast, X, rtol=0, atol=1e-9 * ds.scale)

"""The fast float forward pass (sparse FF runs, hardmax margins) against the references."""

import numpy as np
import pytest
from tests.conftest import random_dataset

import exactformer as ef
from exactformer.forward import _apply_wide_ff, _Screen, record_margins
from exactformer.model import Block, FeedForward, Transformer


def _dense(model, xs):
    """The reference: every layer on every token, one after the other."""
    X = np.concatenate(xs)
    seg = np.concatenate([[0], np.cumsum([len(x) for x in xs])])
    for b in model.blocks:
        if b.ff is not None:
            X = b.ff(X)
        if b.sa is not None:
            X = b.sa(X, seg, model.attention, model.temperature)
    return X


def _trapezoid(rng, d, z, X):
    """A point move of docs/design.md §4 (4 copies of v), some rows above the trapezoid."""
    v = rng.standard_normal(d)
    gaps = np.abs(X @ v - z @ v)
    g = np.min(gaps[gaps > 1e-9])  # rows at z (and its copies) move, all others are apart
    a, b, c, e = z @ v + np.array([-g / 2, -g / 4, g / 4, g / 2])
    U = np.repeat(v[None], 4, axis=0)
    W = np.outer(rng.standard_normal(d), [1, -1, -1, 1]) / (b - a)
    return FeedForward(U, -np.array([a, b, c, e]), W, 1.0)


@pytest.mark.parametrize("seed", range(4))
def test_runs_of_point_moves_match_the_dense_pass(seed):
    rng = np.random.default_rng(seed)
    d = 5
    X = rng.standard_normal((400, d))
    blocks = []
    cur = X.copy()
    for i in range(150):  # > one screening run; later moves read rows earlier ones moved
        ff = _trapezoid(rng, d, cur[rng.integers(len(cur))], cur)
        cur = ff(cur)
        blocks.append(Block(ff, None, "move"))
        if i % 50 == 49:  # wide layers in between, each unit on at its top row only
            # (a row with one active unit has the same sum in any order, and later moves
            # amplify rounding ~1/gap, so the comparison stays bit-for-bit meaningful)
            U = rng.standard_normal((70, d))
            t = np.sort(U @ cur.T, axis=1)
            _, one = np.unique(np.argmax(U @ cur.T, axis=1), return_index=True)
            U, b = U[one], -(t[one, -1] + t[one, -2]) / 2
            blocks.append(Block(FeedForward(U, b, rng.standard_normal((d, len(U))) * 0.01,
                                            1.0), None))
            cur = blocks[-1].ff(cur)
    model = Transformer(blocks, d)
    fast = np.concatenate(model.run([X[:100], X[100:]]))
    ref = _dense(model, [X[:100], X[100:]])
    np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-12 * np.abs(ref).max())
    moved = np.abs(ref - X).max(axis=1) > 1e-6
    assert moved.sum() > 50  # the test moves points, so a skipped row would show


@pytest.mark.parametrize("threshold", [0.0, 0.8, 0.99])
def test_wide_layers_sum_only_their_active_units(threshold):
    # a wide layer reading few directions (compact mode) and a dense one (all distinct)
    rng = np.random.default_rng(5)
    X = rng.standard_normal((3000, 6))
    for U in (np.repeat(rng.standard_normal((20, 6)), 5, axis=0), rng.standard_normal((100, 6))):
        b = -threshold * np.abs(U @ X.T).max(axis=1) + rng.uniform(0, 1e-3, len(U))
        ff = FeedForward(U, b, rng.standard_normal((6, len(U))), 1.0)
        ref = ff(X)
        fast = X.copy()
        _apply_wide_ff(fast, ff, _Screen.of([ff]))
        still = ((X @ U.T + b) <= 0).all(axis=1)
        assert still.any() or threshold == 0.0
        np.testing.assert_array_equal(fast[still], X[still])  # inactive rows: untouched
        np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-13 * np.abs(ref).max())
        assert np.abs(fast - X).max() > 0.1


def test_a_row_that_becomes_active_inside_a_run_is_not_skipped():
    # FF 1 moves the token onto FF 2's ReLU; a screen made before FF 1 sees it inactive
    X = np.array([[0.0, 0.0], [5.0, 5.0]])
    ff1 = FeedForward(np.array([[1.0, 0.0]]), np.array([0.5]), np.array([[10.0], [0.0]]), 1.0)
    ff2 = FeedForward(np.array([[1.0, 0.0]]), np.array([-3.0]), np.array([[0.0], [1.0]]), 1.0)
    model = Transformer([Block(ff1, None), Block(ff2, None)], 2)
    out = model.run([X])[0]
    np.testing.assert_array_equal(out, _dense(model, [X]))
    assert out[0, 1] == 2.0


def test_eta_not_one_and_exact_models_take_the_reference_path():
    X = np.array([[1.0, 2.0], [-1.0, 0.5]])
    ff = FeedForward(np.array([[1.0, 1.0]]), np.array([-10.0]), np.array([[1.0], [1.0]]), 0.5)
    model = Transformer([Block(ff, None)], 2)
    np.testing.assert_array_equal(model.run([X])[0], 0.5 * X)  # all ReLUs off, η still applies


@pytest.mark.parametrize("compact", [False, True])
def test_compiled_models_fast_equals_dense(compact):
    rng = np.random.default_rng(3)
    ds = random_dataset(rng, N=30, n=(5, 12), d=4, m=(1, 3))
    model = ef.compile(ds, compact=compact, verify=False)
    fast = np.concatenate(model.run(ds.inputs))
    ref = _dense(model, ds.inputs)
    np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-11 * ds.scale)
    assert ef.verify(model, ds).passed


@pytest.mark.parametrize("seed", range(6))
def test_hardmax_margin_equals_the_full_search(seed):
    rng = np.random.default_rng(seed)
    B, n, d = 6, 20, 3
    v = rng.standard_normal((B, n, d))
    v[:, 1] = v[:, 0]  # copies: the argmax set and its twin are not rivals
    v[:, 2:12] = v[:, :1] + 1e-13  # near-copies just below the top: the slow path runs
    scores = rng.standard_normal((B, n, n))
    scores[:, :, :12] = 5.0 + rng.standard_normal((B, n, 1)) * 1e-3
    scores[:, :, 1] = scores[:, :, 0]
    scores[:, :, 2:12] -= rng.uniform(0, 1e-6, (B, n, 10))
    if seed % 2:  # ties between distinct tokens: margin 0
        scores[:, 3, 15] = scores[:, 3].max(axis=1)
    mask = scores == scores.max(axis=2, keepdims=True)
    fast = {}
    record_margins(fast, scores, mask, v, None)
    # the definition, with the whole (B, n, n, d) distance array
    target = (mask.astype(float) @ v) / mask.sum(axis=2, keepdims=True)
    distinct = np.abs(v[:, None] - target[:, :, None]).max(axis=3) > 1e-9 * np.abs(v).max()
    rival = np.where(distinct, scores, -np.inf).max(axis=2)
    want = np.min((scores.max(axis=2) - rival) / np.abs(scores).max(axis=2))
    assert fast["margin"] == want
    assert (want == 0) == bool(seed % 2)


def test_stats_and_trace_still_recorded():
    rng = np.random.default_rng(1)
    ds = random_dataset(rng, N=8, n=(3, 6), d=3)
    model = ef.compile(ds, verify=False)
    stats, trace = [], []
    out = model.run(ds.inputs, stats=stats, trace=trace)
    assert stats and all("margin" in s for s in stats)
    ffs = sum(b.ff is not None for b in model.blocks)
    sas = sum(b.sa is not None for b in model.blocks)
    assert len(trace) == 1 + ffs + sas
    np.testing.assert_array_equal(trace[-1][1], np.concatenate(out))

"""The float32 screen must find exactly the float64 answer: no token above a threshold lost."""

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from exactformer.screen import FLOAT32_FROM, pairs_above


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), d=st.integers(1, 20), T=st.integers(1, 600),
       K=st.integers(1, 40), x_exp=st.integers(-300, 290), c_exp=st.integers(-40, 40),
       nudge=st.sampled_from([0.0, 1e-16, -1e-16, 1e-9, -1e-9, -1e-11, -1e-7]))
@example(seed=0, d=3, T=5, K=19, x_exp=-283, c_exp=-40, nudge=0.0)
def test_pairs_above_equals_the_float64_comparison(seed, d, T, K, x_exp, c_exp, nudge):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((T, d)) * 10.0**x_exp
    C = rng.standard_normal((K, d)) * 10.0**c_exp
    with np.errstate(all="ignore"):
        t = X @ C.T
        # thresholds at (or a hair off) actual values: ties and near-ties are the hard cases
        thr = t[rng.integers(0, T, K), np.arange(K)] * (1 + nudge)
        # float64 decisions, up to the last-bit differences of BLAS kernels: relative, plus
        # the absolute rounding of products in the subnormal range (Higham §3.1 with
        # underflow; x_exp = -283, c_exp = -40: products ~1e-323 summed in another order)
        tol = 8 * d * (np.finfo(float).eps * np.abs(X) @ np.abs(C).T
                       + np.finfo(float).smallest_subnormal)
        surely = set(zip(*np.nonzero(t > thr + tol)))
        maybe = set(zip(*np.nonzero(t > thr - tol)))
        rows, cols, _ = pairs_above(X, C, thr)
    got = set(zip(rows.tolist(), cols.tolist()))
    assert surely <= got <= maybe


@pytest.mark.parametrize("seed", range(5))
def test_a_row_a_hair_above_its_threshold_is_found(seed):
    # only the top row of each direction is above, by 1e-9 relative: far below float32's
    # resolution, so without the slack the float32 pass would drop about half of them
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((3000, 16)) * 10.0 ** rng.integers(-100, 100)
    C = rng.standard_normal((4 * FLOAT32_FROM, 16))
    t = X @ C.T
    top = t.max(axis=0)
    thr = top - 1e-9 * np.abs(top)
    rows, cols, _ = pairs_above(X, C, thr)
    assert set(zip(rows.tolist(), cols.tolist())) == set(zip(*np.nonzero(t > thr)))
    assert len(rows) >= len(C)


@pytest.mark.parametrize("K", [3, 3 * FLOAT32_FROM])  # the float64 and float32 paths
def test_pairs_come_with_their_float64_products_and_respect_a_row_subset(K):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((5000, 16))
    C = rng.standard_normal((K, 16))
    thr = np.quantile(X @ C.T, 0.999, axis=0)
    subset = np.sort(rng.choice(5000, 2000, replace=False))
    rows, ks, t = pairs_above(X, C, thr, rows=subset)
    np.testing.assert_allclose(t, np.einsum("ij,ij->i", X[rows], C[ks]), rtol=0, atol=1e-13)
    assert np.all(t > thr[ks])
    want = set(zip(*np.nonzero(X[subset] @ C.T > thr)))
    assert set(zip(np.searchsorted(subset, rows).tolist(), ks.tolist())) == want
    assert 0 < len(rows) < 10 * K  # the screen is selective, not a pass-through


def test_infinite_thresholds():
    X = np.ones((10, 3))
    C = np.ones((FLOAT32_FROM, 3))
    thr = np.array([np.inf, -np.inf] + [10.0] * (FLOAT32_FROM - 2))
    rows, cols, _ = pairs_above(X, C, thr)
    assert set(cols.tolist()) == {1} and len(rows) == 10

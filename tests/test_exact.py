"""Exact mode's arithmetic (exactformer.rational) and its screened evaluation (docs/exact.md).

Every fast exact path is compared with plain ``Fraction`` arithmetic: the QMatrix
operations entry by entry, the screened exact forward pass with every layer's formula
applied to every token in Fractions.
"""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import random_dataset
from tests.test_forward_fast import _dense

import exactformer as ef
from exactformer import numeric as nm
from exactformer.compiler import state as compiler_state
from exactformer.errors import ResourceError
from exactformer.rational import QMatrix, exact_errors, segment_means

floats = st.floats(-1e6, 1e6, allow_nan=False).filter(lambda v: v == 0 or abs(v) > 1e-200)


def _fractions(a):
    return np.array([[Fraction(v) for v in row] for row in a], dtype=object)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5), st.integers(1, 4), st.integers(1, 3), st.data())
def test_qmatrix_operations_equal_fraction_arithmetic(r, c, w, data):
    A = np.array(data.draw(st.lists(floats, min_size=r * c, max_size=r * c))).reshape(r, c)
    B = np.array(data.draw(st.lists(floats, min_size=r * c, max_size=r * c))).reshape(r, c)
    M = np.array(data.draw(st.lists(floats, min_size=c * w, max_size=c * w))).reshape(c, w)
    v = np.array(data.draw(st.lists(floats, min_size=c, max_size=c)))
    s = Fraction(data.draw(st.integers(-9, 9)), data.draw(st.integers(1, 9)))
    FA, FB, FM, Fv = _fractions(A), _fractions(B), _fractions(M), _fractions([v])[0]
    QA, QB = QMatrix.of(A), QMatrix.of(FB)
    assert (QA.to_fractions() == FA).all()
    assert ((QA + QB).to_fractions() == FA + FB).all()
    assert ((QA - QB).to_fractions() == FA - FB).all()
    assert ((QA + Fv).to_fractions() == FA + Fv).all()
    assert ((s * QA).to_fractions() == s * FA).all()
    assert ((QA @ FM).to_fractions() == FA.dot(FM)).all()
    assert (nm.relu(QA).to_fractions() == np.where(FA > 0, FA, 0)).all()
    # the float image is each rational correctly rounded
    assert np.array_equal(QA.floats(), A)
    assert np.array_equal((QA @ FM).floats(), np.vectorize(float)(FA.dot(FM)))
    # equal rows have equal keys (reduced representation), different rows do not
    keys = (QA + QB).row_keys()
    for i in range(r):
        for k in range(r):
            assert (keys[i] == keys[k]) == bool(((FA + FB)[i] == (FA + FB)[k]).all())


def test_segment_means_are_exact():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((10, 3))
    segments = np.array([0, 3, 4, 10])
    got = segment_means(QMatrix.of(X), segments).to_fractions()
    FX = _fractions(X)
    for k in range(3):
        want = FX[segments[k]:segments[k + 1]].sum(axis=0) / (segments[k + 1] - segments[k])
        assert (got[k] == want).all()


@pytest.mark.parametrize("compact", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_screened_exact_pass_equals_the_dense_fraction_pass(compact, seed):
    # float models read exactly (every float is a rational) and exact-compiled models
    rng = np.random.default_rng(seed)
    ds = random_dataset(rng, N=12, n=(2, 9), d=3, m=(1, 3))
    for exact in (False, True):
        model = ef.compile(ds, compact=compact, exact=exact, verify=False).as_exact()
        xs = [nm.to_exact(x) for x in ds.inputs]
        ref = _dense(model, xs)
        fast = np.concatenate(model.run(ds.inputs))
        assert (fast == ref).all()


def test_a_wrong_exact_model_is_caught():
    rng = np.random.default_rng(4)
    ds = random_dataset(rng, N=6, n=(2, 6), d=3)
    model = ef.compile(ds, exact=True, verify=False)
    ff = model.blocks[-1].ff  # the last snap: shift its output by 2^-60
    ff.W = ff.W + Fraction(1, 2**60)
    report = ef.verify(model, ds)
    assert not report.passed and report.max_abs_error > 0


def test_exact_errors_is_zero_only_on_equality():
    y = np.array([[1.0, 2.0], [3.0, 4.0]])
    out = np.array([[1.0, 2.0], [3.0, 4.0], [3.0, 4.0], [1.0, 2.0 + 2**-40]])
    prefix, rest, near = exact_errors(_fractions(out), y)
    assert prefix.tolist() == [0, 0]
    assert rest[0] == 0 and near[0] == 1
    assert rest[1] == 2**-40 and near[1] == 0


def test_exact_compile_reports_short_numbers():
    rng = np.random.default_rng(2)
    ds = random_dataset(rng, N=20, n=(3, 8), d=4)
    model = ef.compile(ds, exact=True)
    assert model.report.max_abs_error == 0
    assert model.info["weight_bits"] == compiler_state.weight_bits(model)
    # the inputs' own bits (a float64 mantissa and exponent) bound the state from below
    assert model.info["state_bits"] >= 53
    biggest = max(abs(v.numerator).bit_length() for _, t in model.named_tensors()
                  for v in np.asarray(t).ravel())
    assert biggest <= model.info["weight_bits"]


def test_exact_compile_refuses_beyond_available_memory(monkeypatch):
    monkeypatch.setattr(compiler_state, "available_memory", lambda: 1000)
    rng = np.random.default_rng(0)
    ds = random_dataset(rng, N=5, n=(2, 4), d=3)
    with pytest.raises(ResourceError, match=r"GB .* available") as err:
        ef.compile(ds, exact=True)
    assert "\n" not in str(err.value) and "draws" not in str(err.value)  # not retried
    ef.compile(ds)  # float mode is not concerned


@settings(max_examples=200, deadline=None)
@given(st.fractions(-10**6, 10**6), st.fractions(Fraction(1, 10**9), 10**6))
def test_short_dyadics(lo, width):
    hi = lo + width
    x = nm.dyadic_in(lo, hi)
    assert lo < x < hi and (x.denominator & (x.denominator - 1)) == 0
    if lo > 0:
        up, down = nm.dyadic_above(lo), nm.dyadic_below(lo)
        assert lo <= up <= lo * (1 + Fraction(1, 64)) and lo / 2 < down <= lo
    a = nm.split_point(lo, hi, 1, 3, True)
    b = nm.split_point(lo, hi, 2, 3, True)
    assert lo < a < b < hi


@pytest.mark.parametrize("directions", [1, 3])
def test_wide_layers_summed_by_direction_equal_the_formula(directions):
    # thresholds with ties and tokens exactly on a threshold: the prefix sums must count
    # exactly the units with threshold < t, as relu does
    rng = np.random.default_rng(directions)
    d, width = 3, 40
    cols = rng.integers(-4, 5, size=(directions, d))
    U = np.array([[Fraction(int(v)) for v in cols[k % directions]] for k in range(width)],
                 dtype=object)
    theta = [Fraction(int(rng.integers(-6, 6)), 4) for _ in range(width)]
    b = np.array([-t for t in theta], dtype=object)
    W = _fractions(rng.standard_normal((d, width)))
    X = _fractions(rng.integers(-3, 4, size=(50, d)) / 2)
    from exactformer.model import FeedForward
    from exactformer.rational import units_by_direction

    ff = FeedForward(U, b, W, Fraction(1))
    got = ff(QMatrix.of(X)).to_fractions()
    want = X + np.where(X.dot(U.T) + b > 0, X.dot(U.T) + b, 0).dot(W.T)
    assert units_by_direction(QMatrix.of(X), U, b, W) is not None  # the path is taken
    assert (got == want).all()


def test_wide_layer_of_many_directions_equals_the_dense_fraction_pass():
    # > 128 distinct directions: the compact move layer is evaluated per (row, direction)
    # pair from the screen, in the compiler and in the evaluator
    rng = np.random.default_rng(7)
    ds = random_dataset(rng, N=135, n=(2, 3), d=3, m=(1, 1))
    model = ef.compile(ds, compact=True, exact=True)
    assert model.report.max_abs_error == 0
    assert max(len({tuple(r) for r in b.ff.U.tolist()}) for b in model.blocks if b.ff) > 128
    ref = _dense(model, [nm.to_exact(x) for x in ds.inputs])
    assert (np.concatenate(model.run(ds.inputs)) == ref).all()

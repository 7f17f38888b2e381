"""The layer builders on their own (docs/design.md §4), in float and exact arithmetic."""

from fractions import Fraction

import numpy as np
import pytest

from exactformer import numeric as nm
from exactformer.craft import (
    broadcast,
    collapse_layer,
    feed_forward,
    line_projection,
    point_move,
    snap,
    translate,
)


def test_translate_and_broadcast(rng):
    X = rng.standard_normal((5, 3))
    s = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(translate(s)(X), X + s)
    V = rng.uniform(size=(3, 3))
    seg = np.array([0, 2, 5])
    out = broadcast(V)(X, seg)
    for a, b in ((0, 2), (2, 5)):
        np.testing.assert_allclose(out[a:b], X[a:b] + V @ X[a:b].mean(0))


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("top", [False, True])
def test_point_move_moves_one_point_only(exact, top):
    X = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 1.0], [1.0, 0.0], [3.0, 0.0]])
    if top:
        X = X[:4]
    v = np.array([1.0, 0.0])
    delta = np.array([5.0, -7.0])
    gap = 1.0
    if exact:
        X, v, delta = nm.to_exact(X), nm.to_exact(v), nm.to_exact(delta)
        gap = Fraction(1)
    # the point (1, 0) sits at t = 1; neighbours at t = 0 and t = 2 (and 3)
    if top:  # make (1,0) the top along v by dropping every point above
        X = X[[0, 1, 3]]
    ff = feed_forward([point_move(v, X[1] @ v, gap, delta, top)])
    out = ff(X)
    moved = [i for i in range(len(X)) if (X[i] == X[1]).all()]
    for i in range(len(X)):
        if i in moved:
            want = X[i] + delta
            if exact:
                assert (out[i] == want).all()
            else:
                np.testing.assert_allclose(out[i], want, atol=1e-14)
        else:
            if exact or X[i] @ v < X[1] @ v:
                assert (out[i] == X[i]).all()  # below the trapezoid: bit-for-bit unchanged
            else:
                np.testing.assert_allclose(out[i], X[i], atol=1e-14)


def test_collapse_sends_tokens_to_their_argmax():
    A = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    leader = np.array([5.0, 5.0, 1.0])
    X = np.array([[1.0, 0.5, 0.0], leader, [0.3, 1.0, 2.0]])
    out = collapse_layer(A)(X, np.array([0, 3]))
    for row in out:
        np.testing.assert_array_equal(row, leader)


@pytest.mark.parametrize("exact", [False, True])
def test_snap_is_one_sided_and_exact_on_the_half_line(exact):
    w = np.array([0.6, 0.8])
    y = np.array([-1.0, 2.0])
    if exact:
        w, y = nm.to_exact(w), nm.to_exact(y)
    one = nm.like(1, exact)
    units = snap(w, one * 3, [(one * 6, one * 7, y)], exact)
    ff = feed_forward([units])
    w2 = w @ w
    for s in (6, 6.5, 7, 50):
        s = nm.like(s, exact)
        x = (s * w / w2).reshape(1, 2)
        out = ff(x)[0]
        if exact:
            assert (out == y).all()
        else:
            np.testing.assert_allclose(out, y, atol=1e-13)
    low = (nm.like(2, exact) * w / w2).reshape(1, 2)  # below the floor: untouched
    assert (ff(low) == low).all()


def test_compact_snap_hits_every_cluster():
    w = np.array([1.0, 0.0, 0.0])
    ys = [np.array([0.0, 1.0, 2.0]), np.array([3.0, -1.0, 0.5]), np.array([-2.0, 0.0, 1.0])]
    clusters = [(10.0, 10.1, ys[0]), (12.0, 12.0, ys[1]), (15.0, 15.5, ys[2])]
    ff = feed_forward([snap(w, 5.0, clusters, exact=False)])
    for lo, hi, y in clusters:
        for s in (lo, (lo + hi) / 2, hi):
            np.testing.assert_allclose(ff(np.array([[s, 0.0, 0.0]]))[0], y, atol=1e-13)


def test_line_projection():
    v, w = np.array([1.0, 2.0]), np.array([0.0, 1.0])
    ff = line_projection(v, 0.5, 3.0, w)
    X = np.array([[1.0, 1.0], [2.0, 0.0]])
    np.testing.assert_allclose(ff(X), [[0.0, 4.5], [0.0, 4.0]])

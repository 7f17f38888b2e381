"""Layer builders of the construction (docs/design.md §4), float64 or exact rationals alike.

All inputs are arrays of one number system (float64 or Fraction objects, see
:mod:`exactformer.numeric`); the builders never normalise vectors themselves, so they
stay exact when handed rationals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import numeric as nm
from ..model import FeedForward, SelfAttention


@dataclass
class Units:
    """A bundle of ReLU units ``W·relu(U·x + b)`` (U: k×d, b: k, W: d×k) without the skip term.

    Compact mode stacks many bundles into one wide feed-forward layer (``feed_forward``).
    """

    U: np.ndarray
    b: np.ndarray
    W: np.ndarray

    @property
    def width(self) -> int:
        return int(self.U.shape[0])


def feed_forward(units: list[Units], eta=1) -> FeedForward:
    """One feed-forward layer ``η·x + Σ units`` from bundles that all read the same input."""
    exact = nm.is_exact(units[0].U)
    return FeedForward(
        np.concatenate([u.U for u in units], axis=0),
        np.concatenate([u.b for u in units]),
        np.concatenate([u.W for u in units], axis=1),
        nm.like(eta, exact),
    )


def translate(shift: np.ndarray) -> FeedForward:
    """``x ↦ x + shift`` for every token: one unit that is always 1 (U = 0, b = 1, W = shift)."""
    exact = nm.is_exact(shift)
    d = len(shift)
    return FeedForward(nm.zeros((1, d), exact), nm.asarray([1], exact), shift.reshape(d, 1),
                       nm.like(1, exact))


def broadcast(V: np.ndarray) -> SelfAttention:
    """Uniform attention with value map V: each token of sequence j moves by V·mean(X^j).

    docs/design.md §4 step 1. Q = K of rank 0 makes every score exactly 0, hence uniform weights in
    hardmax *and* softmax, so this layer is exact in both modes.
    """
    exact = nm.is_exact(V)
    d = V.shape[0]
    return SelfAttention(nm.zeros((0, d), exact), nm.zeros((0, d), exact), V=V,
                         rho=nm.like(1, exact))


def point_move(v: np.ndarray, center, gap, delta: np.ndarray, top: bool = False) -> Units:
    """Units moving every token with ``⟨v,x⟩`` within ``gap/4`` of ``center`` by ``delta``.

    docs/design.md §4 "moving one point": a trapezoid ``φ`` of the line coordinate ``t = ⟨v,x⟩``
    with corners ``center + (-g/2, -g/4, g/4, g/2)``: 1 on the plateau, exactly 0 for
    ``t ≤ center - g/2`` and (up to rounding) 0 above ``center + g/2``. When the point is the
    top along ``v`` (``top=True``) the two upper ReLUs are dropped: then nothing above exists
    and the layer is one-sided, exact even under rounding.
    """
    exact = nm.is_exact(v)
    g = gap
    offsets = [-g / 2, -g / 4] if top else [-g / 2, -g / 4, g / 4, g / 2]
    signs = [1, -1] if top else [1, -1, -1, 1]
    k = len(offsets)
    U = np.stack([v] * k)
    b = nm.asarray([0] * k, exact)
    for i, off in enumerate(offsets):
        b[i] = -(center + off)
    ramp = g / 4  # b - a: the rise of the trapezoid
    W = np.stack([delta * (s / ramp) for s in signs], axis=1)
    return Units(U, b, W)


def collapse_layer(A: np.ndarray, Vo: np.ndarray | None = None,
                   Vi: np.ndarray | None = None) -> SelfAttention:
    """The collapse (docs/design.md §4 step 3): ``ρ = 0``, ``Q = K = A`` (rank 2), ``V = I``.

    Every token is replaced by the mean of its argmax set, i.e. by its destination. Pass
    ``Vo, Vi`` to fold a projection into the value map (``V = Vo·Vi``).
    """
    exact = nm.is_exact(A)
    d = A.shape[1]
    if Vo is None:
        V = np.eye(d, dtype=np.float64)
        V = nm.to_exact(V) if exact else V
        return SelfAttention(A.copy(), A.copy(), V=V, rho=nm.like(0, exact))
    return SelfAttention(A.copy(), A.copy(), Vo=Vo, Vi=Vi, rho=nm.like(0, exact))


def line_projection(v: np.ndarray, alpha, beta, w: np.ndarray) -> FeedForward:
    """``x ↦ relu(α⟨v,x⟩ + β)·w`` (η = 0, width 1): every token onto the line spanned by w.

    docs/design.md §4 step 4; α, β must keep ``α⟨v,x⟩ + β > 0`` on every token.
    """
    exact = nm.is_exact(v)
    d = len(v)
    return FeedForward((alpha * v).reshape(1, d), nm.asarray([0], exact) + beta,
                       w.reshape(d, 1), nm.like(0, exact))


def snap(w: np.ndarray, floor, clusters: list[tuple], exact: bool) -> Units:
    """One-sided snap of line points ``x = s·w/|w|²`` (``s = ⟨w,x⟩``) onto their targets.

    ``clusters`` is a list of ``(low, high, y)`` in increasing order of s: every line point
    with s in ``[low, high]`` must end on ``y``; ``floor`` is the highest s of anything that
    must stay untouched (lower clusters, finished targets). docs/design.md §4 step 4: two ReLUs at
    the thirds of the gap above ``floor`` map the whole half-line above the second one onto
    the first cluster's target; between consecutive clusters a ramp of two ReLUs adds the
    jump ``y_{k+1} - y_k`` (compact mode). With one cluster this is the strict snap.
    Everything with ``s ≤ floor`` has all ReLUs exactly 0.
    """
    w2 = w @ w
    unit = w / w2
    low0 = clusters[0][0]
    b1 = nm.split_point(floor, low0, 1, 3, exact)  # exact mode: short dyadics near the thirds
    b2 = nm.split_point(floor, low0, 2, 3, exact)
    y0 = clusters[0][2]
    c1 = (y0 - b2 * unit) / (b2 - b1)
    c2 = -unit - c1
    thresholds, coefs = [b1, b2], [c1, c2]
    for (_, high, y_lo), (low, _, y_hi) in zip(clusters[:-1], clusters[1:]):
        a = nm.split_point(high, low, 1, 3, exact)
        e = nm.split_point(high, low, 2, 3, exact)
        jump = (y_hi - y_lo) / (e - a)
        thresholds += [a, e]
        coefs += [jump, -jump]
    k = len(thresholds)
    U = np.stack([w] * k)
    b = nm.zeros(k, exact)
    for i, t in enumerate(thresholds):
        b[i] = -t
    return Units(U, b, np.stack(coefs, axis=1))

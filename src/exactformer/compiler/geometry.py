"""Geometric helpers of the passes: close pairs, trapezoid gaps, generic draws (DESIGN.md §4)."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from .. import numeric as nm


def close_pairs(points: np.ndarray, delta: float, rng: np.random.Generator) -> np.ndarray:
    """All pairs ``(i, j)``, i < j, of rows closer than ``delta`` (Euclidean), as a (k, 2) array.

    Sort along a random direction and compare only neighbours within ``delta`` there:
    near-linear for well-spread points instead of the quadratic all-pairs check.
    """
    n = len(points)
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    r = rng.standard_normal(points.shape[1])
    r /= np.linalg.norm(r)
    t = points @ r
    order = np.argsort(t, kind="stable")
    ts = t[order]
    reach = np.searchsorted(ts, ts + delta, side="right") - np.arange(n) - 1
    first = np.repeat(np.arange(n), reach)
    second = first + 1 + (np.arange(len(first)) - np.repeat(np.cumsum(reach) - reach, reach))
    i, j = order[first], order[second]
    near = np.linalg.norm(points[i] - points[j], axis=1) < delta
    pairs = np.stack([np.minimum(i, j), np.maximum(i, j)], axis=1)[near]
    return pairs


def exact_duplicates(points: np.ndarray) -> np.ndarray:
    """Pairs ``(i, j)``, i < j, of exactly equal rows (exact mode: distinct means unequal)."""
    seen: dict = {}
    pairs = []
    for i, row in enumerate(map(tuple, points)):
        if row in seen:
            pairs.append((seen[row], i))
        else:
            seen[row] = i
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def representatives(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unique ids, index of the first token carrying each)."""
    uniq, first = np.unique(ids, return_index=True)
    return uniq, first


@dataclass
class Trapezoid:
    """Where a point sits along a direction: its centre, the free gap around it, top or not."""

    v: np.ndarray  # direction (float64 or Fractions)
    center: object
    gap: object
    top: bool


def find_trapezoid(X: np.ndarray, mine: np.ndarray, v: np.ndarray,
                   min_ratio: float = 1e-6) -> Trapezoid | None:
    """Gap around the tokens ``mine`` (indices of one point's copies) along ``v``.

    Returns None when the gap is tiny against the spread of all tokens along v, or when the
    copies are not much closer to each other than to everything else (then another
    direction is needed). Exact mode computes everything in rationals (a proof).
    """
    t = X @ v
    tm = t[mine]
    lo, hi = tm.min(), tm.max()
    below = t[t < lo]
    above = t[t > hi]
    if len(below) + len(above) + len(tm) < len(t):  # another point inside the copies' range
        return None
    if len(below) + len(above) == 0:
        span = abs(hi) if hi != 0 else 1
        return Trapezoid(v, (lo + hi) / 2, span, True)
    gaps = []
    if len(below):
        gaps.append(lo - below.max())
    if len(above):
        gaps.append(above.min() - hi)
    g = min(gaps)
    spread = float(max(above.max() if len(above) else hi, hi) - min(below.min() if len(below)
                                                                    else lo, lo))
    if nm.is_exact(t):  # any positive gap is a proof in rationals
        return Trapezoid(v, (lo + hi) / 2, g, len(above) == 0) if g > 0 else None
    if float(g) < min_ratio * spread or float(hi - lo) * 20 > float(g):
        return None
    return Trapezoid(v, (lo + hi) / 2, g, len(above) == 0)


def choose_trapezoid(X: np.ndarray, mine: np.ndarray, rng: np.random.Generator,
                     reference: np.ndarray | None = None, tries: int = 32) -> Trapezoid:
    """A direction along which the point ``X[mine]`` is well isolated (DESIGN.md §4).

    First ``z - reference`` (``reference``: a mean of the tokens; puts z near the top), then
    random directions; in exact mode the direction is a simple rational close to the float
    one, so weights stay small.
    """
    exact = nm.is_exact(X)
    z = nm.to_float(X[mine]).mean(axis=0)
    if reference is None:
        reference = nm.to_float(X).mean(axis=0)
    for attempt in range(tries):
        v = z - reference if attempt == 0 else rng.standard_normal(X.shape[1])
        nv = np.linalg.norm(v)
        if not np.isfinite(nv) or nv == 0:
            continue
        v = v / nv
        if exact:
            v = np.array([Fraction(float(c)).limit_denominator(1 << 10) for c in v], dtype=object)
        trap = find_trapezoid(X, mine, v)
        if trap is not None:
            return trap
    from ..errors import CompileError

    raise CompileError("could not isolate a point along any of "
                       f"{tries} directions (points too close?)")


def generic_positive(rng: np.random.Generator, d: int, exact: bool, low=0.5, high=1.5):
    """A generic vector with entries in [low, high] (small-denominator rationals in exact mode)."""
    if exact:
        ks = rng.integers(int(low * 64), int(high * 64) + 1, size=d)
        return np.array([Fraction(int(k), 64) for k in ks], dtype=object)
    return rng.uniform(low, high, size=d)


def generic_unit(rng: np.random.Generator, d: int, exact: bool) -> np.ndarray:
    """A generic direction: unit float vector, or small nonzero rationals in exact mode."""
    if exact:
        k = rng.integers(1, 9, size=d) * rng.choice([-1, 1], size=d)
        return np.array([Fraction(int(v), 8) for v in k], dtype=object)
    v = rng.standard_normal(d)
    return v / np.linalg.norm(v)


def least_norm_point(A: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """``Aᵀ(AAᵀ)⁻¹π``: the smallest point of R^d with ``A·x = π`` (A is 2×d)."""
    G = A @ A.T
    a, b, c, d = G[0, 0], G[0, 1], G[1, 0], G[1, 1]
    det = a * d - b * c
    sol = np.array([(d * pi[0] - b * pi[1]) / det, (a * pi[1] - c * pi[0]) / det],
                   dtype=A.dtype)
    return A.T @ sol


def scalar_clusters(values: np.ndarray, tol: float) -> np.ndarray:
    """Cluster ids of 1-D floats: consecutive sorted values closer than ``tol`` share one."""
    order = np.argsort(values, kind="stable")
    breaks = np.concatenate([[0], (np.diff(values[order]) > tol).astype(np.int64)])
    ids = np.empty(len(values), dtype=np.int64)
    ids[order] = np.cumsum(breaks)
    return ids

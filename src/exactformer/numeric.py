"""Two number systems behind one set of array helpers (docs/design.md §3, docs/exact.md).

Float mode uses float64 arrays. Exact mode uses two forms of the same rationals: the
model's weights are numpy object arrays of :class:`fractions.Fraction` (small, kept as
written), the token states are :class:`~exactformer.rational.QMatrix` (integers over one
denominator per row, integer speed). numpy's ``+ - * @`` work on both, so the layer code
is written once; only the operations that differ (division by a count, ReLU, conversion,
square roots) live here.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from .rational import QMatrix

ZERO = Fraction(0)
ONE = Fraction(1)


def is_exact(a) -> bool:
    return isinstance(a, QMatrix) or np.asarray(a).dtype == object


def to_exact(a) -> np.ndarray:
    """Exact rational copy of a float (or already rational) array: every float64 is a rational."""
    if isinstance(a, QMatrix):
        return a.to_fractions()
    a = np.asarray(a)
    if a.dtype == object:
        return np.vectorize(Fraction, otypes=[object])(a) if a.size else a.copy()
    flat = [Fraction(float(v)) for v in a.ravel()]
    return np.array(flat, dtype=object).reshape(a.shape)


def exact_rows(a) -> QMatrix:
    """The token-state form of exact mode: a 2-D array of numbers as a :class:`QMatrix`."""
    return QMatrix.of(a)


def to_float(a) -> np.ndarray:
    """float64 copy (rounding each rational to the nearest float)."""
    if isinstance(a, QMatrix):
        return a.floats().copy()
    a = np.asarray(a)
    if a.dtype == object:
        return np.array([float(v) for v in a.ravel()], dtype=np.float64).reshape(a.shape)
    return a.astype(np.float64, copy=True)


def like(value, exact: bool):
    """A scalar in the requested number system (Fraction(value) or float(value))."""
    return Fraction(value) if exact else float(value)


def zeros(shape, exact: bool) -> np.ndarray:
    if exact:
        out = np.empty(shape, dtype=object)
        out.fill(ZERO)
        return out
    return np.zeros(shape, dtype=np.float64)


def asarray(values, exact: bool) -> np.ndarray:
    """Array of the requested system from nested lists of numbers (floats, ints or Fractions)."""
    a = np.array(values, dtype=object if exact else np.float64)
    if exact:
        return to_exact(a)
    return a


def relu(a):
    if isinstance(a, QMatrix):
        return a.relu()
    if a.dtype == object:
        return np.where(a > 0, a, ZERO)
    return np.maximum(a, 0.0)


def reciprocal_counts(counts: np.ndarray, exact: bool) -> np.ndarray:
    """1/count elementwise, as Fractions in exact mode (so uniform averages stay exact)."""
    counts = np.asarray(counts)
    if exact:
        return np.array([Fraction(1, int(c)) for c in counts.ravel()], dtype=object).reshape(
            counts.shape
        )
    return 1.0 / counts.astype(np.float64)


def segment_means(X, segments: np.ndarray):
    """Mean row of every sequence (``segments``: start offsets, then the end), exactly."""
    if isinstance(X, QMatrix):
        from .rational import segment_means as exact_means

        return exact_means(X, segments)
    counts = np.diff(segments)
    sums = np.add.reduceat(X, segments[:-1], axis=0) if len(X) else X
    return sums * reciprocal_counts(counts, is_exact(X))[:, None]


def repeat_rows(X, counts):
    if isinstance(X, QMatrix):
        return X.repeat(counts)
    return np.repeat(X, counts, axis=0)


def concatenate(arrays: list):
    if arrays and isinstance(arrays[0], QMatrix):
        from .rational import concatenate as exact_concatenate

        return exact_concatenate(arrays)
    return np.concatenate(arrays)


def norm(v: np.ndarray) -> float:
    """Euclidean norm as a float (for checks and scales, never inside exact weights)."""
    return float(np.sqrt(float(np.sum(to_float(v) ** 2))))


def max_abs(a) -> float:
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(to_float(a))))


# -- short numbers for exact mode (docs/exact.md "keeping the numbers small") -------------
def dyadic_in(lo, hi) -> Fraction:
    """The rational ``m / 2^k`` with the smallest k strictly inside ``(lo, hi)`` (lo < hi)."""
    lo, hi = Fraction(lo), Fraction(hi)
    if not lo < hi:
        raise ValueError(f"empty interval ({lo}, {hi})")
    k = -((hi - lo).numerator.bit_length() - (hi - lo).denominator.bit_length()) - 2
    while True:
        step = Fraction(1, 1 << k) if k >= 0 else Fraction(1 << -k)
        m = (lo // step) + 1
        if m * step < hi:
            return m * step
        k += 1


def _dyadic_step(x, bits: int, name: str) -> tuple[Fraction, Fraction]:
    """``(x, 2^e)`` with 2^e the last of ``bits`` significant bits of x > 0."""
    x = Fraction(x)
    if x <= 0:
        raise ValueError(f"{name} needs x > 0")
    e = x.numerator.bit_length() - x.denominator.bit_length() - bits
    return x, (Fraction(1 << e) if e >= 0 else Fraction(1, 1 << -e))


def dyadic_above(x, bits: int = 8) -> Fraction:
    """A dyadic rational ≥ x (> 0) with at most ``bits`` significant bits, within 2^(1-bits)·x."""
    x, step = _dyadic_step(x, bits, "dyadic_above")
    return -((-x) // step) * step


def dyadic_below(x, bits: int = 8) -> Fraction:
    """A dyadic rational in ``(x/2, x]`` (x > 0) with at most ``bits`` significant bits."""
    x, step = _dyadic_step(x, bits, "dyadic_below")
    return (x // step) * step


def split_point(lo, hi, k: int, n: int, exact: bool):
    """The k-th of the n − 1 points that cut ``(lo, hi)`` into n parts (thresholds).

    Float mode: ``lo + k·(hi − lo)/n``. Exact mode: the shortest dyadic within a sixth of a
    part of that point, so thresholds carry few bits and stay strictly ordered inside.
    """
    if not exact:
        return lo + (hi - lo) / n if k == 1 else lo + k * (hi - lo) / n
    part = (Fraction(hi) - Fraction(lo)) / n
    at = Fraction(lo) + k * part
    return dyadic_in(at - part / 2, at + part / 2)


def row(X, i: int) -> np.ndarray:
    """Row i as a 1-D array (Fractions in exact mode)."""
    return X.row(i) if isinstance(X, QMatrix) else X[i]

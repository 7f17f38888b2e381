"""Two number systems behind one set of array helpers (docs/design.md §3).

Float mode uses float64 arrays. Exact mode uses numpy object arrays of
:class:`fractions.Fraction`; numpy's ``+ - * @`` work on them unchanged, so the layer
code is written once. Only the operations that differ (division by a count, ReLU,
conversion, square roots) live here.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

ZERO = Fraction(0)
ONE = Fraction(1)


def is_exact(a: np.ndarray) -> bool:
    return a.dtype == object


def to_exact(a) -> np.ndarray:
    """Exact rational copy of a float (or already rational) array: every float64 is a rational."""
    a = np.asarray(a)
    if a.dtype == object:
        return np.vectorize(Fraction, otypes=[object])(a) if a.size else a.copy()
    flat = [Fraction(float(v)) for v in a.ravel()]
    return np.array(flat, dtype=object).reshape(a.shape)


def to_float(a) -> np.ndarray:
    """float64 copy (rounding each rational to the nearest float)."""
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


def relu(a: np.ndarray) -> np.ndarray:
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


def norm(v: np.ndarray) -> float:
    """Euclidean norm as a float (for checks and scales, never inside exact weights)."""
    return float(np.sqrt(float(np.sum(to_float(v) ** 2))))


def max_abs(a: np.ndarray) -> float:
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(to_float(a))))

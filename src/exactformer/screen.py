"""Which tokens lie above some of many hyperplanes: the screen behind the fast paths.

Point moves and their verification ask, for thousands of directions c_k and thresholds θ_k,
which tokens have ``⟨c_k, x⟩ > θ_k``. On the construction's layers the answer is a handful
of tokens per direction, but finding it reads every (token, direction) pair once: 10⁸ pairs
at 10⁵ tokens, 10¹⁰ at 10⁶. This module does that pass in float32 (twice the BLAS speed,
half the memory traffic) with a slack that provably covers float32 rounding, then
recomputes the few surviving tokens in float64. So the answer is exactly the float64 one
(no token is lost) and costs about one float32 product.
"""

from __future__ import annotations

import numpy as np

_U32 = float(np.finfo(np.float32).eps) / 2  # unit roundoff of float32
CHUNK_ENTRIES = 1 << 19  # tokens × directions per float32 block (2 MB)
CHUNK_ROWS = (64, 8192)
FLOAT32_FROM = 8  # directions: below this many the float64 product alone is as fast


def chunk_rows(columns: int) -> int:
    """Tokens per block for ``columns`` directions (BLAS is efficient in this range)."""
    return int(np.clip(CHUNK_ENTRIES // max(columns, 1), *CHUNK_ROWS))


def _exponent(x: float) -> int:
    """e with x·2^e near 1 (power-of-two scaling is exact: float32 keeps the range)."""
    if not (x > 0 and np.isfinite(x)):
        return 0
    return int(-np.round(np.log2(x)))


def rows_above(X: np.ndarray, cols: np.ndarray, thr: np.ndarray, rows=None):
    """Yield ``(rows, t)`` per block of X: the rows with ``X[r]·cols[k] > thr[k]`` for some k.

    ``t = X[rows] @ cols.T`` in float64 for the rows that float32 could not rule out (the
    callers decide on this t, so every decision is a float64 one; BLAS may round a product
    of other shape differently in the last bit). ``rows``: screen only these rows of X.
    Block and directions are scaled by powers of two (exact) to norms near 1; a row is then
    ruled out only if ``t32 ≤ θ − slack`` for every k, ``slack = 2(d+2)·u₃₂·|x|₂·|c|₂`` plus
    an absolute term for float32 underflow: twice the bound on the float32 error of ``⟨c,x⟩``
    (Higham, *Accuracy and Stability*, §3.1; the casts to float32 count as 2 more terms).
    """
    idx = np.arange(len(X)) if rows is None else np.asarray(rows)
    if len(idx) == 0 or len(cols) == 0:
        return
    d = X.shape[1]
    step = chunk_rows(len(cols))
    if len(cols) < FLOAT32_FROM:  # a few directions: the float64 product is as cheap
        for s in range(0, len(idx), step):
            r = idx[s:s + step] if rows is not None else slice(s, s + step)
            t = X[r] @ cols.T
            keep = np.flatnonzero((t > thr).any(axis=1))
            yield (idx[s:s + step][keep] if rows is not None else keep + s), t[keep]
        return
    cmax = float(np.abs(cols).max())
    ec = _exponent(cmax)
    cols_s = np.ldexp(cols, ec)
    cnorm = np.linalg.norm(cols_s, axis=1)
    cols32 = np.ascontiguousarray(cols_s.T, dtype=np.float32)
    kappa = 2 * (d + 2) * _U32
    tiny = 1e-36 * (d + 2)  # float32 underflow: far above its absolute errors (~1e-45 each)
    x32 = np.empty((step, d), dtype=np.float32)
    for s in range(0, len(idx), step):
        r = idx[s:s + step]
        x = X[r] if rows is not None else X[s:s + step]
        xmax = max(float(x.max()), -float(x.min()))
        if not np.isfinite(xmax * cmax * d) or xmax * cmax * d > 1e300:
            t = x @ cols.T  # products near overflow: float64 alone decides
            keep = np.flatnonzero(~(t <= thr).all(axis=1))
            yield r[keep], t[keep]
            continue
        ex = _exponent(xmax)
        xb = x32[:len(x)]
        np.multiply(x, 2.0 ** ex, out=xb, casting="unsafe")  # exact scaling, then the cast
        slack = kappa * (np.sqrt(d) * xmax * 2.0 ** ex) * cnorm + tiny  # |x|₂ ≤ √d·max|x_i|
        th = np.ldexp(thr, ex + ec)
        with np.errstate(over="ignore", invalid="ignore"):
            t32 = xb @ cols32
            # the float32 casts of the threshold round too: 2u₃₂ of it more (the sign of a
            # float32 difference is exact; an infinite threshold needs no margin)
            t32 -= (th - slack).astype(np.float32)
            t32 += np.where(np.isfinite(th), (np.abs(th) + slack) * (2 * _U32) + tiny,
                            0.0).astype(np.float32)
            keep = np.flatnonzero(t32.max(axis=1) > 0)
        if len(keep):
            t = x[keep] @ cols.T
            hit = (t > thr).any(axis=1)
            yield r[keep[hit]], t[hit]


def pairs_above(X: np.ndarray, cols: np.ndarray, thr: np.ndarray):
    """All (row, k) with ``X[row]·cols[k] > thr[k]`` in float64, as two index arrays."""
    rows, ks = [], []
    for r, t in rows_above(X, cols, thr):
        i, k = np.nonzero(t > thr)
        rows.append(r[i])
        ks.append(k)
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(rows), np.concatenate(ks)

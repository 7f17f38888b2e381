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
CHUNK_ENTRIES = 1 << 20  # tokens × directions per float32 block (4 MB)
# The products run on one BLAS thread: on a loaded machine OpenBLAS's threads slow this
# memory-bound screen down.
CHUNK_ROWS = (64, 8192)
FLOAT32_FROM = 8  # directions: below this many the float64 product alone is as fast
COLUMN_BLOCK = 1024  # directions per float32 product


def chunk_rows(columns: int) -> int:
    """Tokens per block for ``columns`` directions (BLAS is efficient in this range)."""
    return int(np.clip(CHUNK_ENTRIES // max(columns, 1), *CHUNK_ROWS))


def _exponent(x: float) -> int:
    """e with x·2^e near 1 (power-of-two scaling is exact: float32 keeps the range)."""
    if not (x > 0 and np.isfinite(x)):
        return 0
    return int(-np.round(np.log2(x)))


def chunks_above(X: np.ndarray, cols: np.ndarray, thr: np.ndarray, rows=None):
    """Yield ``(r, k, t)`` per block of X: every pair with ``t = X[r]·cols[k] > thr[k]``.

    ``t`` is the float64 dot product of the pair (the callers decide on it, so every
    decision is a float64 one; another kernel may round it differently in the last bit).
    ``rows``: screen only these rows of X. Only the pairs float32 could not rule out are
    computed in float64, so a direction above half of the tokens costs only its own pairs.

    The float32 pass computes ``s = ⟨x, c⟩ − L`` with ``L = θ − slack`` as one product
    (x extended by 1, c by −L), after exact power-of-two scaling of X and the directions to
    entries near 1. A true hit has ``⟨x,c⟩ − L > slack``; the float32 error of s (d + 1
    products, casts included) is at most ``(d+4)·u₃₂·(|x|₂|c|₂ + |L|)`` (Higham, *Accuracy
    and Stability*, §3.1), so ``slack = 4(d+4)·u₃₂·(|x|₂|c|₂ + |θ|)`` plus an absolute term
    for float32 underflow keeps every true hit at s > 0, with |x|₂ ≤ √d·max|x_i| over X.
    """
    idx = np.arange(len(X)) if rows is None else np.asarray(rows)
    if len(idx) == 0 or len(cols) == 0:
        return
    with _one_blas_thread():
        yield from _chunks_above(X, cols, thr, idx, rows is not None)


_blas = {}


def _one_blas_thread():
    """A context with BLAS on one thread. The controller is made once: building one scans
    the process's loaded libraries (/proc/self/maps), which cost more than a small screen."""
    if "controller" not in _blas:
        from threadpoolctl import ThreadpoolController  # here: keeps CLI start-up short

        _blas["controller"] = ThreadpoolController()
    return _blas["controller"].limit(limits=1, user_api="blas")


def _chunks_above(X, cols, thr, idx, subset: bool):
    d = X.shape[1]
    K = len(cols)
    block = min(K, COLUMN_BLOCK)
    step = chunk_rows(block)
    xmax = float(np.max(np.abs(X[idx] if subset else X)))
    cmax = float(np.abs(cols).max())
    if K < FLOAT32_FROM or not np.isfinite(xmax * cmax * d) or xmax * cmax * d > 1e300:
        for s in range(0, len(idx), step):  # few directions, or products near overflow:
            x = X[idx[s:s + step]] if subset else X[s:s + step]  # the float64 product alone
            t = x @ cols.T
            i, k = np.nonzero(t > thr)
            yield idx[s + i] if subset else s + i, k, t[i, k]
        return
    ex, ec = _exponent(xmax), _exponent(cmax)
    cols_s = np.ldexp(cols, ec)
    th = np.ldexp(thr, ex + ec)
    xnorm = np.sqrt(d) * np.ldexp(xmax, ex)
    tiny = 1e-36 * (d + 2)  # float32 underflow: far above its absolute errors (~1e-45 each)
    with np.errstate(over="ignore", invalid="ignore"):
        slack = 4 * (d + 4) * _U32 * (xnorm * np.linalg.norm(cols_s, axis=1) + np.abs(th))
        low = np.where(np.isfinite(th), th - slack - tiny, th)  # ±inf: never / always above
        cols32 = np.vstack([cols_s.T, -low[None, :]]).astype(np.float32)
    scale = 2.0 ** ex
    x32 = np.ones((step, d + 1), dtype=np.float32)
    for s in range(0, len(idx), step):
        x = X[idx[s:s + step]] if subset else X[s:s + step]
        xb = x32[:len(x)]
        np.multiply(x, scale, out=xb[:, :d], casting="unsafe")  # exact scaling, then the cast
        found_i, found_k = [], []
        for j in range(0, K, block):
            with np.errstate(over="ignore", invalid="ignore"):
                s32 = xb @ cols32[:, j:j + block]
                some = np.flatnonzero(s32.max(axis=1) > 0)  # one fast pass, then the few
                if len(some):
                    i, k = np.nonzero(s32[some] > 0)
                    found_i.append(some[i])
                    found_k.append(k + j)
        if not found_i:
            continue
        i, k = np.concatenate(found_i), np.concatenate(found_k)
        t = np.einsum("ij,ij->i", x[i], cols[k])
        on = t > thr[k]
        yield (idx[s + i[on]] if subset else s + i[on]), k[on], t[on]


def pairs_above(X: np.ndarray, cols: np.ndarray, thr: np.ndarray, rows=None):
    """All pairs of :func:`chunks_above` at once: ``(rows, ks, t)``."""
    got = list(chunks_above(X, cols, thr, rows))
    if not got:
        z = np.zeros(0, dtype=np.int64)
        return z, z.copy(), np.zeros(0)
    return tuple(np.concatenate(a) for a in zip(*got))

"""Self-attention as an interacting-particle system in continuous time, at inverse
temperature β and in its zero-temperature (hardmax) limit.

n tokens ``x_i ∈ R^d`` with query, key and value matrices ``Q, K, V`` evolve by
(docs/meanfield.md states the equation, the normalisation and why)::

    ẋ_i = V ( Σ_j P_ij(x) x_j − x_i ),      P_ij = softmax_j( β ⟨Q x_i, K x_j⟩ )     (normalised)
    ẋ_i =     Σ_j P_ij(x) V x_j                                                     (raw)

The raw form is the standard mean-field self-attention dynamics. The normalised form (the
default) adds the skip term ``−V x_i``; it is the raw equation written for
``z = e^{−tV} x`` *with the attention evaluated on the rescaled tokens*. Without that, the
raw scores of the V = I dynamics are ``β e^{2t} ⟨Q z_i, K z_j⟩``: the effective inverse
temperature grows like ``e^{2t}`` and any finite β turns into hardmax after a time of order
``log``, so there is no finite-β phase to study. The normalised form is also the
continuous-time limit of the layer ``z ← (z + α P z)/(1+α)`` of :mod:`exactformer.dynamics`
(V = I, α → 0 with time α·layers).

At β = ∞ (``beta=math.inf``) ``P_i`` is uniform on the argmax set of ``⟨Q x_i, K x_j⟩``.
The hardmax flow with V positive definite sends every token to a fixed configuration; the
map from initial to final positions is the **projection map** (:func:`projection_map`),
and ``W2(μ_t, projection_map#μ_0)`` measures how close the softmax dynamics is to its
zero-temperature limit (:func:`wasserstein2`, POT).

Time stepping (:func:`integrate`): the explicit Dormand–Prince 5(4) pair with the
standard step-size controller on the *max* norm over all tokens (a single token's error is
never averaged away by the others), FSAL, steps clamped to land exactly on the requested
output times. The velocity is evaluated in row chunks: memory O(n · chunk), not O(n²).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .model import argmax_mask
from .tolerances import TIE_RTOL

__all__ = [
    "SelfAttentionFlow",
    "Solution",
    "integrate",
    "simulate",
    "projection_map",
    "Projection",
    "argmax_tokens",
    "wasserstein2",
    "distinct_points",
]


# Dormand & Prince (1980), RK5(4)7FM: nodes, stage matrix, 5th-order weights, error weights
_C = np.array([0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0])
_A = [
    [],
    [1 / 5],
    [3 / 40, 9 / 40],
    [44 / 45, -56 / 15, 32 / 9],
    [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
    [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
    [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84],
]
_B = np.array([35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0])
_E = np.array([71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40])


@dataclass(frozen=True)
class SelfAttentionFlow:
    """The vector field of the self-attention dynamics (module docstring, docs/meanfield.md).

    ``beta`` may be ``math.inf`` (hardmax). ``chunk`` rows of the ``n × n`` attention are
    formed at a time. ``single_exp``: exponentials in float32, everything else in float64
    (:meth:`attention_mean`).
    """

    Q: np.ndarray
    K: np.ndarray
    V: np.ndarray
    beta: float
    normalised: bool = True
    chunk: int = 256
    single_exp: bool = False

    def __post_init__(self):
        mats = [np.asarray(m, dtype=float) for m in (self.Q, self.K, self.V)]
        d = mats[2].shape[0] if mats[2].ndim == 2 else -1
        for name, m in zip("QKV", mats):
            if m.shape != (d, d):
                raise ValueError(f"{name} must be a square (d, d) matrix, got shape {m.shape}")
            if not np.all(np.isfinite(m)):
                raise ValueError(f"{name} must be finite")
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0 (math.inf for hardmax), got {self.beta}")
        if self.chunk < 1:
            raise ValueError("chunk must be >= 1")
        for name, m in zip("QKV", mats):
            object.__setattr__(self, name, m)

    @property
    def d(self) -> int:
        return self.V.shape[0]

    @property
    def score_matrix(self) -> np.ndarray:
        """``A = Qᵀ K``: the scores are ``⟨Q x_i, K x_j⟩ = x_iᵀ A x_j``."""
        return self.Q.T @ self.K

    def attention_mean(self, X: np.ndarray, rows: slice | None = None) -> np.ndarray:
        """``Σ_j P_ij x_j`` for the rows ``rows`` (all by default), chunk by chunk.

        Scores, their shift by the row maximum and the factor β are float64; with
        ``single_exp`` the exponentials are taken in float32 (3× faster, the dominant cost)
        and summed in float64: each weight then carries a relative error ≤ ~1e-7·(1 + |β(s −
        max s)|), docs/meanfield.md ("Time stepping") gives the measured effect on the
        velocity. Numerator and denominator come from one product with ``[X, 1]``.
        """
        X = np.asarray(X, dtype=float)
        hard = math.isinf(self.beta)
        keys = X @ self.K.T if hard else (self.beta * X) @ self.K.T  # (β) K x_j
        X1 = np.hstack([X, np.ones((len(X), 1))])
        rows = rows or slice(0, len(X))
        idx = range(*rows.indices(len(X)))
        out = np.empty((len(idx), X.shape[1]))
        buf = np.empty((min(self.chunk, len(idx)), len(X)),
                       dtype=np.float32 if self.single_exp else np.float64)
        for a in range(0, len(idx), self.chunk):
            lo = idx.start + a
            hi = min(lo + self.chunk, idx.stop)
            S = (X[lo:hi] @ self.Q.T) @ keys.T  # (chunk, n) scores, times β
            if hard:  # the hardmax limit, ties as the dynamics count them
                W = argmax_mask(S, TIE_RTOL).astype(float)
            else:  # β(s − max s) in float64, rounded into buf, exponentiated in place
                W = buf[: hi - lo]
                np.subtract(S, S.max(axis=1, keepdims=True), out=W, casting="unsafe")
                np.exp(W, out=W)
                W = W.astype(np.float64, copy=False)
            N = W @ X1
            out[a : a + hi - lo] = N[:, :-1] / N[:, -1:]
        return out

    def __call__(self, X: np.ndarray) -> np.ndarray:
        """The velocity ``ẋ`` of every token, an ``(n, d)`` array."""
        M = self.attention_mean(X)
        if self.normalised:
            return (M - X) @ self.V.T
        return M @ self.V.T


@dataclass(frozen=True)
class Solution:
    """States at the requested times and what the integrator did to get there.

    ``states[k]`` is the configuration at ``times[k]``; ``steps`` accepted steps,
    ``rejected`` rejected ones, ``evaluations`` vector-field calls, ``stopped`` True if the
    ``stop`` criterion of :func:`integrate` ended the run (then ``times[-1]`` is that time).
    """

    times: np.ndarray
    states: np.ndarray
    steps: int
    rejected: int
    evaluations: int
    stopped: bool = False
    rtol: float = field(default=0.0)
    atol: float = field(default=0.0)

    @property
    def final(self) -> np.ndarray:
        return self.states[-1]


def integrate(f, y0: np.ndarray, times, rtol: float = 1e-6, atol: float = 1e-9,
              h0: float | None = None, max_steps: int = 1_000_000, stop=None) -> Solution:
    """Integrate ``ẏ = f(y)`` (autonomous) from ``y(times[0]) = y0`` with Dormand–Prince 5(4).

    Error control: a step is accepted when ``max |err| / (atol + rtol·max(|y|, |y_new|)) ≤ 1``
    (max over all components); the next step is ``h · min(5, max(0.2, 0.9·err^{-1/5}))``.
    Steps are clamped to land exactly on every output time. ``stop(t, y, f(y))`` may end the
    run early after an accepted step (e.g. stationarity); the last state is then recorded at
    the time it stopped. Raises ``RuntimeError`` if ``max_steps`` is exceeded.
    """
    times = np.asarray(times, dtype=float)
    if times.ndim != 1 or len(times) < 1 or np.any(np.diff(times) <= 0):
        raise ValueError("times must be a non-empty increasing 1-D sequence")
    if not (rtol > 0 and atol > 0):
        raise ValueError("rtol and atol must be > 0")
    y = np.array(y0, dtype=float)
    t = float(times[0])
    k1 = f(y)
    nfev = 1
    out_t, out_y = [t], [y.copy()]
    span = times[-1] - times[0]
    if h0 is None:  # Hairer–Nørsett–Wanner's first guess from the size of y and f(y)
        sc = atol + rtol * np.abs(y)
        d0, d1 = np.abs(y / sc).max(), np.abs(k1 / sc).max()
        h0 = 0.01 * d0 / d1 if d0 > 1e-5 and d1 > 1e-5 else 1e-6
    h = min(float(h0), span) if span > 0 else float(h0)
    steps = rejected = 0
    stopped = False
    for target in times[1:]:
        while t < target:
            if steps + rejected >= max_steps:
                raise RuntimeError(f"integrate: more than {max_steps} steps (t = {t:g})")
            hh = min(h, target - t)
            last = hh >= target - t
            k = [k1]
            for s in range(1, 7):
                ys = y + hh * sum(a * ks for a, ks in zip(_A[s], k) if a != 0.0)
                k.append(f(ys))
            nfev += 6
            y_new = ys  # stage 7 is the 5th-order solution (FSAL)
            err_vec = hh * sum(e * ks for e, ks in zip(_E, k) if e != 0.0)
            scale = atol + rtol * np.maximum(np.abs(y), np.abs(y_new))
            err = float(np.abs(err_vec / scale).max())
            if not np.isfinite(err):
                err = np.inf
            if err <= 1.0:
                t = float(target) if last else t + hh
                y, k1 = y_new, k[6]
                steps += 1
                grow = 5.0 if err == 0 else min(5.0, max(0.2, 0.9 * err ** -0.2))
                if not last or hh >= h:  # a clamped step says nothing new about h
                    h = hh * grow
                if stop is not None and stop(t, y, k1):
                    stopped = True
                    break
            else:
                rejected += 1
                h = hh * max(0.2, 0.9 * err ** -0.2)
        out_t.append(t)
        out_y.append(y.copy())
        if stopped:
            break
    return Solution(times=np.asarray(out_t), states=np.stack(out_y), steps=steps,
                    rejected=rejected, evaluations=nfev, stopped=stopped, rtol=rtol,
                    atol=atol)


def _check_tokens(X0) -> np.ndarray:
    X0 = np.asarray(X0, dtype=float)
    if X0.ndim != 2 or len(X0) < 1:
        raise ValueError(f"tokens must be an (n, d) array with n >= 1, got shape {X0.shape}")
    if not np.all(np.isfinite(X0)):
        raise ValueError("tokens must be finite")
    return X0


def simulate(X0, flow: SelfAttentionFlow, times, rtol: float = 1e-6,
             atol: float = 1e-9) -> Solution:
    """Tokens ``X0`` (n, d) carried by ``flow`` and recorded at ``times`` (``times[0]`` = 0
    is the start)."""
    X0 = _check_tokens(X0)
    if X0.shape[1] != flow.d:
        raise ValueError(f"tokens have d = {X0.shape[1]}, the flow d = {flow.d}")
    return integrate(flow, X0, times, rtol=rtol, atol=atol)


def argmax_tokens(X: np.ndarray, A: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """For every query ``x_i``: the index of its best key ``argmax_j x_iᵀ A x_j`` and whether
    that maximum is strict (no other token within ``TIE_RTOL × max|score|`` of it)."""
    X = np.asarray(X, dtype=float)
    best = np.empty(len(X), dtype=np.int64)
    strict = np.empty(len(X), dtype=bool)
    keys = X @ A.T
    for lo in range(0, len(X), chunk):
        S = X[lo:lo + chunk] @ keys.T
        j = S.argmax(axis=1)
        top = S[np.arange(len(S)), j][:, None]
        tied = S >= top - TIE_RTOL * np.abs(S).max(axis=1, keepdims=True)
        best[lo:lo + chunk] = j
        strict[lo:lo + chunk] = tied.sum(axis=1) == 1
    return best, strict


@dataclass(frozen=True)
class Projection:
    """The limiting projection map evaluated on the initial tokens.

    ``image[i]`` is where the zero-temperature (hardmax) flow sends token ``i``. ``method``:
    ``"explicit"`` when every token's best key is a strict leader and V is a positive
    multiple of the identity (then ``image[i] = x_{best(i)}`` exactly, see
    :func:`projection_map`), else ``"integrated"`` (the hardmax flow integrated until no
    token moves faster than ``tol × scale``; ``solution`` holds the run).
    """

    image: np.ndarray
    method: str
    target: np.ndarray | None = None
    solution: Solution | None = None


def projection_map(X0, Q, K, V, tol: float = 1e-9, t_max: float = 200.0,
                   chunk: int = 256, method: str = "auto") -> Projection:
    """The zero-temperature limit of the normalised flow, applied to the tokens ``X0``.

    Exact case (``method="explicit"``): V = c·I (c > 0) and every token's best key
    ``j(i) = argmax_j x_iᵀ A x_j`` (A = QᵀK) is a strict *leader*, its own strict best key.
    Then the flow is explicit: a leader's velocity is ``V(x_j − x_j) = 0``, so it never
    moves; token i moves on the segment ``x_i(t) = x_j + e^{−ct}(x_i − x_j)``, and along it
    ``⟨A x_i(t), x_j − x_k⟩`` is a convex combination of its value at t = 0 (> 0: j is i's
    best key) and ``⟨A x_j, x_j − x_k⟩`` (> 0: j is a leader), so j stays the best key for
    all t and ``image[i] = x_j`` with no integration error.

    Otherwise the hardmax flow is integrated (:func:`integrate`, rtol = tol/100) until every
    velocity is below ``tol × scale`` (scale = largest |coordinate| of ``X0``); with V
    positive definite the distance to the limit is then about ``tol × scale / λ_min(V)``.
    The discontinuities of hardmax (a token changing best key) cost small steps there; a
    looser rtol would let tokens land beyond their leader by the step error and chatter.
    ``method="integrate"`` forces the integration (the tests compare both).
    """
    if method not in ("auto", "integrate"):
        raise ValueError(f"method must be 'auto' or 'integrate', got {method!r}")
    X0 = _check_tokens(X0)
    flow = SelfAttentionFlow(Q, K, V, math.inf, normalised=True, chunk=chunk)
    A = flow.score_matrix
    c = flow.V[0, 0]
    if method == "auto" and c > 0 and np.array_equal(flow.V, c * np.eye(flow.d)):
        best, strict = argmax_tokens(X0, A, chunk)
        lead = np.flatnonzero(best == np.arange(len(X0)))
        if np.all(strict) and np.all(np.isin(best, lead)):
            return Projection(image=X0[best].copy(), method="explicit", target=best)
    scale = max(float(np.abs(X0).max()), np.finfo(float).tiny)
    sol = integrate(flow, X0, [0.0, t_max], rtol=1e-2 * tol, atol=1e-2 * tol * scale,
                    stop=lambda t, y, v: float(np.abs(v).max()) <= tol * scale)
    return Projection(image=sol.final.copy(), method="integrated", solution=sol)


def distinct_points(Y: np.ndarray, atol: float) -> tuple[np.ndarray, np.ndarray]:
    """Points of ``Y`` merged when they agree to ``atol`` per coordinate (rounded to a grid of
    step ``atol``), with their multiplicities: the same empirical distribution, fewer atoms."""
    Y = np.asarray(Y, dtype=float)
    keys = np.round(Y / atol).astype(np.int64)
    _, first, inverse, counts = np.unique(keys, axis=0, return_index=True,
                                          return_inverse=True, return_counts=True)
    sums = np.zeros((len(first), Y.shape[1]))
    np.add.at(sums, inverse.ravel(), Y)
    return sums / counts[:, None], counts


_POT_NUMPY_ONLY = ("POT_BACKEND_DISABLE_PYTORCH", "POT_BACKEND_DISABLE_JAX",
                   "POT_BACKEND_DISABLE_CUPY", "POT_BACKEND_DISABLE_TENSORFLOW")


def require_pot():
    """``import ot`` with POT's numpy backend only, when it is imported here first: its other
    backends would import PyTorch & co. (seconds) for nothing, W2 runs on numpy arrays. The
    environment is restored afterwards."""
    import os
    import sys

    if "ot" in sys.modules:
        return sys.modules["ot"]
    added = [k for k in _POT_NUMPY_ONLY if k not in os.environ]
    os.environ.update(dict.fromkeys(added, "1"))
    try:
        import ot
    finally:
        for k in added:
            os.environ.pop(k, None)
    return ot


def wasserstein2(X: np.ndarray, Y: np.ndarray, y_weights: np.ndarray | None = None) -> float:
    """Exact W2 between the uniform empirical distribution of the rows of ``X`` and the
    distribution of the rows of ``Y`` (uniform, or ``y_weights``): POT's network simplex
    (``ot.emd2``) on the squared Euclidean cost, then the square root."""
    try:
        ot = require_pot()
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the W2 distance needs POT: pip install 'exactformer[meanfield]'") \
            from exc
    X = np.asarray(X, dtype=float)
    Y = np.asarray(Y, dtype=float)
    a = np.full(len(X), 1.0 / len(X))
    b = np.full(len(Y), 1.0 / len(Y)) if y_weights is None else \
        np.asarray(y_weights, dtype=float) / np.sum(y_weights)
    M = ot.dist(X, Y, metric="sqeuclidean")
    cost = float(ot.emd2(a, b, M, numItermax=10_000_000))
    return math.sqrt(max(cost, 0.0))

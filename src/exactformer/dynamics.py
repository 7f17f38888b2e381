"""Pure-attention clustering dynamics.

The model studied by Alcalde, Fantuzzi and Zuazua, *Clustering in pure-attention hardmax
transformers and its role in sentiment analysis* (SIAM J. Math. Data Sci. 7(3), 2025,
arXiv:2407.01602): a transformer made only of one self-attention layer with value matrix
``I`` followed by the normalisation ``1/(1+α)``, iterated. Each step moves every token
towards the mean of its *argmax set*::

    z_i ← z_i/(1+α) + α/(1+α) · mean{z_j : j ∈ C_i},   C_i = argmax_k ⟨A z_i, z_k⟩

with ``A`` symmetric positive definite. Geometrically ``C_i`` holds the tokens with the
largest projection onto the direction ``A z_i`` (the tokens on the supporting hyperplane of
the current point cloud with normal ``A z_i``). The softmax analogue replaces the uniform
weights on ``C_i`` by ``softmax_k(⟨A z_i, z_k⟩/τ)``.

Facts the code relies on (and that the tests check):

* each new token is a convex combination of old ones, so the convex hulls are nested;
* a *leader* — a token that is the unique maximiser of its own scores,
  ``⟨A z_i, z_i⟩ > ⟨A z_i, z_j⟩`` for every other position ``z_j`` — never moves, because
  no convex combination of the other tokens can beat it in its own direction;
* tokens at the same position stay together, so the number of distinct positions never grows;
* generically every other token converges to a leader, geometrically with ratio
  ``1/(1+α)`` once its argmax set has settled; exact ties (symmetric configurations) can
  hold a token away from the leaders (see :func:`limit_configuration`).

This module is an independent numpy implementation (no code from the paper).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.special import softmax

from .model import argmax_mask
from .tolerances import TIE_RTOL

Attention = Literal["hardmax", "softmax"]

__all__ = [
    "Trajectory",
    "LimitConfiguration",
    "scores",
    "argmax_sets",
    "attention_weights",
    "step",
    "simulate",
    "leaders",
    "limit_configuration",
    "random_spd",
]



def _check_inputs(Z: np.ndarray, A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    Z = np.asarray(Z, dtype=float)
    A = np.asarray(A, dtype=float)
    if Z.ndim != 2:
        raise ValueError(f"tokens must be an (n, d) array, got shape {Z.shape}")
    d = Z.shape[1]
    if A.shape != (d, d):
        raise ValueError(f"A must be ({d}, {d}) for d = {d}, got shape {A.shape}")
    if not (np.all(np.isfinite(Z)) and np.all(np.isfinite(A))):
        raise ValueError("tokens and A must be finite")
    return Z, A


def random_spd(d: int, rng: np.random.Generator, condition: float = 4.0) -> np.ndarray:
    """A random symmetric positive definite ``d×d`` matrix with eigenvalues in [1, condition].

    Used by the experiments so that ``A`` is genuinely anisotropic (``A = I`` makes the
    argmax geometry a plain nearest-direction rule, which hides the role of ``A``).
    """
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    eig = np.linspace(1.0, condition, d)
    return (Q * eig) @ Q.T


def scores(Z: np.ndarray, A: np.ndarray) -> np.ndarray:
    """The score matrix ``S[i, j] = ⟨A z_i, z_j⟩`` (rows: queries)."""
    Z, A = _check_inputs(Z, A)
    return Z @ A @ Z.T


def argmax_sets(Z: np.ndarray, A: np.ndarray, rtol: float = TIE_RTOL) -> np.ndarray:
    """Boolean ``(n, n)`` mask, row ``i`` = the argmax set ``C_i`` of token ``i``.

    Scores within ``rtol × (largest |score| of the row)`` of the row maximum count as tied,
    so that exact ties of the geometry survive floating-point rounding. A zero row (``z_i``
    at the origin) ties with everything: uniform attention, as in the exact model.
    """
    return argmax_mask(scores(Z, A), rtol)


def attention_weights(
    Z: np.ndarray,
    A: np.ndarray,
    attention: Attention = "hardmax",
    temperature: float | None = None,
    rtol: float = TIE_RTOL,
) -> np.ndarray:
    """Row-stochastic ``(n, n)`` attention matrix ``P`` of the configuration ``Z``.

    hardmax: uniform on the argmax set; softmax: ``softmax(S / temperature)`` row-wise.
    """
    if attention == "hardmax":
        mask = argmax_sets(Z, A, rtol).astype(float)
        return mask / mask.sum(axis=1, keepdims=True)
    if attention == "softmax":
        if temperature is None or not temperature > 0:
            raise ValueError("softmax attention needs a temperature > 0")
        return softmax(scores(Z, A) / temperature, axis=1)
    raise ValueError(f"attention must be 'hardmax' or 'softmax', got {attention!r}")


def step(
    Z: np.ndarray,
    A: np.ndarray,
    alpha: float = 1.0,
    attention: Attention = "hardmax",
    temperature: float | None = None,
    sphere: bool = False,
) -> np.ndarray:
    """One layer: ``Z ← (Z + α·P·Z)/(1+α)``; with ``sphere=True`` tokens are then rescaled
    to unit norm (the normalised variant, where the dynamics lives on the sphere)."""
    if not alpha > 0:
        raise ValueError("alpha must be > 0")
    Z = np.asarray(Z, dtype=float)
    if attention == "hardmax":
        # sum over the argmax set, then divide: exact whenever the sums are (dyadic data),
        # which keeps exactly symmetric tie configurations exactly symmetric
        mask = argmax_sets(Z, A).astype(float)
        mean = (mask @ Z) / mask.sum(axis=1, keepdims=True)
    else:
        mean = attention_weights(Z, A, attention, temperature) @ Z
    out = (Z + alpha * mean) / (1.0 + alpha)
    if sphere:
        out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


@dataclass(frozen=True)
class Trajectory:
    """A simulated run.

    ``states[k]`` is the configuration after ``k`` layers (``states[0]`` the input);
    ``steps`` the number of layers after which the configuration is stationary: layer
    ``steps + 1`` moves no token by more than ``tol × scale`` (``scale`` = largest initial
    token norm); ``max_steps`` if that never happened (``converged`` False).
    """

    states: np.ndarray
    steps: int
    converged: bool
    A: np.ndarray
    alpha: float
    attention: str
    temperature: float | None
    sphere: bool
    tol: float
    max_moves: np.ndarray = field(repr=False)

    @property
    def initial(self) -> np.ndarray:
        return self.states[0]

    @property
    def final(self) -> np.ndarray:
        return self.states[-1]


def simulate(
    Z0: np.ndarray,
    A: np.ndarray,
    alpha: float = 1.0,
    attention: Attention = "hardmax",
    temperature: float | None = None,
    sphere: bool = False,
    max_steps: int = 1000,
    tol: float = 1e-10,
    min_steps: int = 0,
) -> Trajectory:
    """Iterate :func:`step` from ``Z0`` until no token moves by more than ``tol × scale``.

    All states are recorded (``(steps+1, n, d)``; fine for the small configurations this is
    meant for). ``min_steps`` forces a number of layers regardless of convergence, e.g. to
    compare hardmax and softmax over the same depth.
    """
    Z, A = _check_inputs(Z0, A)
    if not np.allclose(A, A.T, rtol=1e-12, atol=1e-12 * np.abs(A).max()):
        raise ValueError("A must be symmetric")
    if sphere:
        Z = Z / np.linalg.norm(Z, axis=1, keepdims=True)
    scale = max(float(np.linalg.norm(Z, axis=1).max()), np.finfo(float).tiny)
    states = [Z]
    moves = []
    converged = False
    steps = max_steps
    for k in range(1, max_steps + 1):
        Z_new = step(Z, A, alpha, attention, temperature, sphere)
        move = float(np.linalg.norm(Z_new - Z, axis=1).max())
        states.append(Z_new)
        moves.append(move)
        Z = Z_new
        if not converged and move <= tol * scale:
            # layer k changed nothing: the configuration was stationary after k - 1 layers
            converged, steps = True, k - 1
        if converged and k >= min_steps:
            break
    return Trajectory(
        states=np.stack(states),
        steps=steps,
        converged=converged,
        A=A,
        alpha=float(alpha),
        attention=attention,
        temperature=temperature,
        sphere=sphere,
        tol=tol,
        max_moves=np.asarray(moves),
    )


def leaders(Z: np.ndarray, A: np.ndarray, rtol: float = 1e-9) -> np.ndarray:
    """Indices of the leaders of ``Z``: tokens that strictly win their own argmax.

    Token ``i`` is a leader when ``⟨A z_i, z_i⟩ > ⟨A z_i, z_j⟩`` for every ``z_j`` at another
    position (copies of ``z_i`` do not count against it), with a margin of
    ``rtol × max|score|``. Leaders are fixed points of the hardmax dynamics. When several
    tokens share a leader's position all of them are returned.
    """
    Z, A = _check_inputs(Z, A)
    S = Z @ A @ Z.T
    scale = max(float(np.abs(S).max()), np.finfo(float).tiny)
    same = _same_position(Z, rtol)
    own = np.diag(S)[:, None]
    beaten = (S >= own - rtol * scale) & ~same
    return np.flatnonzero(~beaten.any(axis=1))


def _same_position(Z: np.ndarray, rtol: float) -> np.ndarray:
    scale = max(float(np.abs(Z).max()), np.finfo(float).tiny)
    D = np.linalg.norm(Z[:, None, :] - Z[None, :, :], axis=2)
    return D <= rtol * scale


@dataclass(frozen=True)
class LimitConfiguration:
    """The clusters of a (converged) final configuration and what sits at each of them.

    ``points[c]`` is the position of cluster ``c`` and ``labels[i]`` the cluster of token ``i``.
    ``kind[c]`` says why cluster ``c`` does not move:

    * ``"leader"`` — it sits at an initial leader (index ``leader_of[c]``); the generic case;
    * ``"emerged"`` — a strict leader of the limit that was not one initially: a token that
      was beaten only by tokens which later moved away, and then stopped (rare);
    * ``"tie"`` — not a strict leader: it is held in place by an exact tie of scores (e.g. a
      token at the centre of a symmetric configuration), the non-concentrating case.

    ``leaders`` are the leaders of the initial configuration; they never move, so each of
    them is a cluster of kind ``"leader"``.
    """

    points: np.ndarray
    labels: np.ndarray
    kind: np.ndarray
    leader_of: np.ndarray
    leaders: np.ndarray

    @property
    def n_clusters(self) -> int:
        return len(self.points)

    @property
    def concentrated(self) -> bool:
        """True if every cluster is a strict leader of the limit (no tie points)."""
        return bool(np.all(self.kind != "tie"))

    @property
    def leader_clusters(self) -> np.ndarray:
        """Cluster id of every initial leader (in the order of ``leaders``)."""
        return self.labels[self.leaders]


def limit_configuration(
    trajectory: Trajectory | tuple[np.ndarray, np.ndarray, np.ndarray],
    atol: float = 1e-6,
) -> LimitConfiguration:
    """Group the final tokens into clusters and explain every cluster (see
    :class:`LimitConfiguration`).

    ``trajectory`` is a :class:`Trajectory` or a tuple ``(initial, final, A)``. Tokens whose
    final positions are within ``atol × scale`` of each other (single linkage) form one
    cluster; ``scale`` is the largest initial token norm.
    """
    from scipy.cluster.hierarchy import fcluster, linkage

    if isinstance(trajectory, Trajectory):
        Z0, Zf, A = trajectory.initial, trajectory.final, trajectory.A
    else:
        Z0, Zf, A = (np.asarray(a, dtype=float) for a in trajectory)
    scale = max(float(np.linalg.norm(Z0, axis=1).max()), np.finfo(float).tiny)
    if len(Zf) == 1:
        labels = np.zeros(1, dtype=int)
    else:
        labels = fcluster(linkage(Zf, "single"), atol * scale, criterion="distance") - 1
    # renumber clusters by first appearance, so labels are stable and readable
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    labels = order[inverse.ravel()]
    k = labels.max() + 1
    points = np.stack([Zf[labels == c].mean(axis=0) for c in range(k)])
    lead = leaders(Z0, A)
    leader_of = np.full(k, -1)
    for i in lead:
        c = labels[i]
        if leader_of[c] < 0 and np.linalg.norm(points[c] - Z0[i]) <= atol * scale:
            leader_of[c] = i
    # strict leaders among the distinct limit points (copies merged, so no position tolerance)
    strict = np.zeros(k, dtype=bool)
    strict[leaders(points, A)] = True
    kind = np.where(leader_of >= 0, "leader", np.where(strict, "emerged", "tie"))
    return LimitConfiguration(
        points=points, labels=labels, kind=kind, leader_of=leader_of, leaders=lead
    )

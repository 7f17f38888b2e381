"""Pass 4 — place the leaders and collapse (docs/design.md §4 step 3).

Each group's *main* leader (first token of its first sequence) goes onto a ray in the
positive quadrant of the plane ``π = A·x``; leaders with another target (*satellites*) go
onto an arc in the negative quadrant; destinations are shared by target across groups.
One hardmax attention layer with ``Q = K = A`` then replaces every token by its
destination: non-leaders score highest at their main leader, leaders at themselves.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from .. import numeric as nm
from ..craft import collapse_layer, point_move
from ..errors import InternalError
from ..model import SelfAttention
from ..tolerances import DRIFT, GOOD_GAP
from .geometry import (
    CandidateScreen,
    choose_trapezoid,
    choose_trapezoids,
    first_choice,
    generic_unit,
    least_norm_point,
    spread_bound,
)
from .state import ModelBuilder
from .types import Analysis, Destinations


def _positive_plane(rng, d: int, exact: bool) -> np.ndarray:
    """A = [p; q], two generic positive vectors (unit in float mode), clearly not parallel."""
    while True:
        A = np.abs(np.stack([generic_unit(rng, d, exact) for _ in range(2)]))
        if exact:
            A = np.where(A == 0, Fraction(1, 8), A)
        Af = nm.to_float(A)
        if not exact:
            A = A / np.linalg.norm(A, axis=1, keepdims=True)
            Af = A
        cos = Af[0] @ Af[1] / np.linalg.norm(Af[0]) / np.linalg.norm(Af[1])
        if cos < 0.999 or d == 1:
            return A


def plan_destinations(builder: ModelBuilder, analysis: Analysis, rng) -> Destinations:
    """Choose leaders, satellites and the destination of every token."""
    st = builder.state
    pid = st.point_ids()
    classes = np.unique(st.cls)
    first_seq = np.array([np.flatnonzero(st.cls == c)[0] for c in classes])
    main_point = pid[st.segments[first_seq]]
    main_target = np.array([analysis.target_ids[j][0] for j in first_seq])
    main_of_class = dict(zip(classes.tolist(), range(len(classes))))

    # satellites: prefix tokens whose target differs from their group's main target
    sat = {}
    for j in range(st.n_sequences):
        mt = main_target[main_of_class[int(st.cls[j])]]
        toks = analysis.prefix_tokens(j)
        for p, t in zip(pid[toks].tolist(), analysis.target_ids[j].tolist()):
            if t != mt:
                sat.setdefault(p, t)
    main_point = _outermost_points(st, pid, classes, main_point, set(sat))
    main_targets = np.unique(main_target)
    sat_targets = np.unique(np.array(list(sat.values()), dtype=np.int64))
    n_main = len(main_targets)
    dest_target = np.concatenate([main_targets, sat_targets]).astype(np.int64)

    A = _positive_plane(rng, st.d, st.exact)
    if st.exact:  # a power of two ≥ |π|₁ ≥ |π|: short destinations (docs/exact.md)
        P = st.floats() @ nm.to_float(A).T
        R = nm.dyadic_above(float(np.max(np.abs(P).sum(axis=1))) * (1 + 1e-9) + 1e-300, 1)
    else:
        P = st.X @ A.T
        R = float(np.max(np.linalg.norm(P, axis=1)))
    half = Fraction(1, 2) if st.exact else 0.5
    # exact mode: n_main rounded up to a power of two, so that every ρ_k is dyadic
    slots = 1 << (n_main - 1).bit_length() if st.exact else n_main
    pis = []
    for k in range(n_main):  # main ray: π = ρ_k (1, 1), ρ_k ∈ (1.5 R, 2.5 R)
        rho = R * (3 * half + (k + half) / slots)
        pis.append([rho, rho])
    for k in range(len(sat_targets)):  # arc κ(t²-1, -2t)/(1+t²), t ∈ (0,1): angle in (π, 3π/2)
        t = (k + half) / len(sat_targets)
        pis.append([R * (t * t - 1) / (1 + t * t), R * (-2 * t) / (1 + t * t)])
    pi = nm.asarray(pis, st.exact) if pis else nm.zeros((0, 2), st.exact)
    point = np.stack([least_norm_point(A, p) for p in pi])

    dest_of_main = {int(t): i for i, t in enumerate(main_targets)}
    dest_of_sat = {int(t): n_main + i for i, t in enumerate(sat_targets)}
    class_index = np.array([main_of_class[int(c)] for c in st.cls])
    token_dest = np.array([dest_of_main[int(t)] for t in main_target])[class_index[st.seq]]
    moves = [(int(p), dest_of_main[int(t)]) for p, t in zip(main_point, main_target)]
    for p, t in sat.items():
        token_dest[pid == p] = dest_of_sat[t]
        moves.append((p, dest_of_sat[t]))
    return Destinations(A, token_dest, dest_target, pi, point, len(sat) > 0, moves)


def _outermost_points(st, pid: np.ndarray, classes: np.ndarray, first: np.ndarray,
                      satellites: set) -> np.ndarray:
    """Per class, the main leader: its point farthest from the mean of all tokens.

    The reference construction takes the first token of the group's first sequence
    (docs/design.md §4 step 3 argues the change). Any point of the group whose tokens may
    all output the main target serves as well (the collapse sends
    every non-leader to the main leader, and the first token's target *is* the main
    target), so the block count does not change. The outermost one is the cheapest to
    move: along ``z − mean`` it is almost always the top of all tokens, so its trapezoid
    needs two ReLUs, touches no other token even by rounding, and its gap is wide
    (measured at N = 1000, n = 100, d = 16: 94 % of the moves against 12 % for first
    tokens, and no move has more than a few tokens above it, where a first token's could
    have half of all tokens).
    Satellites (prefix points with another target) are not eligible. Exact mode chooses
    from the float image: few tokens above a leader mean few rows computed exactly.
    """
    Xf = st.floats()
    Xc = Xf - Xf.mean(axis=0)
    r = np.einsum("ij,ij->i", Xc, Xc)
    ok = ~np.isin(pid, np.fromiter(satellites, dtype=np.int64, count=len(satellites)))
    tok = np.flatnonzero(ok)
    cls_tok = st.cls[st.seq[tok]]
    order = np.lexsort((r[tok], cls_tok))  # per class ascending radius: last is outermost
    last = np.flatnonzero(np.r_[cls_tok[order][1:] != cls_tok[order][:-1], True])
    best = dict(zip(cls_tok[order][last].tolist(), pid[tok[order[last]]].tolist()))
    return np.array([best.get(int(c), int(f)) for c, f in zip(classes, first)])


MOVES_PER_SCREEN = 128  # strict mode: leaders whose candidates one screen finds


def place_leaders(builder: ModelBuilder, dest: Destinations, rng, compact: bool,
                  progress=None) -> None:
    """One point move per moving leader (all in one wide layer in compact mode).

    Float mode reads the directions ``z − mean`` with the collapse plane and the mean
    projected out (:func:`first_choice`): destinations then sit at t = 0, below every later
    trapezoid, so a move touches its leader's copies only. The candidates of a block of
    moves come from one screen; rows that earlier moves of the block changed are re-read.
    """
    st = builder.state
    pid = st.point_ids()
    order = np.argsort(pid, kind="stable")
    starts = np.searchsorted(pid[order], np.arange(pid.max() + 2))
    reference = st.floats().mean(axis=0)
    mines = [order[starts[p]:starts[p + 1]] for p, _ in dest.moves]
    away = np.linalg.qr(np.vstack([nm.to_float(dest.A), reference]).T)[0].T
    if compact:  # every move reads the same input: one batched direction search
        traps = choose_trapezoids(st.X, mines, rng, reference, away)
        layers = [point_move(t.v, t.center, t.gap, dest.point[k] - nm.row(st.X, m[0]), t.top)
                  for t, m, (_, k) in zip(traps, mines, dest.moves)]
        builder.add_units(layers, "point moves", traps)
        if progress is not None:
            progress("leaders", len(layers), len(layers))
        return
    # moves change leaders only, onto destinations: one bound on the spread holds throughout
    spread = spread_bound(st.floats(), reference, nm.to_float(dest.point))
    todo = list(zip(mines, dest.moves))
    for b in range(0, len(todo), MOVES_PER_SCREEN):
        block = todo[b:b + MOVES_PER_SCREEN]
        changed = np.zeros(0, dtype=np.int64)
        Z = np.stack([st.floats()[m].mean(axis=0) for m, _ in block])
        V, ok = first_choice(Z, reference, away)
        screen = CandidateScreen(st.X, [m for m, _ in block], V, spread)
        for i, (mine, (_, k)) in enumerate(block):
            trap = screen.find(i, st.X, changed) if ok[i] else None
            if trap is None or (not st.exact and trap.quality < GOOD_GAP):
                trap = choose_trapezoid(st.X, mine, rng, reference, away=away)
            layer = point_move(trap.v, trap.center, trap.gap,
                               dest.point[k] - nm.row(st.X, mine[0]), trap.top)
            known = trap.rows
            before = None if known is None or st.exact else st.X[known]
            touched = builder.add_units([layer], "point move", [trap])
            if before is not None:  # rows above the trapezoid only pick up rounding
                drift = np.linalg.norm(st.X[known] - before, axis=1)
                touched = known[drift > DRIFT * spread]
            changed = np.union1d(changed, touched)
            n = b + i + 1
            if progress is not None and (n % 16 == 0 or n == len(mines)):
                progress("leaders", n, len(mines))


def collapse_attention(dest: Destinations, line=None) -> SelfAttention:
    """The collapse attention; with ``line`` the projection onto it is folded into V."""
    if line is None:
        return collapse_layer(dest.A)
    d = dest.A.shape[1]
    return collapse_layer(dest.A, Vo=(line.alpha * line.w).reshape(d, 1), Vi=line.v.reshape(1, d))


def check_collapsed(builder: ModelBuilder, dest: Destinations, tol: float) -> None:
    """Every token must sit on (within ``tol`` × scale of) its destination's line point / point."""
    st = builder.state
    want = nm.to_float(dest.point)[dest.token_dest]
    err = nm.max_abs(st.floats() - want)
    if err > tol * max(st.scale, nm.max_abs(want)):
        raise InternalError(f"internal: the collapse missed its destinations by {err:.3g}")

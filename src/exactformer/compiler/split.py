"""Pass 3 — split classes whose members differ (docs/design.md §4 step 2).

Rare on real data: a class holds sequences that share points and have equal means. A
round is one block: a feed-forward layer that moves tokens, then a broadcast, after which
sequences whose means now differ are in different classes.

The published step moves one value whose proportion differs (one point move per round):
a class of N sequences that share one token and are otherwise apart (equal means sharing
the origin, say) then needs N − 1 rounds and blocks, each a pass over every token, O(N²)
overall. Here a round first tries *ramps*: four units ``Δ_i·relu(⟨u, x⟩ − θ_i)`` (generic
direction u, thresholds near generic quantiles of the mixed classes' tokens along u, generic
positive Δ_i). A sequence's mean moves by ``Σ_i Δ_i·E_j[relu(⟨u, x⟩ − θ_i)]``, a generic
function of its distribution along u, so the members of a class split all at once: a
handful of rounds whatever N, each O(T log T). Copies of one point move alike (the ramp is
continuous), so bookkeeping by identity is unaffected. A ramp round that splits nothing is
undone (no block kept) and replaced by the point move of one distinguishing value, which
always splits: every kept round adds a class, so there are at most N − 1 of them.
"""

from __future__ import annotations

import numpy as np

from .. import numeric as nm
from ..craft import Units, point_move
from ..errors import InternalError
from .geometry import broadcast_and_classify, choose_trapezoid, generic_positive, generic_unit
from .state import ModelBuilder
from .types import Analysis


def _distinguishing_value(st, analysis: Analysis, members: np.ndarray) -> int:
    """A value id whose proportion differs most across the class's groups."""
    mask = np.isin(st.seq, members)
    seqs, vals = st.seq[mask], st.value[mask]
    lengths = np.diff(st.segments)
    best, best_count = -1, 1
    for v in np.unique(vals):
        props = {}
        for j in members:
            g = int(analysis.group[j])
            props.setdefault(g, np.count_nonzero((seqs == j) & (vals == v)) / lengths[j])
        n_distinct = len(set(props.values()))
        if n_distinct > best_count:
            best, best_count = int(v), n_distinct
    return best


def _mixed_classes(cls: np.ndarray, group: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """``(class, member sequences)`` of every class holding more than one group, ascending.

    Sorts once instead of one O(N) scan per class.
    """
    key = cls.astype(np.int64) * (int(group.max()) + 1) + group
    pair_cls = np.unique(key) // (int(group.max()) + 1)  # one entry per (class, group)
    mixed = np.unique(pair_cls[1:][pair_cls[1:] == pair_cls[:-1]])
    if not len(mixed):
        return []
    order = np.argsort(cls, kind="stable")  # members in increasing order
    sorted_cls = cls[order]
    lo = np.searchsorted(sorted_cls, mixed, side="left")
    hi = np.searchsorted(sorted_cls, mixed, side="right")
    return [(c, order[a:b]) for c, a, b in zip(mixed, lo, hi)]


RAMPS = 4  # units per ramp round (the strict width limit)
# A split point move shifts its value by a generic vector of this × scale (float mode):
# enough to separate the means (≥ 1e-3 × scale / n), small enough that the steep trapezoid
# of nearly equal points (weights ~ step / gap) leaves the tokens above it within a
# rounding that the later layers' gaps tolerate, so the float model certifies (issue 12,
# repro/min_sw2.json).
SPLIT_STEP = 1e-3


def _ramps(st, todo: list, rng: np.random.Generator) -> Units:
    """Four ramps along one generic direction through the mixed classes' tokens."""
    members = np.concatenate([m for _, m in todo])
    rows = np.flatnonzero(np.isin(st.seq, members))
    Xf = st.floats()
    u = generic_unit(rng, st.d, st.exact)
    t = Xf[rows] @ nm.to_float(u)
    # generic quantiles of the tokens, nudged off the tokens by up to a mean spacing
    nudge = (float(t.max()) - float(t.min())) / len(t) * rng.uniform(-0.5, 0.5, size=RAMPS)
    levels = np.quantile(t, np.sort(rng.uniform(0.1, 0.9, size=RAMPS))) + nudge
    spread = float(np.max(Xf @ nm.to_float(u)) - np.min(levels))
    size = 0.5 * st.scale / max(spread, 1e-300) / RAMPS  # moves of at most ~scale/2
    if st.exact:
        theta = [nm.dyadic_above(abs(v)) * (1 if v > 0 else -1) if v else nm.ZERO
                 for v in levels]
        size = nm.dyadic_above(size)
    else:
        theta = levels
    W = np.stack([generic_positive(rng, st.d, st.exact) * size for _ in range(RAMPS)], axis=1)
    U = np.stack([u] * RAMPS)
    b = nm.asarray([0] * RAMPS, st.exact)
    for i, th in enumerate(theta):
        b[i] = -th
    return Units(U, b, W)


def _point_moves(st, analysis: Analysis, todo: list, rng, compact: bool):
    """The published split step: move one distinguishing value per class (one class strict)."""
    if not compact:
        todo = todo[:1]
    pid = st.point_ids()
    units, traps = [], []
    for c, members in todo:
        v = _distinguishing_value(st, analysis, members)
        mine_token = np.flatnonzero((st.cls[st.seq] == c) & (st.value == v))[0]
        mine = np.flatnonzero(pid == pid[mine_token])
        trap = choose_trapezoid(st.X, mine, rng)
        # short in exact mode; float mode steps SPLIT_STEP × scale (see there)
        size = nm.dyadic_above(st.scale) if st.exact else st.scale * SPLIT_STEP
        delta = generic_positive(rng, st.d, st.exact) * size
        units.append(point_move(trap.v, trap.center, trap.gap, delta, trap.top))
        traps.append(trap)
    return units, traps


def split_classes(builder: ModelBuilder, analysis: Analysis, rng: np.random.Generator,
                  compact: bool, progress=None) -> int:
    """Refine classes until each holds one group; returns the number of split rounds."""
    st = builder.state
    rounds = 0
    ramps = True
    while True:
        todo = _mixed_classes(st.cls, analysis.group)
        if not todo:
            return rounds
        if rounds > st.n_sequences + 4:
            raise InternalError("internal: splitting sequences with equal means did not converge")
        before = len(np.unique(st.cls))
        if ramps:
            saved = builder.checkpoint()
            builder.add_units([_ramps(st, todo, rng)], "split ramps")
            broadcast_and_classify(builder, rng)
            ramps = len(np.unique(st.cls)) > before
            if not ramps:  # split nothing: undone, so every kept round splits (the bound)
                builder.rollback(saved)
                continue
        else:
            units, traps = _point_moves(st, analysis, todo, rng, compact)
            builder.add_units(units, "split move", traps)
            broadcast_and_classify(builder, rng)
            ramps = True
        rounds += 1
        if progress is not None:
            progress("split", rounds, None)

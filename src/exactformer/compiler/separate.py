"""Pass 2 — shift into the positive orthant, separate sequences by means (docs/design.md §4.1).

Also home of the broadcast + classify step that pass 3 (split) repeats after every move.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from .. import numeric as nm
from ..craft import broadcast, translate
from ..errors import CompileError
from .geometry import (
    close_pairs,
    exact_duplicates,
    generic_positive,
    representatives,
)
from .state import ModelBuilder, TokenState

CLASS_TOL = 1e-9  # sequence means this close (× scale) count as equal
DISTINCT_TOL = 1e-7  # distinct values must be this far apart (× scale)
MERGE_TOL = 1e-9  # copies of one value closer than this (× scale) are one point


def shift_and_separate(builder: ModelBuilder, rng: np.random.Generator) -> None:
    """Block 1: FF translation into the positive orthant, SA broadcast of the means."""
    st = builder.state
    lo = st.X.min(axis=0)
    shift = nm.like(st.scale, st.exact) - lo  # every coordinate ends in [scale, 3·scale]
    builder.add_ff(translate(shift), "translate")
    st.cls = np.zeros(st.n_sequences, dtype=np.int64)
    broadcast_and_classify(builder, rng)


def _components(n: int, rows, cols) -> np.ndarray:
    """Connected components of the undirected graph on n nodes with edges (rows, cols)."""
    if len(rows) == 0:  # no edges (typical: all means apart): skip importing scipy (~0.3 s)
        return np.arange(n)
    from scipy.sparse import coo_matrix  # imported here: keeps CLI start-up short
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _classes(st: TokenState, means: np.ndarray, tol, rng) -> np.ndarray:
    """Sequences sharing a value and (almost) the same mean form one class.

    Classes only split: the old class is part of the key, so this refines ``st.cls``.
    Graph nodes: the sequences, then one per (old class, mean cluster, value), numbered in
    lexicographic order of that triple. The triple is packed into one int64 (the first two
    are per sequence, ranked first), so the sort is 1-D: np.unique(axis=0) on the (T, 3)
    triples took ~1.2 s at 10⁶ tokens.
    """
    N = st.n_sequences
    if st.exact:
        pairs = exact_duplicates(means)
    else:
        pairs = close_pairs(means, tol, rng)
    clusters = _components(N, pairs[:, 0], pairs[:, 1])
    per_seq = st.cls.astype(np.int64) * (int(clusters.max()) + 1) + clusters
    per_seq = np.unique(per_seq, return_inverse=True)[1].ravel()  # rank of (cls, cluster) < N
    key = per_seq[st.seq] * (int(st.value.max()) + 1) + st.value  # < N·T
    _, node = np.unique(key, return_inverse=True)
    node = node.ravel()
    lo = np.full(node.max() + 1, N)
    hi = np.full(node.max() + 1, -1)
    np.minimum.at(lo, node, st.seq)
    np.maximum.at(hi, node, st.seq)
    if np.all(lo == hi):  # no value node shared by two sequences: every class is one sequence
        return np.arange(N)
    labels = _components(N + node.max() + 1, st.seq, N + node)
    return np.unique(labels[:N], return_inverse=True)[1].ravel()


def _merge(cls: np.ndarray, pairs: list[tuple[int, int]]) -> np.ndarray:
    rows, cols = zip(*pairs) if pairs else ((), ())
    labels = _components(cls.max() + 1, np.array(rows, dtype=np.int64),
                         np.array(cols, dtype=np.int64))
    return np.unique(labels[cls], return_inverse=True)[1].ravel()


def broadcast_and_classify(builder: ModelBuilder, rng: np.random.Generator,
                           tries: int = 8) -> None:
    """Uniform attention ``V = c·M`` (fresh generic positive M), then refine the classes.

    docs/design.md §4 step 1 uses a rank-one ``V = c·e·uᵀ``; then copies of one value in two
    sequences end ``c·|⟨u, μ_A − μ_B⟩|·|e|`` apart, and over N sequences the smallest such
    projection shrinks like 1/N² (seen: 1e-8 × scale at N = 1000 on data drawn from a small
    vocabulary), below what a trapezoid can isolate. A generic positive M of full rank
    (well conditioned: I plus a small positive matrix) separates them by ~c·|μ_A − μ_B|.

    Check: distinct values must end ≥ 1e-7 × scale apart, else the draw was unlucky: redraw.
    Copies of one value in different classes may come closer (nearly equal means): they stay
    distinct points down to 1e-9 × scale; closer copies are merged into one class, and step 2
    then separates them on purpose.
    """
    st = builder.state
    d = st.d
    counts = np.diff(st.segments)
    for _ in range(tries):
        M = generic_positive(rng, d * d, st.exact, low=0.0, high=0.5).reshape(d, d) / d
        M = M + np.eye(d, dtype=M.dtype) * nm.like(1, st.exact)
        means = np.add.reduceat(st.X, st.segments[:-1], axis=0) * nm.reciprocal_counts(
            counts, st.exact)[:, None]
        c = st.scale / max(nm.max_abs(means @ M.T), 1e-300)  # shifts of about one scale
        c = Fraction(c).limit_denominator(1 << 20) if st.exact else c
        layer = broadcast(c * M)
        X_new = layer(st.X, st.segments)
        scale = max(nm.max_abs(X_new), st.scale)
        cls = _classes(st, means if st.exact else nm.to_float(means), CLASS_TOL * scale, rng)
        saved = st.cls
        st.cls = cls
        pid = st.point_ids()
        st.cls = saved
        _, first = representatives(pid)
        if st.exact:
            pairs = exact_duplicates(X_new[first])
        else:
            pairs = close_pairs(X_new[first], DISTINCT_TOL * scale, rng)
        same_value = st.value[first[pairs[:, 0]]] == st.value[first[pairs[:, 1]]]
        if np.all(same_value):
            if len(pairs):  # copies that cannot be told apart: one point, split later
                a, b = X_new[first[pairs[:, 0]]], X_new[first[pairs[:, 1]]]
                gap = np.max(np.abs(nm.to_float(a - b)), axis=1)
                seqs = st.seq[first[pairs[gap < MERGE_TOL * scale]]]
                cls = _merge(cls, [(cls[a], cls[b]) for a, b in seqs])
            st.cls = cls
            builder.add_sa(layer, "broadcast", X_new=X_new)
            return
    raise CompileError(f"no generic broadcast separated the sequences in {tries} draws "
                       "(distinct tokens closer than 1e-7 × scale?)")

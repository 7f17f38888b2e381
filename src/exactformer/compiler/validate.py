"""Pass 1 — validate: ids, groups and the feasibility rules of docs/design.md §3.

Fails early with one line naming the sequences and the rule, before any layer is built.
"""

from __future__ import annotations

import numpy as np

from ..dataset import Dataset
from ..errors import DatasetError, InfeasibleError
from ..tolerances import DISTINCT
from .geometry import close_pairs
from .types import Analysis


def _vec(x) -> str:
    x = np.asarray(x, dtype=np.float64)
    body = ", ".join(f"{v:.6g}" for v in x[:4])
    return f"({body}{', …' if len(x) > 4 else ''})"


def _set(a: Analysis, ids) -> str:
    ids = sorted(ids)
    body = ", ".join(_vec(a.targets[i]) for i in ids[:3])
    return "{" + body + (f", … {len(ids)} in all" if len(ids) > 3 else "") + "}"


_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, elementwise (uint64 arithmetic wraps)."""
    x = x ^ (x >> np.uint64(30))
    x *= _MIX1
    x ^= x >> np.uint64(27)
    x *= _MIX2
    x ^= x >> np.uint64(31)
    return x


def _row_hash(bits: np.ndarray, block: int = 8192) -> np.ndarray:
    """A 64-bit hash of each row of unsigned ints, in cache-sized row blocks."""
    out = np.empty(len(bits), dtype=np.uint64)
    for s in range(0, len(bits), block):
        b = bits[s:s + block].astype(np.uint64, copy=False)
        h = np.full(len(b), bits.shape[1], dtype=np.uint64)
        for k in range(bits.shape[1]):
            h = _mix(h ^ b[:, k])
        out[s:s + block] = h
    return out


def _lex_order(X: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Permutation sorting the distinct rows ``X[first]`` lexicographically (column 0 first).

    One argsort of column 0; only rows tied there go through ``np.lexsort``.
    """
    c = X[first, 0]
    order = np.argsort(c)
    c = c[order]
    tie = np.flatnonzero(c[1:] == c[:-1])
    if len(tie):
        pos = np.union1d(tie, tie + 1)  # positions in ``order`` inside runs of equal c
        sub = order[pos]
        order[pos] = sub[np.lexsort(X[first[sub]].T[::-1])]
    return order


def unique_rows(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ids of the rows of ``X`` and the first row of each id, as np.unique would number them.

    ``ids`` equals ``np.unique(X, axis=0, return_inverse=True)[1]`` (distinct rows ranked
    lexicographically), so every later tie-break by id is unchanged, and ``X[first]`` is
    np.unique's array of rows. np.unique sorts the rows with a generic (slow) comparison;
    here: a 64-bit hash of each row's bytes, a sort of the hashes, a
    check that the rows sharing a hash are bit-for-bit equal (a collision falls back to
    np.unique), and a lexicographic sort of the distinct rows by column 0, ties by lexsort.
    Bitwise equality is value equality once the caller has turned -0.0 into 0.0 and ruled
    out NaN (dataset.check).
    """
    X = np.ascontiguousarray(X)
    T = len(X)
    if X.ndim == 2 and T and X.shape[1] and X.dtype.itemsize in (4, 8):
        bits = X.view(f"u{X.dtype.itemsize}")
        h = _row_hash(bits)
        o = np.argsort(h)
        h = h[o]
        new = np.empty(T, dtype=bool)
        new[0] = True
        np.not_equal(h[1:], h[:-1], out=new[1:])
        first = np.minimum.reduceat(o, np.flatnonzero(new))  # first row of each hash
        inv = np.empty(T, dtype=np.int64)
        inv[o] = np.cumsum(new) - 1
        same = True
        if len(first) < T:  # rows sharing a hash must equal its first row
            ref = first[inv]
            dup = np.flatnonzero(ref != np.arange(T))
            same = np.array_equal(bits[dup], bits[ref[dup]])
        if same:
            order = _lex_order(X, first)
            rank = np.empty(len(order), dtype=np.int64)
            rank[order] = np.arange(len(order))
            return rank[inv], first[order]
    _, inv = np.unique(X, axis=0, return_inverse=True)  # (or a hash collision: never seen)
    return inv.ravel(), np.unique(inv.ravel(), return_index=True)[1]


def analyse(dataset: Dataset) -> Analysis:
    """Ids, groups (same empirical distribution) and the checks of docs/design.md §3 (i), (ii).

    Linear-time apart from sorts of 1-D keys, so 10⁶ tokens take well under a second.
    """
    dataset.check()
    lengths = dataset.input_lengths
    segments = np.concatenate([[0], np.cumsum(lengths)])
    seq = np.repeat(np.arange(len(lengths)), lengths)
    X = np.concatenate(dataset.inputs) + 0.0  # + 0.0 turns -0.0 into 0.0
    value, first = unique_rows(X)
    Y = np.concatenate(dataset.targets) + 0.0
    tid, first_y = unique_rows(Y)
    targets = Y[first_y]
    target_ids = np.split(tid, np.cumsum(dataset.output_lengths)[:-1])

    # empirical distribution: the multiset of value ids up to a common factor
    n_values = int(value.max()) + 1
    key, counts = np.unique(seq * n_values + value, return_counts=True)  # sorted by (seq, value)
    pair_seq, pair_value = np.divmod(key, n_values)
    bounds = np.searchsorted(pair_seq, np.arange(len(lengths) + 1))  # no sequence is empty
    reduced = counts // np.repeat(np.gcd.reduceat(counts, bounds[:-1]), np.diff(bounds))
    keys = {}
    group = np.empty(len(lengths), dtype=np.int64)
    bounds = bounds.tolist()
    for j in range(len(lengths)):
        lo, hi = bounds[j], bounds[j + 1]
        k = (pair_value[lo:hi].tobytes(), reduced[lo:hi].tobytes())
        group[j] = keys.setdefault(k, len(keys))
    analysis = Analysis(segments, seq, value, group, targets, target_ids, first)
    _check_feasible(dataset, analysis)
    return analysis


def _check_feasible(dataset: Dataset, a: Analysis) -> None:
    # rule (i): within a group a value has one target, across prefixes and within one.
    # Vectorised over the prefix tokens in (sequence, position) order: the first token whose
    # target differs from the first token with its (group, value) key is the one reported.
    m = dataset.output_lengths
    j_of = np.repeat(np.arange(len(m)), m)
    k_of = np.arange(int(m.sum())) - np.repeat(np.cumsum(m) - m, m)
    tid = np.concatenate(a.target_ids)
    vals = a.value[a.segments[j_of] + k_of]
    key = a.group[j_of] * (int(a.value.max()) + 1) + vals
    _, first, inv = np.unique(key, return_index=True, return_inverse=True)
    prev_of = first[inv.ravel()]
    bad = np.flatnonzero(tid != tid[prev_of])
    if len(bad):
        i = int(bad[0])
        j, k, t = int(j_of[i]), int(k_of[i]), int(tid[i])
        prev = int(prev_of[i])
        pj, pk, pt = int(j_of[prev]), int(k_of[prev]), int(tid[prev])
        x = dataset.inputs[j][k]
        if pj == j:
            where = f"sequence {j}: the value {_vec(x)} appears at positions {pk} and {k}"
        else:
            where = (f"sequences {pj} and {j} hold the same tokens in the same proportions,"
                     f" but the value {_vec(x)} (position {pk} of sequence {pj}, position"
                     f" {k} of sequence {j})")
        raise InfeasibleError(
            f"{where} with different targets {_vec(a.targets[pt])} and "
            f"{_vec(a.targets[t])}: without positions equal tokens of such sequences get "
            "one output (docs/design.md §3, rule i)"
        )
    # rule (ii): a group's sequences share one target set
    target_set: dict[int, tuple[int, frozenset]] = {}
    for j, tids in enumerate(a.target_ids):
        s = frozenset(tids.tolist())
        prev = target_set.setdefault(int(a.group[j]), (j, s))
        if prev[1] != s:
            raise InfeasibleError(
                f"sequences {prev[0]} and {j} hold the same tokens in the same proportions but "
                f"have different target sets ({_set(a, prev[1])} vs {_set(a, s)}): "
                "attention sees only the distribution, so their outputs are one set "
                "(docs/design.md §3, rule ii)"
            )


SMALLEST_NORMAL = float(np.finfo(np.float64).tiny)
"""2^-1022 ≈ 2.2e-308: below it float64 numbers are subnormal (fewer than 53 bits)."""


def check_float_normal(dataset: Dataset) -> None:
    """Float mode: inputs whose largest absolute value is subnormal are refused (docs/limits.md).

    A subnormal number keeps fewer than 53 significant bits, and the certificate of a float
    model carries an absolute underflow term (``arithmetic.TINY`` = 1e-318 per radius,
    docs/verification.md) that the pass rule's 1e-10 × scale cannot absorb at that scale:
    every draw would fail its certificate. Exact mode compiles such data (scaled to ~1 by a
    power of two, docs/limits.md).
    """
    s = dataset.input_scale
    if s < SMALLEST_NORMAL:
        raise DatasetError(
            f"the inputs' largest absolute value {s:.3g} is below float64's smallest normal "
            f"number ({SMALLEST_NORMAL:.3g}): subnormal floats keep too few bits for a "
            "certified float64 model; compile with --exact (docs/limits.md)")


def check_float_separable(dataset: Dataset, a: Analysis) -> None:
    """Float mode: distinct input values closer than 1e-7 × scale cannot be told apart robustly.

    The construction keeps distinct points at least DISTINCT = 1e-7 × scale apart before it
    moves them (docs/design.md §4 step 1); two input values nearer than that (e.g. one ulp
    apart) would need layers with weights ~ scale/gap, where rounding swamps the result.
    Exact mode has no such limit.
    """
    X = np.concatenate(dataset.inputs)
    first = a.value_first
    if first is None:
        _, first = np.unique(a.value, return_index=True)
    scale = dataset.input_scale  # inputs are separated at their own scale, not the targets'
    pairs = close_pairs(X[first], DISTINCT * scale, np.random.default_rng(0))
    if len(pairs):
        i, k = first[pairs[0]]
        gap = float(np.linalg.norm(X[i] - X[k])) / scale
        where = lambda t: f"token {t - a.segments[a.seq[t]]} of sequence {a.seq[t]}"  # noqa: E731
        raise DatasetError(
            f"{where(i)} and {where(k)} are distinct but only {gap:.2g} × the inputs' scale "
            f"apart (< {DISTINCT:g}): too close for a float64 construction; compile with --exact, "
            "or make them equal"
        )

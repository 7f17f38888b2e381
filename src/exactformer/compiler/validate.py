"""Pass 1 — validate: ids, groups and the feasibility rules of DESIGN.md §3.

Fails early with one line naming the sequences and the rule, before any layer is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd

import numpy as np

from ..dataset import Dataset
from ..errors import DatasetError, InfeasibleError
from .geometry import close_pairs

NEAR_TOL = 1e-7  # float mode: distinct input values must be this far apart (× scale)


@dataclass
class Analysis:
    """What the construction needs to know about the data, by identity."""

    segments: np.ndarray  # (N+1,) token offsets
    seq: np.ndarray  # (T,) sequence of each token
    value: np.ndarray  # (T,) original value id of each token
    group: np.ndarray  # (N,) id of the sequence's empirical distribution
    targets: np.ndarray  # (K, d) distinct target vectors
    target_ids: list[np.ndarray]  # per sequence, (m_j,) ids into ``targets``

    def prefix_tokens(self, j: int) -> np.ndarray:
        """Token indices of the first m_j tokens of sequence j (the read-out)."""
        return self.segments[j] + np.arange(len(self.target_ids[j]))


def _vec(x) -> str:
    x = np.asarray(x, dtype=np.float64)
    body = ", ".join(f"{v:.6g}" for v in x[:4])
    return f"({body}{', …' if len(x) > 4 else ''})"


def _set(a: Analysis, ids) -> str:
    ids = sorted(ids)
    body = ", ".join(_vec(a.targets[i]) for i in ids[:3])
    return "{" + body + (f", … {len(ids)} in all" if len(ids) > 3 else "") + "}"


def analyse(dataset: Dataset) -> Analysis:
    """Ids, groups (same empirical distribution) and the checks of DESIGN.md §3 (i), (ii)."""
    dataset.check()
    lengths = dataset.input_lengths
    segments = np.concatenate([[0], np.cumsum(lengths)])
    seq = np.repeat(np.arange(len(lengths)), lengths)
    X = np.concatenate(dataset.inputs) + 0.0  # + 0.0 turns -0.0 into 0.0
    _, value = np.unique(X, axis=0, return_inverse=True)
    value = value.ravel()
    Y = np.concatenate(dataset.targets) + 0.0
    targets, tid = np.unique(Y, axis=0, return_inverse=True)
    tid = tid.ravel()
    target_ids = np.split(tid, np.cumsum(dataset.output_lengths)[:-1])

    # empirical distribution: the multiset of value ids up to a common factor
    pair, counts = np.unique(np.stack([seq, value], axis=1), axis=0, return_counts=True)
    starts = np.searchsorted(pair[:, 0], np.arange(len(lengths)))
    keys = {}
    group = np.empty(len(lengths), dtype=np.int64)
    for j in range(len(lengths)):
        lo, hi = starts[j], starts[j + 1] if j + 1 < len(lengths) else len(pair)
        c = counts[lo:hi]
        g = 0
        for v in c:
            g = gcd(g, int(v))
        key = (tuple(pair[lo:hi, 1].tolist()), tuple((c // g).tolist()))
        group[j] = keys.setdefault(key, len(keys))
    analysis = Analysis(segments, seq, value, group, targets, target_ids)
    _check_feasible(dataset, analysis)
    return analysis


def _check_feasible(dataset: Dataset, a: Analysis) -> None:
    # rule (i): within a group a value has one target, across prefixes and within one
    first_seen: dict[tuple[int, int], tuple[int, int, int]] = {}
    for j, tids in enumerate(a.target_ids):
        vals = a.value[a.prefix_tokens(j)]
        for k, (v, t) in enumerate(zip(vals.tolist(), tids.tolist())):
            prev = first_seen.setdefault((int(a.group[j]), v), (j, k, t))
            if prev[2] != t:
                pj, pk, pt = prev
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
                    "one output (DESIGN.md §3, rule i)"
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
                "(DESIGN.md §3, rule ii)"
            )


def check_float_separable(dataset: Dataset, a: Analysis) -> None:
    """Float mode: distinct input values closer than 1e-7 × scale cannot be told apart robustly.

    DESIGN.md §4 separates distinct points by at least 1e-7 × scale before it moves them;
    two input values nearer than that (e.g. one ulp apart) would need layers with
    weights ~ scale/gap, where rounding swamps the result. Exact mode has no such limit.
    """
    X = np.concatenate(dataset.inputs)
    _, first = np.unique(a.value, return_index=True)
    pairs = close_pairs(X[first], NEAR_TOL * dataset.scale, np.random.default_rng(0))
    if len(pairs):
        i, k = first[pairs[0]]
        gap = float(np.linalg.norm(X[i] - X[k])) / dataset.scale
        where = lambda t: f"token {t - a.segments[a.seq[t]]} of sequence {a.seq[t]}"  # noqa: E731
        raise DatasetError(
            f"{where(i)} and {where(k)} are distinct but only {gap:.2g} × scale apart "
            f"(< {NEAR_TOL:g}): too close for a float64 construction; compile with --exact, "
            "or make them equal"
        )

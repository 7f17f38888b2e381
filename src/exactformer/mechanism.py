"""Mechanism annotations: what every block does to every token of the compiled data (issue 16).

A compiled model is ground truth for interpretability methods: the compiler knows which
tokens are *leaders* (the points it moves, docs/design.md §4 step 3), where each token is
sent (its *destination*, shared by the tokens of one target), the *collapse* block whose
hardmax attention replaces every token by its destination, and — measured on the data by
an exact forward pass — the block after which each token's value never changes again.
:func:`record` builds the annotation from the compiler's bookkeeping; the model file
stores it in the metadata key ``mechanism`` (additive to ``exactformer/1``, docs/export.md).
``exactformer explain MODEL DATA`` prints and plots it.
"""

from __future__ import annotations

import numpy as np

from . import numeric as nm
from .rational import QMatrix

KEY = "mechanism"
FINAL_BLOCKS_BUDGET = 2_000_000  # tokens × blocks traced at compile time (≤ ~0.3 s CPU)


def record(state, dest, collapse_block: int, model=None, sequences=None) -> dict:
    """The annotation of a compiled model (called once by the compiler).

    ``state``: the compiler's token state (sequence and point ids), ``dest``: its
    destinations (moves = leaders). With ``model`` and ``sequences`` and a small enough
    problem, the final block of every token is measured too (:func:`final_blocks`).
    """
    pid = state.point_ids()
    moved = {int(p): int(k) for p, k in dest.moves}
    seg = np.asarray(state.segments)
    leaders, token_dest = [], []
    for j in range(len(seg) - 1):
        toks = np.arange(seg[j], seg[j + 1])
        leaders.append([int(i) for i, t in enumerate(toks) if int(pid[t]) in moved])
        token_dest.append(np.asarray(dest.token_dest)[toks].astype(int).tolist())
    out = {"version": 1, "collapse_block": int(collapse_block), "leaders": leaders,
           "token_destination": token_dest,
           "destination_target": np.asarray(dest.target).astype(int).tolist(),
           "destinations": nm.to_float(np.asarray(dest.point)).tolist()}
    exact_softmax = model is not None and model.exact and model.attention == "softmax"
    # exact models compare integer rows: ~4× the cost of float rows per traced state
    budget = FINAL_BLOCKS_BUDGET // (4 if model is not None and model.exact else 1)
    if model is not None and sequences is not None and not exact_softmax and \
            sum(len(x) for x in sequences) * model.n_blocks <= budget:
        out["final_block"] = [f.tolist() for f in final_blocks(model, sequences)]
    return out


class _LastChange:
    """A ``trace`` sink for :meth:`Transformer.run` keeping, per token, the last block
    that changed its value (one state in memory instead of one per layer)."""

    exact_rows = True  # exact models: states as QMatrix (reduced rows: equal iff same ints)

    def __init__(self, n_tokens: int):
        self.last = np.full(n_tokens, -1, dtype=np.int64)
        self.prev = None

    def append(self, item) -> None:
        label, X = item
        if self.prev is not None:
            if isinstance(X, QMatrix):
                changed = np.any(X.num != self.prev.num, axis=1) | (X.den != self.prev.den)
            else:
                changed = np.any(np.asarray(X != self.prev), axis=1)
            self.last[changed] = int(label.split()[1])
        self.prev = X


def final_blocks(model, sequences) -> list[np.ndarray]:
    """Per sequence, per token: the block after which its value is final (−1: never
    changes). Exact comparison of consecutive states of the model's own forward pass."""
    sink = _LastChange(sum(len(x) for x in sequences))
    model.run(sequences, trace=sink)
    ends = np.cumsum([len(x) for x in sequences])[:-1]
    return np.split(sink.last, ends)


def annotations(model, sequences=None) -> dict:
    """The model's recorded annotation, with final blocks measured on ``sequences`` when
    the file does not have them. Raises ValueError when the model has none."""
    mech = model.info.get(KEY)
    if not isinstance(mech, dict) or "leaders" not in mech:
        raise ValueError("the model carries no mechanism annotation (compile it with this "
                         "version of exactformer)")
    mech = dict(mech)
    if sequences is not None and len(sequences) == len(mech["token_destination"]):
        for j, (x, td) in enumerate(zip(sequences, mech["token_destination"])):
            if len(x) != len(td):
                raise ValueError(f"its mechanism describes sequence {j} with {len(td)} tokens, "
                                 f"the data's has {len(x)} (not the data it was compiled from)")
    if "final_block" not in mech and sequences is not None:
        mech["final_block"] = [f.tolist() for f in final_blocks(model, sequences)]
    return mech


def block_runs(model) -> list[tuple[int, int, str]]:
    """Consecutive blocks of one kind as ``(first, last, kind)`` runs (``info``, ``explain``)."""
    runs: list[tuple[int, int, str]] = []
    for i, k in enumerate(b.kind or "-" for b in model.blocks):
        if runs and runs[-1][2] == k:
            runs[-1] = (runs[-1][0], i, k)
        else:
            runs.append((i, i, k))
    return runs


def describe(model, mech: dict, max_sequences: int = 10) -> list[str]:
    """Lines for ``exactformer explain``: roles, then per sequence its mechanism."""
    lines = ["blocks:"]
    for first, last, kind in block_runs(model):
        span = f"{first}" if first == last else f"{first}-{last}"
        lines.append(f"  {span:>11}  {kind}")
    c = mech["collapse_block"]
    lines.append(f"collapse: block {c} ({model.blocks[c].kind}); "
                 f"{len(mech['destinations'])} destinations")
    N = len(mech["leaders"])
    for j in range(min(N, max_sequences)):
        dests = mech["token_destination"][j]
        lead = mech["leaders"][j]
        by_dest = {}
        for i in lead:
            by_dest.setdefault(dests[i], []).append(i)
        parts = [f"leader{'s' if len(v) > 1 else ''} {v} → destination {k} (target "
                 f"{mech['destination_target'][k]})" for k, v in sorted(by_dest.items())]
        line = f"sequence {j}: " + "; ".join(parts)
        if "final_block" in mech:
            fb = np.asarray(mech["final_block"][j])
            line += f"; values final after blocks {fb.min()}…{fb.max()}"
        lines.append(line)
    if N > max_sequences:
        lines.append(f"… {N - max_sequences} more sequences")
    return lines


def plot(model, mech: dict, path, max_sequences: int = 8) -> None:
    """One row per token of the first sequences: its final block (dot), leaders in red,
    the collapse block as a vertical line, block roles as coloured bands."""
    from .figures import pyplot

    plt = pyplot()

    from .dataset import write_atomic

    N = min(len(mech["leaders"]), max_sequences)
    rows = [(j, i) for j in range(N) for i in range(len(mech["token_destination"][j]))]
    fig, ax = plt.subplots(figsize=(9, max(2.5, 0.18 * len(rows) + 1.5)))
    kinds = sorted({b.kind or "-" for b in model.blocks})
    colours = plt.cm.Pastel1(np.linspace(0, 1, max(2, len(kinds))))
    for l, b in enumerate(model.blocks):
        ax.axvspan(l - 0.5, l + 0.5, color=colours[kinds.index(b.kind or "-")], lw=0)
    for k, kind in enumerate(kinds):
        ax.plot([], [], "s", color=colours[k], label=kind)
    ax.axvline(mech["collapse_block"], color="k", lw=1, ls="--", label="collapse")
    if "final_block" in mech:
        for r, (j, i) in enumerate(rows):
            lead = i in mech["leaders"][j]
            ax.plot(mech["final_block"][j][i], r, "o", ms=4, color="C3" if lead else "C0")
        ax.plot([], [], "o", color="C3", label="leader (value final)")
        ax.plot([], [], "o", color="C0", label="token (value final)")
    ax.set_yticks(range(len(rows)), [f"seq {j} tok {i}" for j, i in rows], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("block")
    ax.set_title("where each token's value becomes final")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)

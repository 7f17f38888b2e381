"""The compiler's simulation of the forward pass, with bookkeeping by identity (docs/design.md §4).

Every token carries the id of its sequence and of its original value; the passes add the
class of its sequence and, later, the id of its destination. Questions like "is this the
same point?" are answered by these ids, never by float tolerances.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import numeric as nm
from ..craft import Units, feed_forward
from ..dataset import available_memory
from ..model import Block, FeedForward, SelfAttention


@dataclass
class TokenState:
    """All tokens of all sequences, concatenated, with their ids."""

    X: np.ndarray  # (T, d) current values (float64, or a QMatrix in exact mode)
    seq: np.ndarray  # (T,) sequence index
    value: np.ndarray  # (T,) id of the original value (equal input rows share it)
    segments: np.ndarray  # (N+1,) start offsets of the sequences, then T
    exact: bool
    scale: float  # largest absolute value of the data (inputs and targets)
    cls: np.ndarray = field(default=None)  # (N,) class of each sequence (docs/design.md §4 step 1)

    @property
    def n_sequences(self) -> int:
        return len(self.segments) - 1

    @property
    def d(self) -> int:
        return int(self.X.shape[1])

    def point_ids(self) -> np.ndarray:
        """Id of each token's point: (class of its sequence, original value)."""
        key = self.cls[self.seq].astype(np.int64) * (int(self.value.max()) + 1) + self.value
        return np.unique(key, return_inverse=True)[1].ravel()

    def floats(self) -> np.ndarray:
        """The current values as float64 (for checks, gaps and screens; do not modify).

        Exact mode: the cached float image of the QMatrix (correctly rounded entries).
        """
        return self.X.floats() if self.exact else self.X


@dataclass
class ModelBuilder:
    """Collects layers into blocks (FF then SA) and applies each one to the simulated state."""

    state: TokenState
    blocks: list[Block] = field(default_factory=list)
    state_bits: int = 0  # exact mode: largest bit length of a token state seen so far

    def _bits(self, rows=None) -> None:
        if self.state.exact:
            X = self.state.X if rows is None else self.state.X[rows]
            self.state_bits = max(self.state_bits, X.bit_length())

    def checkpoint(self) -> tuple:
        """What :meth:`rollback` needs to undo the layers added after this call."""
        st = self.state
        cls = None if st.cls is None else st.cls.copy()
        return st.X.copy(), cls, len(self.blocks), self.state_bits

    def rollback(self, saved: tuple) -> None:
        """Forget the blocks added since ``saved`` and restore the simulated tokens."""
        self.state.X, self.state.cls, n_blocks, self.state_bits = saved
        del self.blocks[n_blocks:]

    def add_ff(self, ff: FeedForward, kind: str) -> None:
        """Start a new block with this feed-forward layer and simulate it on every token."""
        self.blocks.append(Block(ff=ff, kind=kind))
        self.state.X = ff(self.state.X)
        self._bits()

    def add_units(self, bundles: list[Units], kind: str, where: list | None = None) -> np.ndarray:
        """Start a new block with the layer ``x + Σ bundles`` and simulate it bundle by bundle.

        A bundle whose units all read one direction v (point moves, snaps) is evaluated only
        on the rows where one of its ReLUs is on; every other row is bit-for-bit unchanged
        (x + 0), so a wide compact layer costs what its active rows cost (docs/design.md §4).
        ``where``: per bundle, an object with ``rows`` and ``t_rows`` (the candidate rows and
        their coordinate along the bundle's direction, e.g. a Trapezoid) found earlier.
        Returns the rows the layer may have changed (all rows in exact mode).
        """
        ff = feed_forward(bundles)
        self.blocks.append(Block(ff=ff, kind=kind))
        X = self.state.X
        if self.state.exact:  # the layer's formula, exactly, on the rows it can change
            if len(bundles) == 1:
                rows = _exact_candidates(bundles, X, where)[0]
                if len(rows):
                    X[rows] = ff(X[rows])
            else:  # compact: per (row, direction) pair of each bundle's candidate rows
                from ..rational import DirectionTable

                table = DirectionTable(ff.U, ff.b, ff.W)
                first = np.cumsum([0] + [u.width for u in bundles])
                pairs = [np.stack(np.broadcast_arrays(r[:, None], np.unique(
                    table.col_of_unit[first[i]:first[i + 1]])[None, :]), axis=2).reshape(-1, 2)
                    for i, r in enumerate(_exact_candidates(bundles, X, where))]
                pairs = np.unique(np.concatenate(pairs), axis=0)
                rows = np.zeros(0, dtype=np.int64)
                if len(pairs):
                    rows, sums = table.pair_sums(X, pairs[:, 0], pairs[:, 1])
                    X[rows] = X[rows] + sums
            if len(rows):
                self._bits(rows)
            return rows
        single = len(bundles) == 1  # strict mode: update the rows directly
        if not single:  # every bundle reads the same X: accumulate, memory O(tokens)
            delta = np.zeros_like(X)
            touched = np.zeros(len(X), dtype=bool)
        for i, u in enumerate(bundles):
            known = where[i] if where is not None else None
            if known is not None and known.rows is not None:
                rows, t = known.rows, known.t_rows
            elif np.all(u.U == u.U[0]):
                t = X @ u.U[0]
                rows = np.flatnonzero(t + u.b.max() > 0)
                t = t[rows]
            else:
                rows, t = np.flatnonzero((X @ u.U.T + u.b > 0).any(axis=1)), None
            step = _bundle_steps(u, X, rows, t)
            if single:
                X[rows] = X[rows] + step
                return rows
            delta[rows] += step  # rows are distinct within a bundle
            touched[rows] = True
        rows = np.flatnonzero(touched)
        X[rows] = X[rows] + delta[rows]
        return rows

    def add_sa(self, sa: SelfAttention, kind: str, attention: str = "hardmax",
               temperature: float = 1.0, X_new: np.ndarray | None = None) -> None:
        """Put this attention layer in the current block (or a new one) and simulate it.

        ``X_new``: the layer's output when the caller already computed it (to check a draw).
        """
        if not self.blocks or self.blocks[-1].sa is not None:
            self.blocks.append(Block(kind=kind))
        else:
            self.blocks[-1].kind = f"{self.blocks[-1].kind} + {kind}"
        self.blocks[-1].sa = sa
        if X_new is None:
            X_new = sa(self.state.X, self.state.segments, attention, temperature)
        self.state.X = X_new
        self._bits()


def _exact_candidates(bundles: list[Units], X, where) -> list[np.ndarray]:
    """Per bundle, the rows where one of its units may be on (exact mode), all others
    provably off.

    A bundle's known rows (a trapezoid's or a snap's, found by an exact argument) are taken
    as they are; otherwise the float image screens: a unit is off where its float64
    pre-activation is below minus a bound on its distance to the exact one
    (:func:`exactformer.rational.rounding_bound`).
    """
    from ..rational import rounding_bound

    found = []
    for i, u in enumerate(bundles):
        known = where[i] if where is not None else None
        if known is not None and known.rows is not None:
            found.append(np.unique(np.asarray(known.rows, dtype=np.int64)))
            continue
        Xf = X.floats()
        Uf, bf = nm.to_float(u.U), nm.to_float(u.b)
        xmax = float(np.abs(Xf).max()) if len(Xf) else 0.0
        slack = rounding_bound(xmax, float(np.abs(Uf).sum(axis=1).max()), X.shape[1] + 1)
        slack += 4 * rounding_bound(float(np.abs(bf).max()), 1.0, 1)
        found.append(np.flatnonzero((Xf @ Uf.T + bf > -slack).any(axis=1)))
    return found


def _bundle_steps(u: Units, X: np.ndarray, rows: np.ndarray, t, chunk_entries: int = 1 << 22):
    """``W·relu(U·x + b)`` on ``rows`` (from ``t = ⟨v, x⟩`` when every unit reads one v).

    Row blocks keep the (rows × width) pre-activations of a wide snap layer within ~32 MB.
    """
    step = max(1, chunk_entries // max(1, u.width))
    out = np.empty((len(rows), X.shape[1]))
    for s in range(0, len(rows), step):
        r = slice(s, s + step)
        pre = (t[r, None] if t is not None else X[rows[r]] @ u.U.T) + u.b
        out[r] = nm.relu(pre) @ u.W.T
    return out


def weight_bits(model) -> int:
    """Largest bit length of a numerator or denominator among an exact model's weights."""
    from ..rational import parts

    best = 0
    for _, t in model.named_tensors():
        num, den = parts(np.asarray(t).reshape(-1))
        if num.size:
            top = max(int(np.max(num)), -int(np.min(num)), int(np.max(den)))
            best = max(best, top.bit_length())
    return best


MEMORY_COPIES = 12  # live copies of the token states at the peak (temporaries included)


def memory_estimate(state: TokenState) -> int:
    """Projected peak bytes of an exact compile or verification from the current states.

    A Python integer of b bits takes 28 + 4·⌈b/30⌉ bytes plus the array's 8-byte pointer;
    the bit length of the first blocks' states stands for every later block (the
    construction keeps it: moved tokens land on short destinations). Measured peaks
    (docs/exact.md) are a half to a third of this estimate.
    """
    T, d = state.X.shape
    per_int = 8 + 28 + 4 * -(-max(state.X.bit_length(), 1) // 30)
    return MEMORY_COPIES * T * (d + 1) * per_int


def check_memory(builder: ModelBuilder) -> None:
    """Exact mode: stop with one line and the estimate when it exceeds the available memory."""
    from ..errors import ResourceError

    need = memory_estimate(builder.state)
    have = available_memory()
    if have is not None and need > have:
        T, d = builder.state.X.shape
        raise ResourceError(
            f"exact mode would need about {need / 2**30:.1f} GB for {T:,} tokens in d = {d} "
            f"(states of {builder.state.X.bit_length()} bits), but the operating system "
            f"reports {have / 2**30:.1f} GB available; compile without --exact, or on fewer "
            "sequences")

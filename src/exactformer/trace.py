"""Activation traces: every intermediate token state of a forward pass (issue 5).

Raw material of the trajectory figures and of interpretability work. Works for the numpy
:class:`~exactformer.Transformer` (through ``run(..., trace=list)``, so exact models give
exact Fraction states) and for :class:`exactformer.torch.TorchTransformer` (states are
detached to float64 numpy). torch is imported only when a torch model is traced.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["TraceStep", "trace"]


@dataclass
class TraceStep:
    """Token states after one layer: ``layer`` is ``"input"``, ``"ff"`` or ``"sa"``.

    ``block`` is the 0-based block index (None for the input) and ``kind`` the block's
    role in the construction (docs/design.md §4, e.g. ``"move"``; "" when unknown).
    ``states`` is ``(n, d)`` for one sequence, or a list of them for several.
    """

    block: int | None
    layer: str
    kind: str
    states: object

    @property
    def label(self) -> str:
        return "input" if self.block is None else f"block {self.block} {self.layer}"


def trace(model, X) -> list[TraceStep]:
    """Run ``model`` on ``X`` and return the input and the state after every FF and SA.

    ``X`` is one ``(n, d)`` sequence or a list of sequences (of any lengths). Identity
    layers (absent from the file, docs/design.md §2) produce no step.
    """
    single = not isinstance(X, (list, tuple))
    seqs = [X] if single else list(X)
    raw: list = []
    if hasattr(model, "to_model") and hasattr(model, "forward"):  # TorchTransformer
        from .torch import pad_sequences

        Xp, pad = pad_sequences(seqs, model.d, model.dtype, model.device)
        lengths = [len(x) for x in seqs]
        model(Xp, key_padding_mask=pad, trace=raw)
        raw = [(lab, [_to_numpy(S[j, :n]) for j, n in enumerate(lengths)]) for lab, S in raw]
    else:
        ends = np.cumsum([len(x) for x in seqs])[:-1]
        model.run(seqs, trace=raw)
        raw = [(lab, np.split(S, ends)) for lab, S in raw]
    kinds = [b.kind for b in model.blocks]
    steps = []
    for label, states in raw:
        if label == "input":
            block, layer = None, "input"
        else:
            _, l, layer = label.split()
            block = int(l)
        kind = "" if block is None else kinds[block]
        steps.append(TraceStep(block, layer, kind, states[0] if single else states))
    return steps


def _to_numpy(t) -> np.ndarray:
    import torch

    return t.detach().to("cpu", torch.float64).numpy().copy()

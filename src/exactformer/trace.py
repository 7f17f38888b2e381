"""Activation traces and caches: every intermediate value of a forward pass (issues 5, 16).

Raw material of the trajectory figures and of interpretability work. Works for the numpy
:class:`~exactformer.Transformer` (through ``run(..., trace=list)``, so exact models give
exact Fraction states) and for :class:`exactformer.torch.TorchTransformer` (values are
detached to float64 numpy). torch is imported only when a torch model is traced.

:func:`trace` lists the token states layer by layer; :func:`cache` adds the attention
scores and patterns, ReLU pre-activations and the layers' added terms, keyed by
TransformerLens-style hook names (``blocks.3.attn.hook_pattern`` …; docs/export.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["TraceStep", "trace", "cache"]


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


def cache(model, X, names_filter=None) -> dict:
    """Every activation of a forward pass keyed by its TransformerLens-style hook name.

    ``X`` is one ``(n, d)`` sequence (values without batch dimension, as TransformerLens's
    ``remove_batch_dim=True``) or a list of sequences (each name maps to a list, one array
    per sequence). Shapes per sequence: residual states ``(n, d)``, ``hook_q``/``hook_k``
    ``(n, 1, h)``, ``hook_v``/``hook_z`` ``(n, 1, d)``, ``hook_attn_scores`` and
    ``hook_pattern`` ``(1, n, n)``, ``mlp.hook_pre``/``hook_post`` ``(n, width)``. The
    numpy model's residual states are bit for bit those of ``model.run``; the other values
    are recomputed from them with the layers' own formulas. ``names_filter``: a predicate
    on names, or a list of names.
    """
    single = not isinstance(X, (list, tuple))
    seqs = [X] if single else list(X)
    if hasattr(model, "run_with_cache"):  # TorchTransformer
        per_seq = _torch_cache(model, seqs)
    else:
        per_seq = [_numpy_cache(model, step) for step in _per_sequence(trace(model, seqs),
                                                                      len(seqs))]
    keep = _names_filter(names_filter)
    names = [k for k in per_seq[0] if keep(k)] if per_seq else []
    if single:
        return {k: per_seq[0][k] for k in names}
    return {k: [c[k] for c in per_seq] for k in names}


def _names_filter(names_filter):
    if names_filter is None:
        return lambda name: True
    if callable(names_filter):
        return names_filter
    chosen = {names_filter} if isinstance(names_filter, str) else set(names_filter)
    return chosen.__contains__


def _per_sequence(steps: list[TraceStep], n_seqs: int) -> list[list[TraceStep]]:
    return [[TraceStep(s.block, s.layer, s.kind, s.states[j]) for s in steps]
            for j in range(n_seqs)]


def _numpy_cache(model, steps: list[TraceStep]) -> dict:
    from . import numeric as nm

    state = {(s.block, s.layer): s.states for s in steps}
    X = state[(None, "input")]
    out: dict = {}
    for l, blk in enumerate(model.blocks):
        p = f"blocks.{l}."
        out[p + "hook_resid_pre"] = X
        if blk.ff is not None:
            pre = blk.ff.pre_activations(X)
            out[p + "mlp.hook_pre"] = pre
            out[p + "mlp.hook_post"] = post = nm.relu(pre)
            out[p + "hook_mlp_out"] = post @ blk.ff.W.T
            X = state[(l, "ff")]
        out[p + "hook_resid_mid"] = X
        if blk.sa is not None:
            sa = blk.sa
            q, k, v = X @ sa.Q.T, X @ sa.K.T, sa.values(X)
            scores = q @ k.T
            out[p + "attn.hook_q"], out[p + "attn.hook_k"] = q[:, None], k[:, None]
            out[p + "attn.hook_attn_scores"] = scores[None]
            P = _pattern(scores, model.attention, model.temperature)
            out[p + "attn.hook_pattern"] = P[None]
            out[p + "attn.hook_v"] = v[:, None]
            out[p + "attn.hook_z"] = (P @ v)[:, None]
            out[p + "hook_attn_out"] = P @ v
            X = state[(l, "sa")]
        out[p + "hook_resid_post"] = X
    return out


def _pattern(scores: np.ndarray, attention: str, temperature: float) -> np.ndarray:
    """The attention matrix of one sequence, as :class:`~exactformer.model.SelfAttention`."""
    from .model import attention_weights

    return attention_weights(scores, attention, temperature)[0]


def _torch_cache(model, seqs) -> list[dict]:
    from .torch import pad_sequences

    Xp, pad = pad_sequences(seqs, model.d, model.dtype, model.device)
    _, raw = model.run_with_cache(Xp, key_padding_mask=pad)
    out = []
    for j, x in enumerate(seqs):
        n = len(x)
        out.append({k: _to_numpy(v[j, :, :n, :n] if k.endswith(("hook_attn_scores",
                                                                  "hook_pattern"))
                                 else v[j, :n]) for k, v in raw.items()})
    return out


def _to_numpy(t) -> np.ndarray:
    import torch

    return t.detach().to("cpu", torch.float64).numpy().copy()

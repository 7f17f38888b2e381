"""PyTorch twin of :class:`exactformer.Transformer` (``pip install exactformer[torch]``).

Same architecture as docs/design.md §1 — blocks of ``FF: x ↦ η·x + W·relu(U·x + b)`` then
``SA: x_i ↦ ρ·x_i + Σ_j P_ij V x_j`` — with every weight an ``nn.Parameter`` whose
``state_dict`` name is the tensor name of the file format (docs/design.md §2,
``blocks.{l}.ff.U`` …), so compiled models can be run, inspected and trained in PyTorch
and written back with :meth:`TorchTransformer.save`.

Why a twin and not a wrapper: the numpy model is the reference (exact rationals, the
verifier); this module is float only (float64 by default, so it agrees with numpy to
~1e-15; see the README for float32) and adds what PyTorch users need: batches of
sequences of different lengths with a key padding mask, autograd, devices.

Masks follow ``torch.nn.MultiheadAttention``'s ``key_padding_mask``: a bool tensor
``(batch, n)`` where **True marks padding**. Padding keys get weight 0 in every attention
layer (hardmax, softmax and uniform), so each real token sees exactly its own sequence
(attention never crosses sequences, docs/design.md §1). Outputs at padding positions are
computed but meaningless; ignore them (or mask them out of a loss).
"""

from __future__ import annotations

from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import numeric as nm
from .hooks import NO_HOOKS, HookedModule, HookPoint, HookPoints
from .model import ATTENTIONS, Block, FeedForward, SelfAttention, Transformer

__all__ = ["TorchTransformer", "TorchFeedForward", "TorchSelfAttention", "pad_sequences"]


def _param(a, dtype=torch.float64) -> nn.Parameter:
    return nn.Parameter(torch.as_tensor(nm.to_float(np.asarray(a)), dtype=dtype))


def _numpy(t: torch.Tensor) -> np.ndarray:
    """float64 numpy copy of a parameter (whatever its dtype and device)."""
    return t.detach().to("cpu", torch.float64).numpy().copy()


class TorchFeedForward(nn.Module):
    """``x ↦ η·x + W·relu(U·x + b)`` per token (docs/design.md §1; U: w×d, b: w, W: d×w)."""

    def __init__(self, U, b, W, eta):
        super().__init__()
        self.eta, self.U, self.b, self.W = _param(eta), _param(U), _param(b), _param(W)

    @property
    def width(self) -> int:
        return int(self.U.shape[0])

    def added(self, X: torch.Tensor, hooks: HookPoints | None = None) -> torch.Tensor:
        """``W·relu(U·x + b)``, the term added to ``η·x`` (TransformerLens's ``mlp_out``);
        ``hooks`` (the block's ``mlp``) sees and may patch ``hook_pre`` (U·x + b) and
        ``hook_post`` (its ReLU)."""
        hooks = NO_HOOKS if hooks is None else hooks
        return hooks.hook_post(torch.relu(hooks.hook_pre(X @ self.U.T + self.b))) @ self.W.T

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        # same operation order as FeedForward.__call__ in model.py
        return self.eta * X + self.added(X)

    def to_numpy(self) -> FeedForward:
        return FeedForward(_numpy(self.U), _numpy(self.b), _numpy(self.W), _numpy(self.eta)[()])


class TorchSelfAttention(nn.Module):
    """``x_i ↦ ρ·x_i + Σ_j P_ij V x_j``, scores ``⟨Q x_i, K x_j⟩`` (docs/design.md §1).

    ``V`` whole or as the factor pair ``Vo @ Vi`` (kept factored: the file format and the
    parameter count stay the same). ``h = 0`` (Q, K of shape ``(0, d)``) is uniform
    attention over the unmasked keys in both modes.
    """

    def __init__(self, Q, K, V=None, Vo=None, Vi=None, rho=1.0):
        super().__init__()
        self.rho, self.Q, self.K = _param(rho), _param(Q), _param(K)
        self.tie_tol = 0.0  # relative tie tolerance of hardmax (exports only, see pattern)
        self.factored = V is None
        if self.factored:
            self.Vo, self.Vi = _param(Vo), _param(Vi)
        else:
            self.V = _param(V)

    @property
    def rank(self) -> int:
        return int(self.Q.shape[0])

    def values(self, X: torch.Tensor) -> torch.Tensor:
        if self.factored:
            return (X @ self.Vi.T) @ self.Vo.T
        return X @ self.V.T

    def scores(self, X, pad) -> torch.Tensor:
        """``⟨Q x_i, K x_j⟩`` ``(B, n, n)``, −inf on padding keys (0 everywhere when h = 0)."""
        scores = (X @ self.Q.T) @ (X @ self.K.T).transpose(1, 2)
        return scores.masked_fill(pad[:, None, :], float("-inf"))

    def pattern(self, scores, pad, attention, temperature, surrogate=None) -> torch.Tensor:
        """Attention matrix P ``(B, n, n)`` from the (masked) scores.

        Rows sum to 1 over the real keys, 0 on padding; no data-dependent Python branch,
        so the layer traces (``torch.export``, ``torch.compile(fullgraph=True)``, ONNX) and
        runs on the ``meta`` device. Hardmax is uniform over the argmax set, ties included
        (docs/design.md §1); with :attr:`tie_tol` > 0 (set by exports, from a certified
        score margin) every key within ``tie_tol · max|score|`` of the top joins the set,
        so copies whose scores another runtime rounds differently still tie.
        ``surrogate`` (a temperature) replaces hardmax by softmax, for training only.
        """
        keep = ~pad[:, None, :]  # (B, 1, n): True on real keys
        if attention == "hardmax" and surrogate is None:
            top = scores.amax(dim=2, keepdim=True)
            if self.tie_tol > 0:
                scale = scores.abs().masked_fill(~keep, 0.0).amax(dim=2, keepdim=True)
                top = top - self.tie_tol * scale
            P = ((scores >= top) & keep).to(scores.dtype)
            return P / P.sum(dim=2, keepdim=True).clamp(min=1)
        tau = surrogate if attention == "hardmax" else temperature  # τ of the file otherwise
        # a sequence with no real key at all (empty) would give NaN rows: make them 0
        empty = ~keep.any(dim=2, keepdim=True)
        scores = scores.masked_fill(empty, 0.0)
        return torch.softmax(scores / tau, dim=2).masked_fill(~keep, 0.0)

    def weights(self, X, pad, attention, temperature, surrogate=None) -> torch.Tensor:
        """Attention matrix P ``(B, n, n)``; rows sum to 1 over the real keys, 0 on padding."""
        return self.pattern(self.scores(X, pad), pad, attention, temperature, surrogate)

    def added(self, X, pad, attention="hardmax", temperature=1.0, surrogate=None,
              hooks: HookPoints | None = None) -> torch.Tensor:
        """``Σ_j P_ij V x_j``, the term added to ``ρ·x_i`` (TransformerLens's ``attn_out``).

        ``hooks`` (the block's ``attn``) sees and may patch ``hook_q``, ``hook_k``
        ``(B, n, 1, h)``, ``hook_attn_scores``, ``hook_pattern`` ``(B, 1, n, n)``,
        ``hook_v`` (the values ``V x``) and ``hook_z`` (the mixed values) ``(B, n, 1, d)``:
        TransformerLens's shapes with one head.
        """
        hooks = NO_HOOKS if hooks is None else hooks
        q = hooks.hook_q((X @ self.Q.T)[:, :, None])[:, :, 0]
        k = hooks.hook_k((X @ self.K.T)[:, :, None])[:, :, 0]
        scores = (q @ k.transpose(1, 2)).masked_fill(pad[:, None, :], float("-inf"))
        scores = hooks.hook_attn_scores(scores[:, None])[:, 0]
        P = self.pattern(scores, pad, attention, temperature, surrogate)
        P = hooks.hook_pattern(P[:, None])[:, 0]
        v = hooks.hook_v(self.values(X)[:, :, None])[:, :, 0]
        return hooks.hook_z((P @ v)[:, :, None])[:, :, 0]

    def forward(self, X, pad, attention="hardmax", temperature=1.0, surrogate=None):
        return self.rho * X + self.added(X, pad, attention, temperature, surrogate)

    def to_numpy(self) -> SelfAttention:
        Q, K, rho = _numpy(self.Q), _numpy(self.K), _numpy(self.rho)[()]
        if self.factored:
            return SelfAttention(Q, K, Vo=_numpy(self.Vo), Vi=_numpy(self.Vi), rho=rho)
        return SelfAttention(Q, K, V=_numpy(self.V), rho=rho)


BLOCK_HOOKS = ("hook_resid_pre", "hook_mlp_out", "hook_resid_mid", "hook_attn_out",
               "hook_resid_post")
MLP_HOOKS = ("hook_pre", "hook_post")
ATTN_HOOKS = ("hook_q", "hook_k", "hook_attn_scores", "hook_pattern", "hook_v", "hook_z")


class TorchBlock(nn.Module):
    """FF then SA; a missing layer (``None``) is the identity (docs/design.md §2).

    Hook points (docs/export.md): ``hook_resid_pre`` → FF → ``hook_resid_mid`` → SA →
    ``hook_resid_post`` on every block; ``hook_mlp_out`` and ``mlp.hook_pre/hook_post``
    where there is an FF, ``hook_attn_out`` and ``attn.hook_*`` where there is an SA.
    ``hook_point`` makes them (TransformerLens's own class in :mod:`exactformer.lens`).
    """

    def __init__(self, ff: TorchFeedForward | None, sa: TorchSelfAttention | None, kind="",
                 hook_point=HookPoint):
        super().__init__()
        self.ff, self.sa, self.kind = ff, sa, kind
        names = [n for n in BLOCK_HOOKS if (n != "hook_mlp_out" or ff is not None)
                 and (n != "hook_attn_out" or sa is not None)]
        for name in names:
            setattr(self, name, hook_point())
        self.mlp = None if ff is None else HookPoints(MLP_HOOKS, hook_point)
        self.attn = None if sa is None else HookPoints(ATTN_HOOKS, hook_point)

    def forward(self, X, pad, attention, temperature, surrogate=None, record=None):
        X = self.hook_resid_pre(X)
        if self.ff is not None:
            X = self.ff.eta * X + self.hook_mlp_out(self.ff.added(X, self.mlp))
            if record is not None:
                record("ff", X)
        X = self.hook_resid_mid(X)
        if self.sa is not None:
            mixed = self.sa.added(X, pad, attention, temperature, surrogate, self.attn)
            X = self.sa.rho * X + self.hook_attn_out(mixed)
            if record is not None:
                record("sa", X)
        return self.hook_resid_post(X)


def pad_sequences(sequences, d: int | None = None, dtype=torch.float64, device=None):
    """Stack ``(n_j, d)`` sequences into ``X (B, n_max, d)`` and ``key_padding_mask (B, n_max)``.

    Padding rows are zeros and the mask is True there (PyTorch's convention).
    """
    xs = [torch.as_tensor(_float_array(x), dtype=dtype, device=device) for x in sequences]
    if d is None:
        d = int(xs[0].shape[1]) if xs else 0
    n = max((len(x) for x in xs), default=0)
    X = torch.zeros((len(xs), n, d), dtype=dtype, device=device)
    pad = torch.ones((len(xs), n), dtype=torch.bool, device=device)
    for j, x in enumerate(xs):
        if x.ndim != 2 or x.shape[1] != d:
            raise ValueError(f"sequence {j}: expected shape (n, {d}), got {tuple(x.shape)}")
        X[j, : len(x)] = x
        pad[j, : len(x)] = False
    return X, pad


def _float_array(x):
    if isinstance(x, torch.Tensor):
        return x.detach()
    return nm.to_float(np.asarray(x))


class TorchTransformer(HookedModule, nn.Module):
    """The docs/design.md §1 transformer as an ``nn.Module``.

    Build it with :meth:`from_file` or :meth:`from_model`; call it on ``(n, d)`` or
    ``(batch, n, d)`` inputs, optionally with ``key_padding_mask`` (True = padding).

    ``hardmax_surrogate`` (a positive temperature or None): when set, hardmax layers run
    as softmax at that temperature — differentiable in Q and K, for training (issue 7).
    Exact hardmax has zero gradient with respect to the scores. Uniform layers (h = 0)
    stay uniform either way. See also :meth:`surrogate`.
    """

    def __init__(self, blocks, d: int, attention="hardmax", temperature=1.0, info=None,
                 hardmax_surrogate: float | None = None):
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be hardmax or softmax, got {attention!r}")
        self.blocks = nn.ModuleList(blocks)
        self.d, self.attention, self.temperature = int(d), attention, float(temperature)
        self.info = dict(info or {})
        self.hardmax_surrogate = hardmax_surrogate
        # carries dtype/device for models without any parameter; not saved
        self.register_buffer("_probe", torch.zeros((), dtype=torch.float64), persistent=False)
        self._rational: dict[str, np.ndarray] | None = None
        self._setup_hook_names()

    hook_point = HookPoint  # the class of the hook points from_model builds

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: Transformer, **kw) -> TorchTransformer:
        """Twin of a numpy model; rational (exact) weights are rounded to float64.

        The rationals are remembered: :meth:`save` writes them back as long as no weight
        has changed, so an exact model's file round-trips with its proof (docs/design.md §2).
        """
        model.float_model()  # refuses an exact model whose floats do not certify
        blocks = []
        for b in model.blocks:
            ff = sa = None
            if b.ff is not None:
                ff = TorchFeedForward(b.ff.U, b.ff.b, b.ff.W, b.ff.eta)
            if b.sa is not None:
                s = b.sa
                sa = TorchSelfAttention(s.Q, s.K, s.V, s.Vo, s.Vi, s.rho)
            blocks.append(TorchBlock(ff, sa, b.kind, cls.hook_point))
        out = cls(blocks, model.d, model.attention, model.temperature, model.info, **kw)
        rational = {name: np.asarray(t) for name, t in model.named_tensors()
                    if nm.is_exact(np.asarray(t))}
        out._rational = rational or None
        return out

    @classmethod
    def from_file(cls, path, **kw) -> TorchTransformer:
        """Load a ``.safetensors`` model (bad files raise :class:`ModelFileError`)."""
        return cls.from_model(Transformer.load(Path(path)), **kw)

    def to_model(self) -> Transformer:
        """The numpy model (float64) with the current weights, block kinds and info."""
        blocks = [Block(None if b.ff is None else b.ff.to_numpy(),
                        None if b.sa is None else b.sa.to_numpy(), b.kind)
                  for b in self.blocks]
        return Transformer(blocks, self.d, self.attention, self.temperature, dict(self.info))

    def save(self, path) -> None:
        """Write the docs/design.md §2 file through :meth:`Transformer.save` (same format)."""
        model = self.to_model()
        exact = self._exact_weights(model)
        (exact or model).save(path)

    def _exact_weights(self, model: Transformer) -> Transformer | None:
        """The source's rational model if every weight is still its float64 rounding."""
        if not self._rational:
            return None
        tensors = dict(model.named_tensors())
        if set(tensors) != set(self._rational):
            return None
        for name, t in tensors.items():
            r = self._rational[name]
            if r.shape != np.shape(t) or not np.array_equal(nm.to_float(r), np.asarray(t)):
                return None

        def restore(layer, prefix):
            for attr in ("U", "b", "W", "Q", "K", "V", "Vo", "Vi", "eta", "rho"):
                key = f"{prefix}.{attr}"
                if key in self._rational:
                    r = self._rational[key]
                    setattr(layer, attr, r if r.shape else Fraction(r[()]))

        for l, blk in enumerate(model.blocks):
            if blk.ff is not None:
                restore(blk.ff, f"blocks.{l}.ff")
            if blk.sa is not None:
                restore(blk.sa, f"blocks.{l}.sa")
        return model

    # -- forward --------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self._probe.dtype

    @property
    def device(self) -> torch.device:
        return self._probe.device

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    @contextmanager
    def surrogate(self, temperature: float | None):
        """Temporarily set :attr:`hardmax_surrogate` (``with model.surrogate(1e-2): …``)."""
        old, self.hardmax_surrogate = self.hardmax_surrogate, temperature
        try:
            yield self
        finally:
            self.hardmax_surrogate = old

    def forward(self, X, key_padding_mask=None, trace: list | None = None) -> torch.Tensor:
        """Outputs, same shape as ``X`` (``(n, d)`` or ``(batch, n, d)``).

        ``key_padding_mask``: bool ``(n,)`` / ``(batch, n)``, True = padding key.
        ``trace`` (a list) receives ``(label, states)`` after every layer, labels as in
        :meth:`Transformer.run` (``"input"``, ``"block l ff"``, ``"block l sa"``).
        """
        if not isinstance(X, torch.Tensor):
            X = torch.as_tensor(_float_array(X))
        X = X.to(self.device, self.dtype)
        single = X.ndim == 2
        if single:
            X = X[None]
        if X.ndim != 3 or X.shape[2] != self.d:
            raise ValueError(f"expected shape (n, {self.d}) or (batch, n, {self.d}), "
                             f"got {tuple(X.shape)}")
        if key_padding_mask is None:
            pad = torch.zeros(X.shape[:2], dtype=torch.bool, device=X.device)
        else:
            pad = torch.as_tensor(key_padding_mask, device=X.device).to(torch.bool)
            pad = pad[None] if pad.ndim == 1 else pad
            if tuple(pad.shape) != tuple(X.shape[:2]):
                raise ValueError(f"key_padding_mask has shape {tuple(pad.shape)}, "
                                 f"expected {tuple(X.shape[:2])}")

        def record(label):
            if trace is not None:
                trace.append((label, X[0] if single else X))

        record("input")
        for l, blk in enumerate(self.blocks):

            def step(layer, value, l=l):
                trace.append((f"block {l} {layer}", value[0] if single else value))

            X = blk(X, pad, self.attention, self.temperature, self.hardmax_surrogate,
                    None if trace is None else step)
        return X[0] if single else X

    def run(self, sequences) -> list[torch.Tensor]:
        """Outputs for sequences of different lengths, run as one padded batch."""
        X, pad = pad_sequences(sequences, self.d, self.dtype, self.device)
        Y = self(X, key_padding_mask=pad)
        return [Y[j, : len(x)] for j, x in enumerate(sequences)]

    def extra_repr(self) -> str:
        tau = f", temperature={self.temperature!r}" if self.attention == "softmax" else ""
        sur = (f", hardmax_surrogate={self.hardmax_surrogate!r}"
               if self.hardmax_surrogate is not None else "")
        return f"d={self.d}, attention={self.attention}{tau}{sur}, blocks={self.n_blocks}"

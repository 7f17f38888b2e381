"""The model as a TransformerLens 3.x ``HookedTransformer`` (``pip install exactformer[lens]``).

TransformerLens blocks are attention then MLP, both added to the residual stream
(``x + attn(x)``, ``x + mlp(x)``); ours are FF then SA with ``η·x`` and ``ρ·x``
(docs/design.md §1). The conversion (docs/export.md):

* an FF with η = 1 is an MLP (W_in = Uᵀ, b_in = b, W_out = Wᵀ); η ≠ 1 adds 2d units
  ``(η−1)·(relu(x) − relu(−x))``, which is ``(η−1)·x`` in one nonzero term per row;
* an SA with ρ = 1 is one head (W_Q = Qᵀ, W_K = Kᵀ, W_V = Vᵀ or Viᵀ, W_O = I or Voᵀ;
  ``attn_scale`` = τ for softmax, 1 for hardmax); uniform layers have W_Q = W_K = 0;
* an SA with ρ ≠ 1 (the collapse has ρ = 0) reads *scratch* dimensions d…2d: the MLP
  before it copies x there with ``relu(x) − relu(−x)`` and adds ``(ρ−1)·x`` to the main
  dimensions (for ρ = 0: x − x = 0 exactly), the head reads the copy, and the next MLP
  clears it (s − s = 0 exactly); this needs d_model = 2d;
* hardmax is a hook on ``hook_attn_scores`` (0 on the argmax set, −inf elsewhere, so the
  softmax is uniform on the set) and padding a hook too (TransformerLens applies
  ``attention_mask`` only in causal mode): :func:`load` adds them, :func:`run` runs.

Layers are padded to common widths (d_mlp, d_head); :attr:`ExportReport.n_params_exported`
reports the cost. The file is a ``torch.save`` of ``{"config", "state_dict", "exactformer"}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .model import Transformer


@dataclass
class _Layer:
    """One TransformerLens layer: the head's block (or None) and the MLP's parts."""

    attn: int | None = None
    scratch: bool = False  # the head reads the scratch copy
    mlp: list = field(default_factory=list)  # ("ff", l) / ("eta", l) / ("move", l) / ("clear",)


def plan(model: Transformer) -> list[_Layer]:
    """The TransformerLens layers that compute ``model``, in order (module docstring)."""
    layers = [_Layer()]

    def fresh():
        layers.append(_Layer())
        return layers[-1]

    for l, blk in enumerate(model.blocks):
        if blk.ff is not None:
            cur = layers[-1]
            if any(p[0] in ("ff", "move") for p in cur.mlp):
                cur = fresh()
            cur.mlp.append(("ff", l))
            if float(blk.ff.eta) != 1.0:
                cur.mlp.append(("eta", l))
        if blk.sa is not None:
            scratch = float(blk.sa.rho) != 1.0
            cur = layers[-1]
            if scratch:  # the copy must follow the FF's output and any clear
                if cur.mlp:
                    cur = fresh()
                cur.mlp.append(("move", l))
            nxt = fresh()
            nxt.attn, nxt.scratch = l, scratch
            if scratch:
                nxt.mlp.append(("clear",))
    return layers


def _units(part, model: Transformer) -> int:
    if part[0] == "ff":
        return model.blocks[part[1]].ff.width
    return 2 * model.d


def convert(model: Transformer, tie_tols: dict[int, float]):
    """``(config dict, state dict, extra)`` of the HookedTransformer (float64 tensors)."""
    import torch

    d, layers = model.d, plan(model)
    D = 2 * d if any(L.scratch for L in layers) else d
    sas = [model.blocks[L.attn].sa for L in layers if L.attn is not None]
    d_head = max([1] + [max(s.rank, d if s.V is not None else s.Vi.shape[0]) for s in sas])
    d_mlp = max([1] + [sum(_units(p, model) for p in L.mlp) for L in layers])
    cfg = dict(n_layers=len(layers), d_model=D, d_head=d_head, n_heads=1, d_mlp=d_mlp,
               d_vocab=d, d_vocab_out=d, n_ctx=2048, act_fn="relu", normalization_type=None,
               attention_dir="bidirectional", positional_embedding_type="standard",
               attn_only=False, use_attn_scale=True,
               attn_scale=float(model.temperature) if model.attention == "softmax" else 1.0,
               default_prepend_bos=False, init_weights=False, dtype=torch.float64,
               original_architecture="exactformer")
    z = np.zeros
    sd = {"embed.W_E": z((d, D)), "pos_embed.W_pos": z((cfg["n_ctx"], D)),
          "unembed.W_U": np.eye(D, d), "unembed.b_U": z(d)}
    hardmax = {}
    eye = np.eye(d)
    for i, L in enumerate(layers):
        p = f"blocks.{i}."
        W_Q, W_K, W_V, W_O = z((1, D, d_head)), z((1, D, d_head)), z((1, D, d_head)), \
            z((1, d_head, D))
        if L.attn is not None:
            s = model.blocks[L.attn].sa
            rows = slice(d, 2 * d) if L.scratch else slice(0, d)
            W_Q[0, rows, : s.rank], W_K[0, rows, : s.rank] = s.Q.T, s.K.T
            if s.V is not None:
                W_V[0, rows, :d], W_O[0, :d, :d] = s.V.T, eye
            else:
                r = s.Vi.shape[0]
                W_V[0, rows, :r], W_O[0, :r, :d] = s.Vi.T, s.Vo.T
            if model.attention == "hardmax":
                hardmax[i] = float(tie_tols.get(L.attn, 0.0))
        sd.update({p + "attn.W_Q": W_Q, p + "attn.W_K": W_K, p + "attn.W_V": W_V,
                   p + "attn.W_O": W_O, p + "attn.b_Q": z((1, d_head)),
                   p + "attn.b_K": z((1, d_head)), p + "attn.b_V": z((1, d_head)),
                   p + "attn.b_O": z(D)})
        W_in, b_in, W_out = z((D, d_mlp)), z(d_mlp), z((d_mlp, D))
        u = 0
        for part in L.mlp:
            if part[0] == "ff":
                f = model.blocks[part[1]].ff
                w = f.width
                W_in[:d, u:u + w], b_in[u:u + w], W_out[u:u + w, :d] = f.U.T, f.b, f.W.T
                u += w
                continue
            # 2d units relu(±x) of the main (or scratch, to clear it) dimensions
            src = slice(d, 2 * d) if part[0] == "clear" else slice(0, d)
            W_in[src, u:u + d], W_in[src, u + d:u + 2 * d] = eye, -eye
            if part[0] == "eta":
                c = float(model.blocks[part[1]].ff.eta) - 1.0
                W_out[u:u + d, :d], W_out[u + d:u + 2 * d, :d] = c * eye, -c * eye
            elif part[0] == "move":
                c = float(model.blocks[part[1]].sa.rho) - 1.0
                W_out[u:u + d, :d], W_out[u + d:u + 2 * d, :d] = c * eye, -c * eye
                W_out[u:u + d, d:], W_out[u + d:u + 2 * d, d:] = eye, -eye
            else:  # clear
                W_out[u:u + d, d:], W_out[u + d:u + 2 * d, d:] = -eye, eye
            u += 2 * d
        sd.update({p + "mlp.W_in": W_in, p + "mlp.b_in": b_in, p + "mlp.W_out": W_out,
                   p + "mlp.b_out": z(D)})
    state = {k: torch.as_tensor(np.ascontiguousarray(v), dtype=torch.float64)
             for k, v in sd.items()}
    extra = {"format": "exactformer/1", "attention": model.attention, "d": d,
             "hardmax_layers": hardmax,
             "block_of_layer": [L.attn for L in layers]}
    return cfg, state, extra


def build(cfg: dict, state: dict, extra: dict):
    """The HookedTransformer with the exactformer hooks (hardmax, padding) attached."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    model = HookedTransformer(HookedTransformerConfig(**cfg))
    model.load_state_dict(state, strict=False)
    model.exactformer = extra
    for i, tol in extra["hardmax_layers"].items():
        model.blocks[int(i)].attn.hook_attn_scores.add_perma_hook(_hardmax_hook(tol))
    return model


def _hardmax_hook(tol: float):
    """Scores → 0 on the argmax set (within ``tol · max|score|``), −inf elsewhere."""
    import torch

    def hook(scores, hook):
        top = scores.amax(dim=-1, keepdim=True)
        if tol > 0:
            finite = torch.where(torch.isfinite(scores), scores.abs(), 0.0)
            top = top - tol * finite.amax(dim=-1, keepdim=True)
        return torch.where(scores >= top, 0.0, float("-inf")).to(scores.dtype)

    return hook


def load(path):
    """A HookedTransformer from an ``export --to transformer-lens`` file, hooks attached."""
    import torch

    ckpt = torch.load(Path(path), weights_only=True)
    return build(ckpt["config"], ckpt["state_dict"], ckpt["exactformer"])


def forward(model, X, key_padding_mask=None):
    """Outputs ``(batch, n, d)`` of a loaded model for inputs ``X`` ``(batch, n, d)``.

    Inputs are residual states (``start_at_layer=0``), zero-padded to d_model; padding keys
    are masked by temporary hooks on every layer's scores, put before the hardmax hook.
    """
    import torch

    X = torch.as_tensor(X, dtype=torch.float64)
    resid = torch.nn.functional.pad(X, (0, model.cfg.d_model - X.shape[-1]))
    points = [model.blocks[i].attn.hook_attn_scores for i in range(model.cfg.n_layers)]
    if key_padding_mask is not None:
        pad = torch.as_tensor(key_padding_mask, dtype=torch.bool)[:, None, None, :]
        for hp in points:
            hp.add_hook(lambda scores, hook: scores.masked_fill(pad, float("-inf")),
                        prepend=True)
    try:
        with torch.no_grad():
            return model(resid, start_at_layer=0, return_type="logits")
    finally:
        for hp in points:
            hp.remove_hooks(including_permanent=False)


# -- the interface exactformer.export uses ----------------------------------------------------


def run(converted, model: Transformer, seqs):
    """(outputs per sequence, {block: argmax sets per sequence}) from TransformerLens."""
    from .export import batches, pad_numpy

    tl = build(*converted)
    blocks = {i: b for i, b in enumerate(converted[2]["block_of_layer"])
              if i in converted[2]["hardmax_layers"]}
    outputs: list = [None] * len(seqs)
    sets: dict[int, list] = {b: [None] * len(seqs) for b in blocks.values()}
    for idx in batches(seqs):
        X, pad = pad_numpy([seqs[j] for j in idx], model.d)
        Y, pats = _forward_with_patterns(tl, X, pad, list(blocks))
        for k, j in enumerate(idx):
            n = len(seqs[j])
            outputs[j] = Y[k, :n]
            for i, b in blocks.items():
                sets[b][j] = pats[i][k, 0, :n, :n] > 0
    return outputs, sets


def _forward_with_patterns(tl, X, pad, layers):
    import torch

    pats = {}

    def keep(i):
        def hook(pattern, hook):
            pats[i] = pattern.detach().numpy()
        return hook

    with tl.hooks(fwd_hooks=[(f"blocks.{i}.attn.hook_pattern", keep(i)) for i in layers]):
        Y = forward(tl, torch.as_tensor(X), torch.as_tensor(pad))
    return Y.detach().numpy(), pats


def states(converted, model: Transformer, seqs) -> list:
    """The residual state (first d dimensions) after every block, for one sequence."""
    import torch

    from .export import pad_numpy

    tl = build(*converted)
    X, _ = pad_numpy(seqs, model.d)
    got = {}

    def save(i):
        def hook(v, hook):
            got[i] = v[0, :, : model.d].numpy().copy()
        return hook

    with tl.hooks(fwd_hooks=[(f"blocks.{i}.hook_resid_post", save(i))
                             for i in range(tl.cfg.n_layers)]):
        forward(tl, torch.as_tensor(X))
    # block l is complete after the last layer holding one of its parts
    done = {}
    for i, L in enumerate(plan(model)):
        for b in [L.attn] + [p[1] for p in L.mlp if len(p) > 1]:
            if b is not None:
                done[b] = i
    out, last = [], got[0]
    for l in range(model.n_blocks):
        last = got[done[l]] if l in done else last
        out.append(last)
    return out


def write(converted, model: Transformer, tie_tols, path) -> None:
    import torch

    from .dataset import write_atomic

    cfg, state, extra = converted
    write_atomic(path, lambda tmp: torch.save(
        {"config": cfg, "state_dict": state, "exactformer": extra}, tmp))


def n_params(converted) -> int:
    """Parameters of the HookedTransformer's blocks (embedding and unembedding excluded)."""
    return sum(int(t.numel()) for k, t in converted[1].items() if k.startswith("blocks."))

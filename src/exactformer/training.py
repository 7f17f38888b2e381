"""Tikhonov-regularised training of the docs/design.md §1 transformer (issue 7, docs/design.md §6).

The paper (Alcalde, Fantuzzi, Zuazua, *Exact Sequence Interpolation with Transformers*)
trains its architecture by minimising

    J_ε(θ) = L(θ) + ε·‖θ‖²,     L(θ) = (1/N) Σ_j Σ_{k<m_j} ‖T_θ(X^j)_k − Y^j_k‖²

and proves ``min J_ε ≤ J_ε(θ_exact) = ε·‖θ_exact‖²`` for any exactly interpolating θ_exact
of the same architecture. Here:

* **Loss** ``L`` — the mean over the N sequences of the squared Euclidean distance between
  the read-out (the first ``m_j`` output tokens, the prefix read-out of docs/design.md §3) and the
  target, both seen as points of ``R^{m_j·d}`` (sum over the m_j tokens, not a mean). The
  read-out fixes which output token answers which target, so this is the squared
  Hausdorff-type distance of docs/design.md §6 with the matching given; for ``m_j = 1`` (the
  experiment) the two coincide.
* **Penalty** ``ε·‖θ‖²`` — the squared Euclidean norm of *every* parameter (U, b, W, η, Q,
  K, V or Vo/Vi, ρ), added explicitly to the objective rather than through Adam's
  ``weight_decay`` (which adds ε·θ to the gradient, i.e. the gradient of (ε/2)‖θ‖²: a factor
  2 off, and invisible in the logged loss). Loss and penalty are logged separately.
* Adam on the full batch (all N sequences, padded, docs/design.md §1 masks), cosine schedule
  from ``lr`` to ``lr·lr_min_ratio``, float64 on CPU, one torch thread: deterministic, so
  the same seed gives the same losses bit for bit (the tensors are tiny; a second thread
  only adds synchronisation, measured 14 ms vs 180 ms per step on the N = 10 experiment).
* Hardmax has zero gradient in Q and K, so hardmax models train through the softmax
  surrogate of :class:`exactformer.torch.TorchTransformer` at a fixed temperature τ.

Robustness: a non-finite loss stops training with :class:`TrainingDiverged`, after
writing the last parameters whose loss was finite to the checkpoint; ``KeyboardInterrupt``
(Ctrl-C) saves the current parameters and returns normally with ``interrupted = True``.
Checkpoints go through :meth:`TorchTransformer.save` (atomic, docs/design.md §2 format).
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .dataset import Dataset, write_atomic
from .dataset import check_memory as _check_available
from .errors import ExactformerError, ResourceError
from .torch import TorchBlock, TorchFeedForward, TorchSelfAttention, TorchTransformer, pad_sequences

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "Batch",
    "readout_loss",
    "sq_norm",
    "random_model",
    "reinitialise",
    "compiled_model",
    "embed",
    "balance",
    "train",
    "memory_estimate",
    "check_memory",
]


class TrainingDiverged(ExactformerError):
    """The loss became NaN or infinite; the last finite parameters were kept."""


@dataclass
class TrainConfig:
    """Hyper-parameters of one run (all of them end up in the log)."""

    epochs: int = 2000
    lr: float = 1e-2
    lr_min_ratio: float = 1e-3  # cosine schedule ends at lr·lr_min_ratio
    weight_decay: float = 0.0  # ε of the Tikhonov penalty ε·‖θ‖²
    surrogate: float | None = 1.0  # softmax temperature used for hardmax layers
    seed: int = 0
    checkpoint_every: int = 100  # epochs between checkpoint writes (0: only at the end)


@dataclass
class TrainResult:
    """Loss curve (one entry per epoch, evaluated before that epoch's step) and outcome."""

    loss: list[float] = field(default_factory=list)
    penalty: list[float] = field(default_factory=list)  # ε·‖θ‖², already multiplied by ε
    sq_norm: list[float] = field(default_factory=list)  # ‖θ‖²
    lr: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # wall time since the start
    interrupted: bool = False
    diverged: bool = False
    final_loss: float = math.nan  # loss of the returned (final) parameters
    final_penalty: float = math.nan

    @property
    def objective(self) -> np.ndarray:
        return np.asarray(self.loss) + np.asarray(self.penalty)

    def best(self) -> dict:
        """The epoch with the smallest objective J = L + ε‖θ‖², its loss and penalty."""
        J = self.objective
        if not len(J):
            return {}
        i = int(np.argmin(J))
        return {"epoch": i, "objective": float(J[i]), "loss": self.loss[i],
                "penalty": self.penalty[i], "sq_norm": self.sq_norm[i]}

    def write_log(self, path, config: TrainConfig | None = None, extra=None) -> None:
        """CSV (``.csv``) or JSON (anything else) loss curve, written atomically."""
        path = Path(path)
        rows = list(zip(range(len(self.loss)), self.loss, self.penalty, self.sq_norm,
                        self.lr, self.seconds, strict=True))
        header = ["epoch", "loss", "penalty", "sq_norm", "lr", "seconds"]
        if path.suffix.lower() == ".csv":
            def write(tmp):
                with open(tmp, "w", newline="") as fh:
                    w = csv.writer(fh)
                    w.writerow(header)
                    w.writerows([[e, repr(a), repr(b), repr(c), repr(d_), f"{s:.4f}"]
                                 for e, a, b, c, d_, s in rows])
        else:
            payload = {"config": asdict(config) if config else None, **(extra or {}),
                       "interrupted": self.interrupted, "diverged": self.diverged,
                       "best": self.best(), **{h: [r[i] for r in rows]
                                                for i, h in enumerate(header)}}

            def write(tmp):
                Path(tmp).write_text(json.dumps(payload, indent=1))
        write_atomic(path, write)


# ----------------------------------------------------------------------- loss, norm


@dataclass
class Batch:
    """The dataset as padded tensors: inputs ``(N, n, d)``, mask, targets ``(N, m, d)``."""

    X: torch.Tensor
    pad: torch.Tensor  # True = padding key (PyTorch convention)
    Y: torch.Tensor
    ymask: torch.Tensor  # True on real target tokens

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> Batch:
        X, pad = pad_sequences(dataset.inputs, dataset.d)
        Y, ypad = pad_sequences(dataset.targets, dataset.d)
        return cls(X, pad, Y, ~ypad)


def readout_loss(net: TorchTransformer, batch: Batch) -> torch.Tensor:
    """L(θ): mean over sequences of ``Σ_{k<m_j} ‖T(X^j)_k − Y^j_k‖²`` (module docstring)."""
    out = net(batch.X, key_padding_mask=batch.pad)[:, : batch.Y.shape[1]]
    sq = ((out - batch.Y) ** 2).sum(dim=2) * batch.ymask
    return sq.sum() / batch.Y.shape[0]


def sq_norm(net: torch.nn.Module) -> torch.Tensor:
    """‖θ‖²: sum of squares of every parameter (η and ρ included)."""
    params = list(net.parameters())
    if not params:
        return torch.zeros((), dtype=torch.float64)
    return sum((p * p).sum() for p in params)


# ------------------------------------------------------------------- memory, before allocating

PARAMETER_COPIES = 8
"""float64 copies of θ alive while training: the numpy arrays of the initialisation, the
parameters, their gradients, Adam's two moments, the last finite snapshot, the vector the
snapshot is gathered in, and the model written at each checkpoint."""


def memory_estimate(d: int, blocks: int, width: int, rank: int, n_sequences: int = 0,
                    max_length: int = 0) -> int:
    """Bytes that training ``blocks`` blocks of FF width ``width``, rank ``rank`` will hold.

    Parameters: ``blocks·(2wd + w + 1 + 2hd + d² + 1)`` float64 numbers, PARAMETER_COPIES
    times. Activations, kept for the backward pass: per block and per (padded) token, the FF's
    pre-activations and ReLUs (2w), queries and keys (2h), four d-vectors and three rows of
    the n × n score, pattern and softmax matrices. Python integers: no overflow at any size.
    """
    d, blocks, width, rank = int(d), int(blocks), int(width), int(rank)
    params = blocks * (2 * width * d + width + 1 + 2 * rank * d + d * d + 1)
    per_token = 2 * width + 2 * rank + 4 * d + 3 * int(max_length)
    activations = blocks * int(n_sequences) * int(max_length) * per_token
    return 8 * (PARAMETER_COPIES * params + activations)


def check_memory(d: int, blocks: int, width: int, rank: int, dataset: Dataset | None = None
                 ) -> None:
    """Refuse (:class:`ResourceError`, one line) before allocating a model and batch that the
    memory the operating system reports available cannot hold (docs/limits.md): ``train
    --width 1000000000`` would otherwise allocate until the OOM killer stops it."""
    n = 0 if dataset is None else dataset.n_sequences
    longest = 0 if dataset is None else int(dataset.input_lengths.max(initial=0))
    need = memory_estimate(d, blocks, width, rank, n, longest)
    data = f", {n} sequences of up to {longest} tokens" if dataset is not None else ""
    what = f"training --blocks {blocks} --width {width} --rank {rank} (d = {d}{data})"
    _check_available("", need, what, ResourceError)


# ------------------------------------------------------------------- initialisations


def _normal(gen, shape, std):
    return torch.randn(shape, generator=gen, dtype=torch.float64) * std


def random_model(d: int, blocks: int, width: int, rank: int = 2, attention: str = "hardmax",
                 temperature: float = 1.0, seed: int = 0) -> TorchTransformer:
    """A uniform architecture: ``blocks`` × (FF of width ``width``, SA of rank ``rank``)."""
    ff = TorchFeedForward(np.zeros((width, d)), np.zeros(width), np.zeros((d, width)), 1.0)
    sa = TorchSelfAttention(np.zeros((rank, d)), np.zeros((rank, d)), V=np.zeros((d, d)))
    layers = [TorchBlock(_clone(ff), _clone(sa), "trained") for _ in range(blocks)]
    net = TorchTransformer(layers, d, attention, temperature, info={"init": "random"})
    return reinitialise(net, seed)


def _clone(layer):
    import copy

    return copy.deepcopy(layer)


def reinitialise(net: TorchTransformer, seed: int, gain: float = 0.5) -> TorchTransformer:
    """Random weights, same shapes: each block starts near the identity (η = ρ = 1).

    U, Q, K ~ N(0, 1/d); W, V (or Vo, Vi) ~ N(0, gain²/fan_in) so the residual stream is
    perturbed, not replaced; b = 0. Seeded through its own ``torch.Generator``.
    """
    gen = torch.Generator().manual_seed(int(seed))
    d = net.d
    with torch.no_grad():
        for blk in net.blocks:
            if blk.ff is not None:
                f = blk.ff
                f.U.copy_(_normal(gen, f.U.shape, 1 / math.sqrt(d)))
                f.b.zero_()
                f.W.copy_(_normal(gen, f.W.shape, gain / math.sqrt(max(1, f.width))))
                f.eta.fill_(1.0)
            if blk.sa is not None:
                s = blk.sa
                s.Q.copy_(_normal(gen, s.Q.shape, 1 / math.sqrt(d)))
                s.K.copy_(_normal(gen, s.K.shape, 1 / math.sqrt(d)))
                if s.factored:
                    s.Vi.copy_(_normal(gen, s.Vi.shape, 1 / math.sqrt(d)))
                    s.Vo.copy_(_normal(gen, s.Vo.shape, gain / math.sqrt(max(1, s.Vi.shape[0]))))
                else:
                    s.V.copy_(_normal(gen, s.V.shape, gain / math.sqrt(d)))
                s.rho.fill_(1.0)
    net.info["init"] = f"random (seed {seed})"
    return net


def compiled_model(dataset: Dataset, seed: int = 0) -> tuple[TorchTransformer, float]:
    """``exactformer.compile`` of the data (hardmax, strict) as a torch model + seconds."""
    import exactformer

    t0 = time.perf_counter()
    model = exactformer.compile(dataset, attention="hardmax", seed=seed)
    seconds = time.perf_counter() - t0
    net = TorchTransformer.from_model(model.as_float())
    net.info["init"] = f"compiled (seed {seed})"
    return net, seconds


def balance(net: TorchTransformer) -> TorchTransformer:
    """Shrink ‖θ‖² without changing the function: exact rescaling symmetries, in place.

    relu is positively homogeneous, so unit i of an FF may carry ``(α·U_i, α·b_i, W_i/α)``;
    ``α² = ‖W_i‖/‖(U_i, b_i)‖`` minimises its share of ‖θ‖². Likewise ``(βQ, K/β)`` and
    ``(γ·Vo, Vi/γ)`` leave an attention layer unchanged. Every factor is rounded to a
    power of two, so the rescaled weights give bit-identical outputs. This matters for the
    bound ε‖θ_exact‖²: the compiler's point moves carry weights ~Δ/gap (docs/design.md §4).
    """

    def pow2(x):
        return 2.0 ** round(math.log2(x)) if x > 0 and math.isfinite(x) else 1.0

    with torch.no_grad():
        for blk in net.blocks:
            if blk.ff is not None:
                f = blk.ff
                for i in range(f.width):
                    a = math.sqrt(float(f.U[i].square().sum() + f.b[i].square()))
                    w = float(f.W[:, i].norm())
                    if a > 0 and w > 0:
                        s = pow2(math.sqrt(w / a))
                        f.U[i] *= s
                        f.b[i] *= s
                        f.W[:, i] /= s
            if blk.sa is not None and blk.sa.rank > 0:
                s_ = blk.sa
                q, k = float(s_.Q.norm()), float(s_.K.norm())
                if q > 0 and k > 0:
                    s = pow2(math.sqrt(k / q))
                    s_.Q *= s
                    s_.K /= s
                if s_.factored:
                    o, i_ = float(s_.Vo.norm()), float(s_.Vi.norm())
                    if o > 0 and i_ > 0:
                        s = pow2(math.sqrt(i_ / o))
                        s_.Vo *= s
                        s_.Vi /= s
    return net


def embed(net: TorchTransformer, blocks: int | None = None,
          width: int | None = None) -> TorchTransformer:
    """Embed a (compiled) model into ``blocks`` blocks of FF width ``width``, same function.

    Extra FF units are zero (``U_i = 0, b_i = 0, W_{:,i} = 0``: relu(0)·0 adds nothing);
    missing layers become identities (FF ``η = 1, W = 0``; SA ``ρ = 1, V = 0``, rank 2)
    and extra blocks are appended as identities, so every block of the result has both
    layers and the same width. Fewer blocks or a smaller width than the model's is an error.
    """
    d = net.d
    L = net.n_blocks if blocks is None else int(blocks)
    w = max((b.ff.width for b in net.blocks if b.ff is not None), default=1)
    w = w if width is None else int(width)
    if L < net.n_blocks:
        raise ExactformerError(f"--blocks {L} is smaller than the compiled model's "
                               f"{net.n_blocks} blocks; use --init random or more blocks")
    old_w = max((b.ff.width for b in net.blocks if b.ff is not None), default=0)
    if w < old_w:
        raise ExactformerError(f"--width {w} is smaller than the compiled model's FF width "
                               f"{old_w}; use --init random or a larger width")
    new = []
    for l in range(L):
        src = net.blocks[l] if l < net.n_blocks else None
        f = None if src is None else src.ff
        U, b, W = np.zeros((w, d)), np.zeros(w), np.zeros((d, w))
        eta = 1.0
        if f is not None:
            k = f.width
            U[:k], b[:k], W[:, :k] = (f.U.detach().numpy(), f.b.detach().numpy(),
                                      f.W.detach().numpy())
            eta = float(f.eta)
        ff = TorchFeedForward(U, b, W, eta)
        s = None if src is None else src.sa
        if s is None:
            sa = TorchSelfAttention(np.zeros((2, d)), np.zeros((2, d)), V=np.zeros((d, d)))
        else:
            sa = _clone(s)
        new.append(TorchBlock(ff, sa, "" if src is None else src.kind))
    return TorchTransformer(new, d, net.attention, net.temperature, dict(net.info),
                            hardmax_surrogate=net.hardmax_surrogate)


# --------------------------------------------------------------------------- training


def _snapshot(net) -> torch.Tensor:
    """All parameters as one vector (one copy per epoch, cheap next to a step)."""
    return torch.nn.utils.parameters_to_vector(net.parameters()).detach().clone()


def train(net: TorchTransformer, dataset: Dataset | Batch, config: TrainConfig,
          checkpoint=None, log=None, progress=None, callback=None) -> TrainResult:
    """Minimise ``L(θ) + ε‖θ‖²`` with Adam + cosine schedule; returns the loss curve.

    ``checkpoint`` (path): the model is saved there every ``config.checkpoint_every``
    epochs, at the end, on Ctrl-C, and — with the last finite parameters — on divergence.
    ``log`` (path, ``.csv`` or ``.json``): the loss curve, rewritten with every checkpoint.
    ``progress(epoch, loss, penalty)`` is called every epoch (the CLI's rich bar);
    ``callback(epoch, result)`` too, and may raise ``KeyboardInterrupt`` (tests).
    """
    torch.set_num_threads(1)
    torch.manual_seed(config.seed)
    batch = dataset if isinstance(dataset, Batch) else Batch.from_dataset(dataset)
    net.to(torch.float64)
    net.train()
    surrogate = config.surrogate if net.attention == "hardmax" else None
    eps = float(config.weight_decay)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=config.lr, foreach=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=max(1, config.epochs), eta_min=config.lr * config.lr_min_ratio)
    res = TrainResult()
    good = _snapshot(net)
    t0 = time.perf_counter()

    def save(state=None):
        if state is not None:
            with torch.no_grad():
                torch.nn.utils.vector_to_parameters(state, net.parameters())
        if checkpoint is not None:
            net.save(checkpoint)
        if log is not None:
            res.write_log(log, config)

    with net.surrogate(surrogate):
        try:
            for epoch in range(config.epochs):
                opt.zero_grad(set_to_none=True)
                loss = readout_loss(net, batch)
                norm = sq_norm(net)
                if not (torch.isfinite(loss) and torch.isfinite(norm)):
                    res.diverged = True
                    break
                good = _snapshot(net)  # finite loss: these parameters are safe to keep
                res.loss.append(loss.item())
                res.sq_norm.append(norm.item())
                res.penalty.append(eps * norm.item())
                res.lr.append(opt.param_groups[0]["lr"])
                res.seconds.append(time.perf_counter() - t0)
                (loss + eps * norm).backward()
                opt.step()
                sched.step()
                if progress is not None:
                    progress(epoch, res.loss[-1], res.penalty[-1])
                if callback is not None:
                    callback(epoch, res)
                if (checkpoint is not None and config.checkpoint_every
                        and (epoch + 1) % config.checkpoint_every == 0):
                    save()
        except KeyboardInterrupt:
            res.interrupted = True
        if not res.diverged:
            with torch.no_grad():
                final, norm = readout_loss(net, batch), sq_norm(net)
            res.diverged = not (torch.isfinite(final) and torch.isfinite(norm))
        if res.diverged:
            save(good)
            where = f" to {checkpoint}" if checkpoint is not None else ""
            last = res.loss[-1] if res.loss else float("nan")
            err = TrainingDiverged(
                f"the loss became NaN/inf at epoch {len(res.loss)} (lr {config.lr:g}); the "
                f"last finite parameters (loss {last:.6g}) were saved{where}; try a smaller --lr")
            err.result = res  # the curve up to the last finite epoch
            raise err
        res.final_loss, res.final_penalty = float(final), eps * float(norm)
    save()
    return res

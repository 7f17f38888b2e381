"""Time-delayed transformer (TD-TF) and its linear references (issue 18, docs/tdtf.md).

A TD-TF reads a window of the last K states of a multivariate time series and predicts the
next one with **one single-query attention layer and one feed-forward layer** (single head).
Tokens are the delayed states, each embedded by a lag-specific linear map plus a learned lag
vector; the one query comes from the latest state; the feed-forward layer works on the
attention output only. Cost per prediction is linear in K. docs/tdtf.md states the
architecture equation by equation, and the restriction under which the prediction is an
affine function of the window — lag-only scores (``lag_only_scores=True``) and a linear
feed-forward (``activation="linear"``) — in which case :meth:`TDTF.from_tddmd` sets weights
that reproduce a time-delayed DMD exactly (to rounding).

Baselines on the same windows and the same training data:

* :class:`TDDMD` — full-rank least squares on the delay matrix,
  ``x_{t+1} = Σ_j A_j x_{t−K+1+j}`` (the reference);
* :class:`HankelDMDBaseline` — PyDMD's rank-truncated ``HankelDMD`` (the ``dmd`` extra),
  used as the linear map ``w ↦ U Ã Uᵀ w`` on delay vectors.

Everything runs in float64 on one torch thread with seeded generators, so a seed fixes the
result bit for bit. Series files for the CLI (:func:`load_series`): ``.npz`` with an array
``x`` of shape (T, d), or CSV with one row per time step and an optional header.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import numbers
import re
import time
import warnings
import zipfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from .dataset import (
    DIGITS,
    as_float64,
    check_memory,
    decimal_float64,
    npz_arrays,
    strict_json,
    write_atomic,
)
from .errors import DatasetError, ExactformerError, ModelFileError

__all__ = [
    "SeriesError",
    "TDTFConfig",
    "TDTF",
    "TDDMD",
    "HankelDMDBaseline",
    "delay_windows",
    "segments",
    "rollout",
    "load_series",
    "save_series",
]

FORMAT = "exactformer-tdtf/1"
ACTIVATIONS = ("gelu", "tanh", "linear")


class SeriesError(ExactformerError):
    """A time-series file, array or model file the TD-TF commands cannot use (one line)."""


# ------------------------------------------------------------------------- windows


def _as_list(series) -> list[np.ndarray]:
    """One (T, d) array or a list of them (separate trajectories) → list of float64 arrays."""
    if isinstance(series, np.ndarray):
        series = [series]
    out = []
    for s in series:
        s = np.asarray(s, dtype=np.float64)
        if s.ndim == 1:
            s = s[:, None]
        if s.ndim != 2:
            raise SeriesError(f"a time series must have shape (T, d), got {s.shape}")
        out.append(s)
    return out


def segments(x: np.ndarray, length: int) -> np.ndarray:
    """All contiguous segments ``x[n : n + length]`` as an (N, length, d) array (a copy)."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x) - length + 1
    if n <= 0:
        return np.zeros((0, length, x.shape[1]))
    view = np.lib.stride_tricks.sliding_window_view(x, length, axis=0)  # (n, d, length)
    return np.ascontiguousarray(view.transpose(0, 2, 1))


def delay_windows(x: np.ndarray, K: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows ``(x_{t−K+1}, …, x_t)`` (oldest first, (N, K, d)) and targets ``x_{t+1}``."""
    seg = segments(x, K + 1)
    return seg[:, :K], seg[:, K]


def rollout(model, window: np.ndarray, steps: int) -> np.ndarray:
    """Autoregressive forecast: feed each prediction back into the window.

    ``model.predict`` maps (B, K, d) windows to (B, d) next states; ``window`` is (K, d) or
    (B, K, d). Returns (steps, d) or (B, steps, d). Once a trajectory overflows (non-finite
    or beyond 1e12) it is frozen at NaN, so a diverging linear model does not warn.
    """
    w = np.array(window, dtype=np.float64)
    single = w.ndim == 2
    if single:
        w = w[None]
    B, _, d = w.shape
    out = np.empty((B, steps, d))
    dead = np.zeros(B, dtype=bool)
    with np.errstate(all="ignore"):
        for i in range(steps):
            nxt = model.predict(w)
            dead |= ~np.all(np.isfinite(nxt) & (np.abs(nxt) < 1e12), axis=1)
            nxt[dead] = np.nan
            out[:, i] = nxt
            w[:, :-1] = w[:, 1:]
            w[:, -1] = np.where(dead[:, None], 0.0, nxt)
    return out[0] if single else out


# ----------------------------------------------------------------------- baselines


@dataclass
class TDDMD:
    """Time-delayed DMD: full-rank least squares ``x_{t+1} = A·vec(window)``.

    ``A`` is (d, K·d); block j (columns ``j·d … (j+1)·d``) multiplies the window's j-th
    state, oldest first. No constant term: the classical linear delay model.
    """

    A: np.ndarray
    K: int

    @classmethod
    def fit(cls, series, K: int) -> TDDMD:
        W, Y = _stack_windows(series, K)
        H = W.reshape(len(W), -1)
        if len(H) < H.shape[1]:
            raise SeriesError(f"TD-DMD with K = {K} needs at least {H.shape[1]} windows, "
                              f"got {len(H)}")
        A, *_ = np.linalg.lstsq(H, Y, rcond=None)
        return cls(np.ascontiguousarray(A.T), K)

    @property
    def d(self) -> int:
        return self.A.shape[0]

    def blocks(self) -> np.ndarray:
        """The per-lag matrices ``A_j`` as (K, d, d), j = 0 the oldest state."""
        return self.A.reshape(self.d, self.K, self.d).transpose(1, 0, 2)

    def predict(self, windows: np.ndarray) -> np.ndarray:
        w = np.asarray(windows, dtype=np.float64)
        return w.reshape(len(w), -1) @ self.A.T

    def spectral_radius(self) -> float:
        """Largest |eigenvalue| of the companion matrix: > 1 means free rollouts blow up."""
        K, d = self.K, self.d
        C = np.zeros((K * d, K * d))
        C[: (K - 1) * d, d:] = np.eye((K - 1) * d)
        C[(K - 1) * d:] = self.A
        return float(np.abs(np.linalg.eigvals(C)).max())


def _stack_windows(series, K: int) -> tuple[np.ndarray, np.ndarray]:
    pairs = [delay_windows(s, K) for s in _as_list(series)]
    W = np.concatenate([p[0] for p in pairs])
    Y = np.concatenate([p[1] for p in pairs])
    if not len(W):
        raise SeriesError(f"the series are too short for a window of K = {K}")
    return W, Y


class HankelDMDBaseline:
    """PyDMD's ``HankelDMD`` (rank-truncated DMD of the delay matrix) as a one-step map.

    PyDMD stacks delay vectors oldest first, as :func:`delay_windows` does; after ``fit``
    the next delay vector is ``U Ã Uᵀ w`` (U the truncated POD basis, Ã the reduced
    operator), and its last block is the forecast of ``x_{t+1}``. Trajectories are fitted
    one at a time (PyDMD takes one snapshot matrix); with several the first is used.
    """

    def __init__(self, K: int, svd_rank=0):
        self.K, self.svd_rank = int(K), svd_rank

    def fit(self, series) -> HankelDMDBaseline:
        from pydmd import HankelDMD

        x = _as_list(series)[0]
        # delay vectors of K states predict the next vector: Hankel depth K
        dmd = HankelDMD(svd_rank=self.svd_rank, d=self.K)
        with warnings.catch_warnings():  # "condition number": delay matrices are ill-posed
            warnings.simplefilter("ignore", UserWarning)
            dmd.fit(x.T)
        sub = dmd._sub_dmd  # the DMD of the Hankel matrix (PyDMD ≥ 2024: wrapped)
        inner = getattr(sub, "pre_post_processed_dmd", sub)
        U = np.asarray(inner._svd_modes)
        Atilde = np.asarray(inner.operator.as_numpy_array)
        self.rank = U.shape[1]
        self.d = x.shape[1]
        # (U Ã Uᵀ) restricted to the rows of the newest state
        self.M = np.real(U[-self.d:] @ Atilde @ U.T)
        return self

    def predict(self, windows: np.ndarray) -> np.ndarray:
        w = np.asarray(windows, dtype=np.float64)
        return w.reshape(len(w), -1) @ self.M.T


# --------------------------------------------------------------------------- TD-TF


@dataclass
class TDTFConfig:
    """Architecture and training hyper-parameters (all stored in the model file)."""

    window: int = 8  # K, states per window
    width: int = 32  # m, token width
    attn_dim: int = 16  # a, query/key width
    hidden: int = 64  # h, feed-forward width
    activation: str = "gelu"  # gelu, tanh or linear
    lag_only_scores: bool = False  # scores β_k only (no query·key term)
    epochs: int = 200
    batch_size: int = 256
    lr: float = 3e-3
    lr_min_ratio: float = 1e-2  # on plateau the lr halves, down to lr·lr_min_ratio
    patience: int = 25  # epochs without a better validation loss before stopping
    val_fraction: float = 0.2  # the last part of every series validates
    rollout_steps: int = 1  # H: loss over H autoregressive steps (1 = one-step loss)
    scale_increments: bool = True  # δ = spread of the increments (False: δ = 1)
    seed: int = 0

    def check(self) -> None:
        """Types first (a model file's configuration is input, docs/tdtf.md), then ranges."""
        for f in fields(self):
            value, kind = getattr(self, f.name), type(f.default)
            if kind is bool:
                ok = isinstance(value, (bool, np.bool_))
            elif kind is int:
                ok = isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
            elif kind is float:
                ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) \
                    and math.isfinite(value)
            else:
                ok = isinstance(value, str)
            if not ok:
                want = {bool: "true or false", int: "an integer", float: "a finite number",
                        str: "a name"}[kind]
                raise SeriesError(f"{f.name} must be {want}, got {str(value)[:40]!r}")
        if self.activation not in ACTIVATIONS:
            raise SeriesError(f"activation must be one of {', '.join(ACTIVATIONS)}, "
                              f"not {self.activation!r}")
        for name in ("window", "width", "attn_dim", "hidden", "batch_size", "rollout_steps"):
            if int(getattr(self, name)) < 1:
                raise SeriesError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.val_fraction < 1:
            raise SeriesError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")
        if not self.lr > 0:
            raise SeriesError(f"lr must be positive, got {self.lr}")
        if self.epochs < 0 or self.patience < 1:
            raise SeriesError("epochs must be >= 0 and patience >= 1")
        if not 0 < self.lr_min_ratio <= 1:
            raise SeriesError(f"lr_min_ratio must lie in (0, 1], got {self.lr_min_ratio}")
        if not 0 <= self.seed < 2**63:
            raise SeriesError(f"seed must lie in [0, 2^63), got {self.seed}")


FORECAST_BYTES = 128
"""Bytes per forecast value: the rollout's float64 array and its copies, and, written as CSV,
each value's text as a Python string (~80 B)."""
PARAMETER_COPIES = 8
"""Float64 copies of the parameters alive while a TD-TF is built and trained (initial draw,
parameters, gradients, Adam's two moments, the best epoch's snapshot, slack)."""


def parameter_shapes(d: int, cfg: TDTFConfig) -> dict[str, tuple[int, ...]]:
    """The network's tensors and their shapes (docs/tdtf.md, Architecture), in the order
    of their seeded initialisation; the model reader checks a file's tensors against them."""
    K, m, a, h = cfg.window, cfg.width, cfg.attn_dim, cfg.hidden
    return {"E": (K, m, d), "P": (K, m), "WQ": (a, m), "WK": (a, m), "beta": (K,),
            "WV": (m, m), "W1": (h, m), "b1": (h,), "W2": (m, h), "b2": (m,), "R": (d, m)}


class TDTFNet(torch.nn.Module):
    """The network on normalised states (docs/tdtf.md, equations (1)–(6)).

    Input ``w`` (B, K, d): z_{t−K+1} … z_t, oldest first (position j holds lag K−1−j).
    """

    def __init__(self, d: int, cfg: TDTFConfig, gen: torch.Generator):
        super().__init__()
        m, h = cfg.width, cfg.hidden
        self.cfg = cfg
        shapes = parameter_shapes(d, cfg)

        def normal(name, std):
            return torch.nn.Parameter(torch.randn(*shapes[name], generator=gen,
                                                  dtype=torch.float64) * std)

        def zeros(name):
            return torch.nn.Parameter(torch.zeros(*shapes[name], dtype=torch.float64))

        self.E = normal("E", std=1 / math.sqrt(d))  # lag-specific token embedding
        self.P = normal("P", std=0.1)  # learned lag vector
        self.WQ = normal("WQ", std=1 / math.sqrt(m))
        self.WK = normal("WK", std=1 / math.sqrt(m))
        self.beta = zeros("beta")  # lag score bias
        self.WV = normal("WV", std=0.5 / math.sqrt(m))
        self.W1 = normal("W1", std=1 / math.sqrt(m))
        self.b1 = zeros("b1")
        self.W2 = normal("W2", std=0.5 / math.sqrt(h))
        self.b2 = zeros("b2")
        self.R = normal("R", std=0.5 / math.sqrt(m))  # read-out of the increment

    def scores(self, h: torch.Tensor) -> torch.Tensor:
        """s_j = (W_Q h_K)·(W_K h_j)/√a + β_j, or β_j alone under the linear restriction."""
        beta = self.beta.expand(h.shape[0], -1)
        if self.cfg.lag_only_scores:
            return beta
        q = h[:, -1] @ self.WQ.T
        k = h @ self.WK.T
        return torch.einsum("ba,bka->bk", q, k) / math.sqrt(self.cfg.attn_dim) + beta

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        act = self.cfg.activation
        if act == "gelu":
            return torch.nn.functional.gelu(x)
        if act == "tanh":
            return torch.tanh(x)
        return x

    def forward(self, w: torch.Tensor, increment_scale: torch.Tensor) -> torch.Tensor:
        h = torch.einsum("jmd,bjd->bjm", self.E, w) + self.P  # tokens (B, K, m)
        alpha = torch.softmax(self.scores(h), dim=-1)  # one query: (B, K)
        u = h[:, -1] + torch.einsum("bj,bjm->bm", alpha, h) @ self.WV.T
        v = u + self.activation(u @ self.W1.T + self.b1) @ self.W2.T + self.b2
        return w[:, -1] + (v @ self.R.T) * increment_scale


@dataclass
class FitLog:
    """Per-epoch training and validation loss (normalised units), and the outcome."""

    train: list[float] = field(default_factory=list)
    val: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    best_epoch: int = -1
    stopped_early: bool = False
    seconds: float = 0.0


class TDTF:
    """A trained (or constructed) TD-TF with its state normalisation; numpy in, numpy out.

    States are normalised per variable, ``z = (x − μ)/σ`` (μ, σ of the training data), and
    the network predicts the increment in units of the training increments' spread
    ``δ`` (per variable): ``ẑ_{t+1} = z_t + δ ⊙ R v``. Both make the loss well scaled
    whatever the units and the sampling step (docs/tdtf.md).
    """

    def __init__(self, net: TDTFNet, mu, sigma, delta, cfg: TDTFConfig, info=None):
        self.net, self.cfg = net, cfg
        self.mu = np.asarray(mu, dtype=np.float64)
        self.sigma = np.asarray(sigma, dtype=np.float64)
        self.delta = np.asarray(delta, dtype=np.float64)
        self.info = dict(info or {})
        self.log: FitLog | None = None

    @property
    def K(self) -> int:
        return self.cfg.window

    @property
    def d(self) -> int:
        return len(self.mu)

    @property
    def n_params(self) -> int:
        return int(sum(p.numel() for p in self.net.parameters()))

    # ------------------------------------------------------------------ construction

    @classmethod
    def new(cls, d: int, cfg: TDTFConfig, mu=None, sigma=None, delta=None) -> TDTF:
        """A TD-TF with seeded initial weights; refused before allocating when its
        PARAMETER_COPIES float64 copies exceed the available memory (docs/tdtf.md)."""
        cfg.check()
        n = sum(math.prod(shape) for shape in parameter_shapes(d, cfg).values())
        check_memory(None, 8 * PARAMETER_COPIES * n, f"a TD-TF of {n:,} parameters "
                     f"(K = {cfg.window}, width {cfg.width}, attention {cfg.attn_dim}, "
                     f"hidden {cfg.hidden}, d = {d})", SeriesError)
        gen = torch.Generator().manual_seed(int(cfg.seed))
        net = TDTFNet(d, cfg, gen)
        ones = np.ones(d)
        return cls(net, np.zeros(d) if mu is None else mu, ones if sigma is None else sigma,
                   ones if delta is None else delta, cfg)

    @classmethod
    def from_tddmd(cls, tddmd: TDDMD, mu=None, sigma=None, width: int | None = None) -> TDTF:
        """Restricted TD-TF (lag-only scores, linear FF) whose prediction equals ``tddmd``.

        With z = (x − μ)/σ the delay model reads ``z_{t+1} = Σ_j M_j z_j + c``, M_j =
        S⁻¹A_jS, c = S⁻¹(Σ_j A_j − I)μ. Weights: β = 0 (uniform α = 1/K), W_V = I,
        W_1 = W_2 = 0, b_2 = (c, 0), R = (δ⁻¹, 0), E_j = (K·M'_j, 0) for the older lags
        and E_{K−1} = (M'_{K−1}/(1 + 1/K), 0) with M'_{K−1} = M_{K−1} − I (the residual
        z_t). docs/tdtf.md derives it.
        """
        K, d = tddmd.K, tddmd.d
        m = max(d, width or d)
        mu = np.zeros(d) if mu is None else np.asarray(mu, dtype=np.float64)
        sigma = np.ones(d) if sigma is None else np.asarray(sigma, dtype=np.float64)
        cfg = TDTFConfig(window=K, width=m, attn_dim=1, hidden=1, activation="linear",
                         lag_only_scores=True)
        model = cls.new(d, cfg, mu, sigma, np.ones(d))
        A = tddmd.blocks()
        M = np.einsum("i,jik,k->jik", 1 / sigma, A, sigma)  # S⁻¹ A_j S
        c = (A.sum(axis=0) - np.eye(d)) @ mu / sigma
        M[-1] -= np.eye(d)
        E = np.zeros((K, m, d))
        E[:-1, :d] = K * M[:-1]
        E[-1, :d] = M[-1] / (1 + 1 / K)
        net = model.net
        with torch.no_grad():
            for p in net.parameters():
                p.zero_()
            net.E.copy_(torch.from_numpy(E))
            net.WV.copy_(torch.eye(m, dtype=torch.float64))
            net.b2[:d] = torch.from_numpy(c)
            net.R[:, :d] = torch.eye(d, dtype=torch.float64)
        model.info["constructed_from"] = "TD-DMD"
        return model

    # --------------------------------------------------------------------- inference

    def _normalise(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((np.asarray(x, dtype=np.float64) - self.mu) / self.sigma)

    def predict(self, windows: np.ndarray) -> np.ndarray:
        """Next states (B, d) for windows (B, K, d) in the data's own units."""
        w = np.asarray(windows, dtype=np.float64)
        if w.ndim != 3 or w.shape[1:] != (self.K, self.d):
            raise SeriesError(f"windows must have shape (B, {self.K}, {self.d}), got {w.shape}")
        with torch.no_grad():
            z = self.net(self._normalise(w), torch.from_numpy(self.delta))
        return z.numpy() * self.sigma + self.mu

    def forecast(self, history: np.ndarray, steps: int) -> np.ndarray:
        """Roll out ``steps`` states after the last K rows of ``history``."""
        history = _as_list(history)[0]
        if len(history) < self.K:
            raise SeriesError(f"the model reads windows of K = {self.K} states, the series "
                              f"has only {len(history)} rows")
        if history.shape[1] != self.d:
            raise SeriesError(f"the series has d = {history.shape[1]} variables, the model "
                              f"was trained on d = {self.d}")
        check_memory(None, FORECAST_BYTES * int(steps) * self.d,
                     f"a forecast of {int(steps):,} steps in d = {self.d}", SeriesError)
        return rollout(self, history[-self.K:], int(steps))

    def affine_map(self) -> tuple[np.ndarray, np.ndarray]:
        """Probe the prediction as ``x_{t+1} = G·vec(window) + g`` (exact if restricted).

        Evaluates the model at the zero window and at every unit window; for a restricted
        model (docs/tdtf.md) this is its exact affine map, otherwise a linearisation at 0.
        """
        n = self.K * self.d
        probes = np.concatenate([np.zeros((1, n)), np.eye(n)]).reshape(n + 1, self.K, self.d)
        out = self.predict(probes)
        return (out[1:] - out[0]).T, out[0]

    # ---------------------------------------------------------------------- training

    @classmethod
    def fit(cls, series, cfg: TDTFConfig | None = None, progress=None) -> TDTF:
        """Train on one (T, d) series or a list of trajectories (docs/tdtf.md, Training).

        The last ``val_fraction`` of every series is held out for early stopping; the
        normalisation comes from the training part. Adam on mini-batches (seeded
        shuffles), loss = mean squared error of the H = ``rollout_steps`` autoregressive
        predictions in units of δ; the lr halves when the validation loss stalls for
        patience/3 epochs; training stops after ``patience`` epochs without a better
        validation loss and returns the best parameters. ``progress(epoch, train, val)``.
        """
        cfg = copy.deepcopy(cfg or TDTFConfig())
        cfg.check()
        torch.set_num_threads(1)
        xs = _as_list(series)
        d = xs[0].shape[1]
        if any(s.shape[1] != d for s in xs):
            raise SeriesError("all trajectories must have the same number of variables")
        if not all(np.isfinite(s).all() for s in xs):
            raise SeriesError("the series contains NaN or infinite values")
        K, H = cfg.window, cfg.rollout_steps
        tr_parts, va_parts = [], []
        for s in xs:
            cut = int(round(len(s) * (1 - cfg.val_fraction)))
            tr_parts.append(s[:cut])
            va_parts.append(s[cut:])
        windows = sum(max(0, len(s) - K - H + 1) for s in tr_parts + va_parts)
        # 3 float64 copies of the windows (segments, concatenation, normalised) and the
        # validation pass's tokens and keys: 1.3-1.6 x the peak measured (docs/tdtf.md)
        check_memory(None, 8 * windows * (K + H) * (3 * d + cfg.width + cfg.attn_dim),
                     f"{windows:,} training windows of K + H = {K + H} states in d = {d}",
                     SeriesError)
        tr = [segments(s, K + H) for s in tr_parts]
        va = [segments(s, K + H) for s in va_parts]
        tr = np.concatenate(tr)
        va = np.concatenate(va)
        if len(tr) < 2 or len(va) < 1:
            need = math.ceil((K + H + 1) / min(cfg.val_fraction, 1 - cfg.val_fraction))
            raise SeriesError(f"too few rows to train with K = {K} and H = {H}: need at "
                              f"least ~{need} time steps")
        flat = np.concatenate(tr_parts)
        mu = flat.mean(axis=0)
        sigma = flat.std(axis=0)
        if np.any(sigma <= 1e-12 * (1 + np.abs(mu))):
            raise SeriesError("a variable is constant over the training part; drop it")
        steps = np.concatenate([np.diff(s, axis=0) for s in tr_parts]) / sigma
        delta = np.sqrt((steps ** 2).mean(axis=0))
        delta = np.where((delta > 0) & cfg.scale_increments, delta, 1.0)
        model = cls.new(d, cfg, mu, sigma, delta)
        model.log = _train(model, torch.from_numpy((tr - mu) / sigma),
                           torch.from_numpy((va - mu) / sigma), progress)
        return model

    # -------------------------------------------------------------------------- files

    def save(self, path) -> None:
        """``.safetensors`` (float64 tensors + metadata: format, config, μ, σ, δ), atomic."""
        from safetensors.numpy import save_file

        tensors = {k: v.detach().numpy().copy() for k, v in self.net.state_dict().items()}
        tensors.update(mu=self.mu.copy(), sigma=self.sigma.copy(), delta=self.delta.copy())
        config = {k: v.item() if isinstance(v, np.generic) else v  # numpy scalars: JSON's
                  for k, v in asdict(self.cfg).items()}
        meta = {"format": FORMAT, "config": json.dumps(config),
                "d": str(self.d), "info": json.dumps(self.info, default=str)}
        write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=meta))

    @classmethod
    def load(cls, path) -> TDTF:
        """Read and check a model file written by :meth:`save` (docs/tdtf.md, Model files):
        every problem is one :class:`SeriesError` line, found before anything is built."""
        try:
            return cls._load(Path(path))
        except ModelFileError as exc:  # the checks shared with exactformer's model reader
            raise SeriesError(str(exc)) from None

    @classmethod
    def _load(cls, path: Path) -> TDTF:
        from .modelfile import checked_tensor, plain_metadata, read_safetensors

        meta, tensors = read_safetensors(path)  # ModelFileError: a SeriesError in load()
        if meta.get("format") != FORMAT:
            raise SeriesError(f"{path}: not a TD-TF model (format {meta.get('format')!r}, "
                              f"expected {FORMAT!r})")
        missing = [k for k in ("d", "config") if k not in meta]
        if missing:
            raise SeriesError(f"{path}: missing metadata {', '.join(missing)} (docs/tdtf.md)")
        d = int(plain_metadata(path, meta, "d", DIGITS, doc="docs/tdtf.md"))
        try:
            config = strict_json(meta["config"])
            info = strict_json(meta.get("info", "{}"))
        except ValueError as exc:  # JSONDecodeError, a duplicate key, NaN, 1e400
            raise SeriesError(f"{path}: corrupt metadata ({exc})") from None
        except RecursionError:
            raise SeriesError(f"{path}: corrupt metadata (JSON nested too deeply)") from None
        if d < 1:
            raise SeriesError(f"{path}: metadata d = {d}: a series has at least 1 variable")
        cfg = _config(path, config)
        if not isinstance(info, dict):
            raise SeriesError(f"{path}: metadata 'info' must be a JSON object")
        shapes = parameter_shapes(d, cfg)  # before building: the file's tensors bound them
        stats = {k: checked_tensor(path, tensors, k, (d,)) for k in ("mu", "sigma", "delta")}
        weights = {k: checked_tensor(path, tensors, k, shape) for k, shape in shapes.items()}
        extra = sorted(set(tensors) - set(shapes) - set(stats))
        if extra:
            raise SeriesError(f"{path}: unexpected tensor {extra[0][:60]!r} (not part of "
                              f"{FORMAT})")
        for k in ("sigma", "delta"):
            if not np.all(stats[k] > 0):
                raise SeriesError(f"{path}: tensor {k} must be positive (it divides the "
                                  "states)")
        model = cls.new(d, cfg, stats["mu"], stats["sigma"], stats["delta"])
        model.net.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
        model.info = info
        return model


def _config(path, config) -> TDTFConfig:
    """A model file's configuration: a JSON object with every field of TDTFConfig, each of
    its type and range (``TDTFConfig.check``)."""
    if not isinstance(config, dict):
        raise SeriesError(f"{path}: metadata 'config' must be a JSON object")
    names = [f.name for f in fields(TDTFConfig)]
    unknown = [k for k in config if k not in names]
    missing = [k for k in names if k not in config]
    if unknown or missing:
        what = (f"unknown key {unknown[0][:40]!r}" if unknown
                else f"missing key(s) {', '.join(missing)}")
        raise SeriesError(f"{path}: metadata 'config': {what} (docs/tdtf.md)")
    cfg = TDTFConfig(**config)
    try:
        cfg.check()
    except SeriesError as exc:
        raise SeriesError(f"{path}: metadata 'config': {exc}") from None
    return cfg


def _rollout_loss(net: TDTFNet, seg: torch.Tensor, K: int, delta: torch.Tensor) -> torch.Tensor:
    """Mean of ‖(ẑ_{t+h} − z_{t+h})/δ‖²/d over the H autoregressive steps of each segment."""
    w = seg[:, :K]
    H = seg.shape[1] - K
    total = seg.new_zeros(())
    for i in range(H):
        pred = net(w, delta)
        total = total + (((pred - seg[:, K + i]) / delta) ** 2).mean()
        if i + 1 < H:
            w = torch.cat([w[:, 1:], pred[:, None]], dim=1)
    return total / H


def _train(model: TDTF, tr: torch.Tensor, va: torch.Tensor, progress) -> FitLog:
    cfg, net = model.cfg, model.net
    delta = torch.from_numpy(model.delta)
    gen = torch.Generator().manual_seed(int(cfg.seed) + 1)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    log = FitLog()
    best, best_state, stall, since_drop = math.inf, copy.deepcopy(net.state_dict()), 0, 0
    t0 = time.perf_counter()
    K = cfg.window
    for epoch in range(cfg.epochs):
        net.train()
        order = torch.randperm(len(tr), generator=gen)
        total, count = 0.0, 0
        for start in range(0, len(tr), cfg.batch_size):
            batch = tr[order[start:start + cfg.batch_size]]
            opt.zero_grad(set_to_none=True)
            loss = _rollout_loss(net, batch, K, delta)
            if not torch.isfinite(loss):
                raise SeriesError(f"training diverged at epoch {epoch} (lr {cfg.lr:g}); "
                                  "try a smaller lr")
            loss.backward()
            opt.step()
            total += loss.item() * len(batch)
            count += len(batch)
        with torch.no_grad():
            val = _rollout_loss(net, va, K, delta).item()
        log.train.append(total / count)
        log.val.append(val)
        log.lr.append(opt.param_groups[0]["lr"])
        if progress is not None:
            progress(epoch, log.train[-1], val)
        if val < best:
            best, best_state, stall, since_drop = val, copy.deepcopy(net.state_dict()), 0, 0
            log.best_epoch = epoch
        else:
            stall += 1
            since_drop += 1
        if since_drop >= max(1, cfg.patience // 3):
            for g in opt.param_groups:
                g["lr"] = max(g["lr"] / 2, cfg.lr * cfg.lr_min_ratio)
            since_drop = 0
        if stall >= cfg.patience:
            log.stopped_early = True
            break
    net.load_state_dict(best_state)
    net.eval()
    log.seconds = time.perf_counter() - t0
    return log


# --------------------------------------------------------------------------- files


def load_series(path) -> np.ndarray:
    """A user's time series: ``.npz`` with array ``x`` (T, d), or CSV (optional header).

    Every problem is one :class:`SeriesError` line: missing file, no ``x``, wrong shape,
    a cell that is not a plain ASCII decimal, a value float64 would change, ragged rows,
    NaN/inf, fewer than two rows, more than the available memory (docs/tdtf.md, Series
    files). The checks are the dataset readers' (:mod:`exactformer.dataset`).
    """
    path = Path(path)
    if not path.exists():
        raise SeriesError(f"{path}: no such file")
    if not path.is_file():
        raise SeriesError(f"{path}: not a regular file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            x = _read_npz(path)
        elif suffix in (".csv", ".txt"):
            x = _read_csv(path)
        else:
            raise SeriesError(f"{path}: expected a .npz (array 'x') or .csv file")
    except DatasetError as exc:  # the dataset readers' checks (they name the file)
        raise SeriesError(str(exc)) from None
    if len(x) < 2 or x.shape[1] < 1:
        raise SeriesError(f"{path}: need at least 2 time steps and 1 variable, got {x.shape}")
    if not np.isfinite(x).all():
        row = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise SeriesError(f"{path}: NaN or infinite value in time step {row}")
    return x


def _read_npz(path: Path) -> np.ndarray:
    """Array ``x``: its header checked (real dtype, size, memory) before it is read, one
    member of that name, values float64 holds (dataset.npz_arrays, dataset.as_float64)."""
    x = npz_arrays(path, {"x": "fiu"}).get("x")
    if x is None:
        with zipfile.ZipFile(path) as zf:
            found = ", ".join(n.removesuffix(".npy") for n in zf.namelist())
        raise SeriesError(f"{path}: no array 'x' (found: {found[:200]})")
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise SeriesError(f"{path}: 'x' must be a real array of shape (T, d), got "
                          f"{x.dtype} {x.shape}")
    return as_float64(x, f"{path}: 'x'")


CSV_FACTOR = 64
"""Bytes of Python objects and arrays per byte of CSV while it is read: 55 measured for
one-digit cells (`0,1,2,3`, the densest), 9 for 17-digit floats (docs/tdtf.md)."""
_NON_FINITE = re.compile(r"[-+]?(?:inf|infinity|nan)", re.IGNORECASE)


def _read_csv(path: Path) -> np.ndarray:
    """One row per time step, cells plain ASCII decimals (dataset.DECIMAL) with optional
    spaces around them; the first row is a header when a cell of it is no number at all."""
    check_memory(path, CSV_FACTOR * path.stat().st_size, "reading this CSV file", SeriesError)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:  # a BOM is not a cell
            reader = csv.reader(fh, skipinitialspace=True)  # `1, "2"` as `1,"2"`
            rows = [(reader.line_num, r) for r in reader if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SeriesError(f"{path}: cannot read CSV ({exc})") from None
    if rows and not all(_is_number(c) for c in rows[0][1]):
        rows = rows[1:]  # header
    if not rows:
        raise SeriesError(f"{path}: no data rows")
    width = len(rows[0][1])
    values = []
    for line, r in rows:
        if len(r) != width:
            raise SeriesError(f"{path}: line {line} has {len(r)} columns, the first data row "
                              f"has {width}")
        values.append([_cell(path, line, k, c) for k, c in enumerate(r)])
    return np.asarray(values, dtype=np.float64)


def _cell(path: Path, line: int, column: int, cell: str) -> float:
    text = cell.strip(" \t")
    try:
        return decimal_float64(text)
    except ValueError as exc:
        if _NON_FINITE.fullmatch(text):
            return float(text)  # refused with its time step after reading
        why = "is not a number (plain ASCII decimal: digits, '.', 'e', a sign)" \
            if str(exc) == "not a number" else f"is refused: {exc}"
        raise SeriesError(f"{path}: line {line}, column {column + 1}: {text[:40]!r} {why}"
                          ) from None


def _is_number(cell: str) -> bool:
    """Python reads it as a number (spaces, '1_0', '１' too): such a first row is data,
    checked strictly, never dropped as a header."""
    try:
        float(cell)
    except ValueError:
        return False
    return True


def save_series(x: np.ndarray, path) -> None:
    """Write (T, d) as ``.npz`` (array ``x``) or ``.csv`` (header x0, x1, …), atomically."""
    path = Path(path)
    x = np.asarray(x, dtype=np.float64)
    if path.suffix.lower() == ".csv":
        def write(tmp):
            with open(tmp, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow([f"x{i}" for i in range(x.shape[1])])
                w.writerows([[repr(float(v)) for v in row] for row in x])
    else:
        def write(tmp):
            with open(tmp, "wb") as fh:
                np.savez(fh, x=x)
    write_atomic(path, write)

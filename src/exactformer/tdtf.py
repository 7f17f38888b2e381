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
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .dataset import write_atomic
from .errors import ExactformerError

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


class TDTFNet(torch.nn.Module):
    """The network on normalised states (docs/tdtf.md, equations (1)–(6)).

    Input ``w`` (B, K, d): z_{t−K+1} … z_t, oldest first (position j holds lag K−1−j).
    """

    def __init__(self, d: int, cfg: TDTFConfig, gen: torch.Generator):
        super().__init__()
        K, m, a, h = cfg.window, cfg.width, cfg.attn_dim, cfg.hidden
        self.cfg = cfg

        def normal(*shape, std):
            return torch.nn.Parameter(torch.randn(*shape, generator=gen, dtype=torch.float64)
                                      * std)

        def zeros(*shape):
            return torch.nn.Parameter(torch.zeros(*shape, dtype=torch.float64))

        self.E = normal(K, m, d, std=1 / math.sqrt(d))  # lag-specific token embedding
        self.P = normal(K, m, std=0.1)  # learned lag vector
        self.WQ = normal(a, m, std=1 / math.sqrt(m))
        self.WK = normal(a, m, std=1 / math.sqrt(m))
        self.beta = zeros(K)  # lag score bias
        self.WV = normal(m, m, std=0.5 / math.sqrt(m))
        self.W1 = normal(h, m, std=1 / math.sqrt(m))
        self.b1 = zeros(h)
        self.W2 = normal(m, h, std=0.5 / math.sqrt(h))
        self.b2 = zeros(m)
        self.R = normal(d, m, std=0.5 / math.sqrt(m))  # read-out of the increment

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
        cfg.check()
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
        meta = {"format": FORMAT, "config": json.dumps(asdict(self.cfg)),
                "d": str(self.d), "info": json.dumps(self.info, default=str)}
        write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=meta))

    @classmethod
    def load(cls, path) -> TDTF:
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise SeriesError(f"{path}: no such model file")
        try:
            with safe_open(str(path), framework="numpy") as fh:
                meta = fh.metadata() or {}
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise SeriesError(f"{path}: not a readable .safetensors file ({exc})") from None
        if meta.get("format") != FORMAT:
            raise SeriesError(f"{path}: not a TD-TF model (format {meta.get('format')!r}, "
                              f"expected {FORMAT!r})")
        try:
            cfg = TDTFConfig(**json.loads(meta["config"]))
            model = cls.new(int(meta["d"]), cfg, tensors.pop("mu"), tensors.pop("sigma"),
                            tensors.pop("delta"))
            model.net.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()})
            model.info = json.loads(meta.get("info", "{}"))
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise SeriesError(f"{path}: corrupt TD-TF model file ({exc})") from None
        return model


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
    non-numeric cells, ragged rows, NaN/inf, fewer than two rows.
    """
    path = Path(path)
    if not path.is_file():
        raise SeriesError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                if "x" not in z.files:
                    raise SeriesError(f"{path}: no array 'x' (found: {', '.join(z.files)})")
                x = np.asarray(z["x"])
        except SeriesError:
            raise
        except Exception as exc:  # zipfile / pickle / format errors of a corrupt file
            raise SeriesError(f"{path}: not a readable .npz file ({exc})") from None
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2 or not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
            raise SeriesError(f"{path}: 'x' must be a real array of shape (T, d), got "
                              f"{x.dtype} {x.shape}")
        x = x.astype(np.float64)
    elif suffix in (".csv", ".txt"):
        x = _read_csv(path)
    else:
        raise SeriesError(f"{path}: expected a .npz (array 'x') or .csv file")
    if len(x) < 2 or x.shape[1] < 1:
        raise SeriesError(f"{path}: need at least 2 time steps and 1 variable, got {x.shape}")
    if not np.isfinite(x).all():
        row = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise SeriesError(f"{path}: NaN or infinite value in time step {row}")
    return x


def _read_csv(path: Path) -> np.ndarray:
    try:
        with open(path, newline="") as fh:
            rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SeriesError(f"{path}: cannot read CSV ({exc})") from None
    if rows and not all(_is_number(c) for c in rows[0]):
        rows = rows[1:]  # header
    if not rows:
        raise SeriesError(f"{path}: no data rows")
    width = len(rows[0])
    values = []
    for i, r in enumerate(rows):
        if len(r) != width:
            raise SeriesError(f"{path}: data row {i + 1} has {len(r)} columns, the first has "
                              f"{width}")
        try:
            values.append([float(c) for c in r])
        except ValueError:
            bad = next(c for c in r if not _is_number(c))
            raise SeriesError(f"{path}: data row {i + 1}: {bad.strip()!r} is not a number") \
                from None
    return np.asarray(values, dtype=np.float64)


def _is_number(cell: str) -> bool:
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

"""Mean-field self-attention at low temperature (``exactformer experiment meanfield``).

Measures, with :mod:`exactformer.meanfield`, the four claims of Alcalde, Bungert, Riedl et
al., *Quantifying Concentration Phenomena of Mean-Field Transformers in the Low-Temperature
Regime*, on the normalised flow ``ẋ_i = V(Σ_j softmax_j(β x_iᵀ A x_j) x_j − x_i)``
(docs/meanfield.md): the W2 distance between the tokens at time t and the push-forward of
the initial tokens under the zero-temperature projection map, for several β; its plateau
minimum against ``sqrt(log(β+1)/β)``; the time it takes to get there against log β; and the
late-time configuration against the eigenvectors of V. Every number in the captions of
``README.md`` is in ``results.json``; the trajectories are in ``trajectories.npz`` so that
the tests recompute the claims from them.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..dynamics import random_spd
from ..figures import pyplot, save
from ..meanfield import (
    SelfAttentionFlow,
    distinct_points,
    projection_map,
    require_pot,  # noqa: F401  (re-exported for the command and the tests)
    simulate,
    wasserstein2,
)

PAPER = ("Alcalde, Bungert, Riedl et al., *Quantifying Concentration Phenomena of Mean-Field "
         "Transformers in the Low-Temperature Regime*")


@dataclass
class Settings:
    """What one run measures. ``quick_settings()`` is the < 1 min pipeline check."""

    n: int = 2000
    dims: tuple[int, ...] = (2, 16)
    betas: tuple[float, ...] = (10.0, 100.0, 1000.0, 10000.0)
    seeds: tuple[int, ...] = (3, 5)  # seeds per entry of dims
    n_times: int = 16
    horizon: float = 10.0  # t_max = horizon · log β
    condition: float = 4.0  # condition number of A = QᵀK
    rtol: float = 1e-6
    atol: float = 1e-9
    # terminal phase: A = I, V = R diag(value_spectrum) Rᵀ, one β, long time
    terminal_n: int = 1000
    terminal_seeds: int = 3
    terminal_beta: float = 10.0
    terminal_t: float = 100.0
    value_spectrum: tuple[float, float] = (1.0, 0.25)
    # one large run: d = 2, W2 on subsamples
    big_n: int = 10_000
    big_beta: float = 100.0
    big_subsample: int = 2000
    big_subsamples: int = 3
    chunk: int = 64
    single_exp: bool = True  # float32 exponentials (docs/meanfield.md, "Time stepping")


def seed_count(s: Settings, d: int) -> int:
    """How many seeds the runs in dimension ``d`` use."""
    return s.seeds[s.dims.index(d)]


def quick_settings() -> Settings:
    return Settings(n=300, betas=(10.0, 100.0, 1000.0), seeds=(3, 3), n_times=16,
                    terminal_n=300,
                    terminal_t=60.0, big_n=1000, big_subsample=500, big_subsamples=2)


# ------------------------------------------------------------------------- the data


def initial_tokens(seed: int, n: int, d: int, condition: float = 4.0):
    """Tokens and the score matrix A of one seed.

    A is a random SPD matrix (eigenvalues 1…condition). Half of the tokens lie on the
    A-ellipsoid ``xᵀAx = 1`` (uniform direction; in d = 2 at stratified angles, so that no
    two are closer than a tie), half inside it at ``r·(that)``, r uniform in [0, 1]. On the
    ellipsoid every token is its own best key (``A x`` is the normal there), so the
    projection map is explicit (:func:`exactformer.meanfield.projection_map`): each inner
    token goes to its best key on the ellipsoid; the push-forward lives on the surface.
    """
    rng = np.random.default_rng(seed)
    A = random_spd(d, rng, condition)
    m = n // 2
    if d == 2:
        ang = 2 * np.pi * (np.arange(m) + rng.uniform(size=m)) / m
        surface = np.c_[np.cos(ang), np.sin(ang)]
    else:
        g = rng.standard_normal((m, d))
        surface = g / np.linalg.norm(g, axis=1, keepdims=True)
    g = rng.standard_normal((n - m, d))
    inner = g / np.linalg.norm(g, axis=1, keepdims=True) * rng.uniform(size=(n - m, 1))
    w, E = np.linalg.eigh(A)
    return np.vstack([surface, inner]) @ (E / np.sqrt(w)).T, A


def value_matrix(seed: int, spectrum) -> np.ndarray:
    """``V = R diag(spectrum) Rᵀ`` with a random rotation R (2-D)."""
    rng = np.random.default_rng(10_000 + seed)
    R, _ = np.linalg.qr(rng.standard_normal((len(spectrum), len(spectrum))))
    return (R * np.asarray(spectrum)) @ R.T


def output_times(beta: float, s: Settings) -> np.ndarray:
    t_max = s.horizon * math.log(beta)
    return np.concatenate([[0.0], np.geomspace(t_max / 400, t_max, s.n_times - 1)])


# ------------------------------------------------------------------ measurements


def fit_line(x, y) -> dict:
    """Least-squares ``y = slope·x + intercept`` and its R²."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    slope, intercept = np.polyfit(x, y, 1)
    res = y - (slope * x + intercept)
    ss = float(((y - y.mean()) ** 2).sum())
    return {"slope": float(slope), "intercept": float(intercept),
            "r2": float(1 - (res ** 2).sum() / ss) if ss > 0 else 1.0}


def mean_ci(values, level: float = 0.95) -> dict:
    """Mean and Student-t confidence interval over seeds."""
    from scipy.stats import t as student

    v = np.asarray(values, dtype=float)
    m = float(v.mean())
    if len(v) < 2:
        return {"mean": m, "ci": [m, m], "values": v.tolist()}
    half = float(student.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return {"mean": m, "ci": [m - half, m + half], "values": v.tolist()}


def crossing_time(times, w2, level: float) -> float:
    """The first time the curve ``w2(t)`` comes down to ``level``, interpolated between the
    two output times around the crossing: ``log w2`` linear in ``log t`` (in ``t`` on the
    first interval, which starts at t = 0). ``times[0]`` if the curve starts at or below it."""
    times, w2 = np.asarray(times, float), np.asarray(w2, float)
    k = int(np.argmax(w2 <= level))
    if k == 0:
        return float(times[0])
    t0, t1 = times[k - 1], times[k]
    frac = math.log(w2[k - 1] / level) / math.log(w2[k - 1] / w2[k]) if w2[k] < w2[k - 1] \
        else 1.0
    if t0 <= 0:
        return float(t0 + frac * (t1 - t0))
    return float(math.exp(math.log(t0) + frac * math.log(t1 / t0)))


def plateau(times, w2) -> dict:
    """Minimum of the W2 curve, when it is reached, when the curve first comes within 2× of
    it (arrival: interpolated between output times by :func:`crossing_time`;
    ``arrival_grid``: the first output time within 2×), how long it stays within 2× after
    that, and where it ends."""
    times, w2 = np.asarray(times), np.asarray(w2)
    k = int(np.argmin(w2))
    within = w2 <= 2 * w2[k]
    first = int(np.argmax(within))
    last = first
    while last + 1 < len(w2) and within[last + 1]:
        last += 1
    return {"min": float(w2[k]), "t_min": float(times[k]),
            "arrival": crossing_time(times, w2, 2 * w2[k]),
            "arrival_grid": float(times[first]), "concentrates": bool(w2[0] > 2 * w2[k]),
            "stays_until": float(times[last]), "initial": float(w2[0]), "final": float(w2[-1]),
            "left_plateau": bool(last + 1 < len(w2))}


def reference_rate(beta) -> np.ndarray:
    beta = np.asarray(beta, dtype=float)
    return np.sqrt(np.log(beta + 1) / beta)


def concentration_run(d: int, beta: float, seed: int, s: Settings) -> dict:
    X0, A = initial_tokens(seed, s.n, d, s.condition)
    eye = np.eye(d)
    proj = projection_map(X0, eye, A, eye, chunk=s.chunk)
    times = output_times(beta, s)
    flow = SelfAttentionFlow(eye, A, eye, beta, chunk=s.chunk, single_exp=s.single_exp)
    t0 = time.process_time()
    sol = simulate(X0, flow, times, rtol=s.rtol, atol=s.atol)
    cpu = time.process_time() - t0
    Y, counts = distinct_points(proj.image, 1e-12)
    t1 = time.process_time()
    w2 = [wasserstein2(X, Y, counts) for X in sol.states]
    w2_cpu = time.process_time() - t1
    return {"d": d, "beta": beta, "seed": seed, "times": times.tolist(), "w2": w2,
            "projection": proj.method, "atoms": int(len(Y)), "steps": sol.steps,
            "rejected": sol.rejected, "evaluations": sol.evaluations, "cpu_s": cpu,
            "w2_cpu_s": w2_cpu, **plateau(times, w2), "_states": sol.states, "_X0": X0,
            "_image": proj.image, "_A": A}


def terminal_run(seed: int, s: Settings, spectrum) -> dict:
    """A = I and tokens on / inside the unit circle (isotropic scores and data, so that V is
    the only anisotropy), β small, long time."""
    X0, _ = initial_tokens(seed, s.terminal_n, 2, 1.0)
    X0 = X0 / np.linalg.norm(X0, axis=1).max()
    V = value_matrix(seed, spectrum)
    eye = np.eye(2)
    times = np.concatenate([[0.0], np.geomspace(0.05, s.terminal_t, 30)])
    flow = SelfAttentionFlow(eye, eye, V, s.terminal_beta, chunk=s.chunk,
                             single_exp=s.single_exp)
    sol = simulate(X0, flow, times, rtol=s.rtol, atol=s.atol)
    return {"seed": seed, "V": V.tolist(), "spectrum": list(spectrum),
            **configuration_axes(sol.final, V), "times": times.tolist(),
            "_states": sol.states}


def configuration_axes(X: np.ndarray, V: np.ndarray) -> dict:
    """The centred configuration against the eigenvectors of V: |cos| of the angle between
    its principal axis and the eigenvector of the smallest (slow) and of the largest
    eigenvalue, the RMS spread along each, and the total RMS spread."""
    lam, R = np.linalg.eigh(np.asarray(V))
    slow, fast = R[:, 0], R[:, -1]
    C = X - X.mean(axis=0)
    ev, evec = np.linalg.eigh(C.T @ C / len(C))
    axis = evec[:, -1]
    return {"abs_cos_slow": float(abs(axis @ slow)), "abs_cos_fast": float(abs(axis @ fast)),
            "spread_slow": float(np.sqrt(((C @ slow) ** 2).mean())),
            "spread_fast": float(np.sqrt(((C @ fast) ** 2).mean())),
            "spread": float(np.sqrt((C ** 2).sum(axis=1).mean())),
            "slow_eigenvector": slow.tolist(), "fast_eigenvector": fast.tolist()}


def big_run(s: Settings) -> dict:
    """n = big_n tokens, d = 2, one β, to t = horizon·log β; W2 on subsamples (the same
    token indices at time t and in the image), plus the token-wise RMS distance on all
    tokens (the identity coupling: an upper bound on the full W2)."""
    X0, A = initial_tokens(0, s.big_n, 2, s.condition)
    eye = np.eye(2)
    proj = projection_map(X0, eye, A, eye, chunk=s.chunk)
    times = output_times(s.big_beta, s)
    load0, t0, w0 = os.getloadavg(), time.process_time(), time.perf_counter()
    flow = SelfAttentionFlow(eye, A, eye, s.big_beta, chunk=s.chunk, single_exp=s.single_exp)
    sol = simulate(X0, flow, times, rtol=s.rtol, atol=s.atol)
    cpu, wall = time.process_time() - t0, time.perf_counter() - w0
    load_mid = os.getloadavg()
    rng = np.random.default_rng(1)
    subsets = [rng.choice(s.big_n, s.big_subsample, replace=False)
               for _ in range(s.big_subsamples)]
    w2 = [[wasserstein2(X[idx], proj.image[idx]) for idx in subsets] for X in sol.states]
    rms = [float(np.sqrt(((X - proj.image) ** 2).sum(axis=1).mean())) for X in sol.states]
    mean_w2 = np.mean(w2, axis=1)
    cpu_total, wall_total = time.process_time() - t0, time.perf_counter() - w0
    return {"n": s.big_n, "beta": s.big_beta, "t_max": float(times[-1]),
            "subsample": s.big_subsample, "subsamples": s.big_subsamples,
            "times": times.tolist(), "w2_subsample_mean": mean_w2.tolist(),
            "w2_subsample_spread": np.ptp(w2, axis=1).tolist(), "rms_identity": rms,
            "steps": sol.steps, "rejected": sol.rejected, "evaluations": sol.evaluations,
            "cpu_s": cpu, "wall_s": wall, "cpu_total_s": cpu_total, "wall_total_s": wall_total,
            "load_start": list(load0), "load_after_integration": list(load_mid),
            "load_end": list(os.getloadavg()),
            **plateau(times, mean_w2)}


# ----------------------------------------------------------------------- figures


def _by(runs, d, beta):
    return [r for r in runs if r["d"] == d and r["beta"] == beta]


def figure_distance(out: Path, runs, s: Settings) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(s.dims), figsize=(6 * len(s.dims), 4.5), squeeze=False)
    cm = plt.get_cmap("viridis")
    for ax, d in zip(axes[0], s.dims):
        for k, beta in enumerate(s.betas):
            rs = _by(runs, d, beta)
            t = np.asarray(rs[0]["times"][1:])
            W = np.array([r["w2"][1:] for r in rs])
            c = cm(k / max(len(s.betas) - 1, 1))
            ax.plot(t, W.mean(axis=0), color=c, label=f"β = {beta:g}")
            ax.fill_between(t, W.min(axis=0), W.max(axis=0), color=c, alpha=0.2)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("t")
        ax.set_ylabel("W2(μ_t, T#μ_0)")
        ax.set_title(f"d = {d}, n = {s.n}: mean and range over {len(rs)} seeds")
        ax.legend(fontsize=8)
    save(fig, out / "distance_vs_time.png")


def figure_plateau(out: Path, runs, fits, s: Settings) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    b = np.asarray(s.betas)
    for d, marker in zip(s.dims, "os^"):
        M = np.array([[r["min"] for r in _by(runs, d, beta)] for beta in s.betas])
        f = fits[str(d)]["plateau_slope"]
        ax.errorbar(b, M.mean(axis=1), yerr=[M.mean(axis=1) - M.min(axis=1),
                                               M.max(axis=1) - M.mean(axis=1)],
                    fmt=marker + "-", capsize=3,
                    label=f"d = {d}: slope {f['mean']:.2f} [{f['ci'][0]:.2f}, {f['ci'][1]:.2f}]")
        ref = reference_rate(b)
        c = math.exp(np.mean(np.log(M.mean(axis=1)) - np.log(ref)))
        ax.plot(b, c * ref, "k:", lw=1)
    ax.plot([], [], "k:", label=f"C·sqrt(log(β+1)/β) (slope {fits['reference_slope']:.2f})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("β")
    ax.set_ylabel("plateau minimum of W2")
    ax.legend(fontsize=8)
    ax.set_title("plateau vs inverse temperature")
    save(fig, out / "plateau_vs_beta.png")


def figure_terminal(out: Path, terms, control, s: Settings) -> None:
    plt = pyplot()
    r = terms[0]
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    X0, XT = r["_states"][0], r["_states"][-1]
    ax = axes[0]
    ax.scatter(*X0.T, s=3, c="0.75", label="t = 0")
    ax.scatter(*XT.T, s=14, c="tab:red", label=f"t = {s.terminal_t:g}")
    lam = sorted(s.value_spectrum)
    for v, c, lab in ((r["slow_eigenvector"], "tab:green", f"λ = {lam[0]:g}"),
                      (r["fast_eigenvector"], "tab:blue", f"λ = {lam[-1]:g}")):
        ax.plot([-v[0], v[0]], [-v[1], v[1]], "-", color=c, label=f"eigenvector of V, {lab}")
    ax.set_aspect("equal")
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(f"β = {s.terminal_beta:g}, A = I, seed {r['seed']}")
    ax = axes[1]
    t = np.asarray(r["times"])[1:]
    for group, ls, name in ((terms, "-", "V"), (control, ":", "V = I")):
        for k, rr in enumerate(group):
            st = rr["_states"][1:]
            C = st - st.mean(axis=1, keepdims=True)
            for v, c in ((rr["slow_eigenvector"], "tab:green"),
                         (rr["fast_eigenvector"], "tab:blue")):
                lab = None if k else f"{name}: along {'slow' if c == 'tab:green' else 'fast'}"
                ax.plot(t, np.sqrt(((C @ np.asarray(v)) ** 2).mean(axis=1)), ls, color=c,
                        lw=1, label=lab)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("t")
    ax.set_ylabel("RMS spread along the eigenvector")
    ax.legend(fontsize=8)
    cos = np.mean([x["abs_cos_slow"] for x in terms])
    ax.set_title(f"{len(terms)} seeds; |cos(principal axis, slow eigvec)| = {cos:.2f}",
                 fontsize=10)
    save(fig, out / "terminal_phase.png")


def figure_arrival(out: Path, runs, fits, s: Settings) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    lb = np.log(np.asarray(s.betas))
    for d, marker in zip(s.dims, "os^"):
        T = np.array([[r["arrival"] for r in _by(runs, d, beta)] for beta in s.betas])
        f = fits[str(d)]["arrival_fit"]
        ax.plot(np.repeat(lb, T.shape[1]), T.ravel(), marker, alpha=0.6)
        ax.plot(lb, f["slope"] * lb + f["intercept"], "-",
                label=f"d = {d}: t = {f['slope']:.2f}·log β {f['intercept']:+.2f}, "
                      f"R² = {f['r2']:.2f}")
    ax.set_xlabel("log β")
    ax.set_ylabel("first t with W2 ≤ 2 × plateau minimum")
    ax.legend(fontsize=8)
    ax.set_title("arrival at the plateau")
    save(fig, out / "arrival_time.png")


# -------------------------------------------------------------------------- run


def _fits(runs, s: Settings) -> dict:
    fits = {"reference_slope": fit_line(np.log(s.betas), np.log(reference_rate(s.betas)))[
        "slope"]}
    for d in s.dims:
        slopes, arr_slopes, arr_r2 = [], [], []
        seeds = seed_count(s, d)
        for seed in range(seeds):
            rs = [next(r for r in _by(runs, d, b) if r["seed"] == seed) for b in s.betas]
            slopes.append(fit_line(np.log(s.betas), np.log([r["min"] for r in rs]))["slope"])
            f = fit_line(np.log(s.betas), [r["arrival"] for r in rs])
            arr_slopes.append(f["slope"])
            arr_r2.append(f["r2"])
        pooled = fit_line(np.repeat(np.log(s.betas), seeds),
                          [r["arrival"] for b in s.betas for r in _by(runs, d, b)])
        # the same fit on the runs whose W2 falls by more than 2x (elsewhere the arrival is
        # t = 0 by definition: the curve starts within 2x of its minimum)
        conc = [r for b in s.betas for r in _by(runs, d, b) if r["concentrates"]]
        pooled_conc = fit_line([math.log(r["beta"]) for r in conc],
                               [r["arrival"] for r in conc]) \
            if len({r["beta"] for r in conc}) >= 2 else None
        local = []
        means = [np.mean([r["min"] for r in _by(runs, d, b)]) for b in s.betas]
        for k in range(len(s.betas) - 1):
            local.append(math.log(means[k + 1] / means[k]) /
                         math.log(s.betas[k + 1] / s.betas[k]))
        fits[str(d)] = {
            "plateau_slope": mean_ci(slopes),
            "plateau_local_slopes": local,
            "plateau_min_mean": means,
            "arrival_slope": mean_ci(arr_slopes),
            "arrival_r2": mean_ci(arr_r2),
            "arrival_fit": pooled,
            "arrival_fit_concentrating": pooled_conc,
            "concentrating_runs": {f"{b:g}": int(sum(r["concentrates"] for r in _by(runs, d, b)))
                                   for b in s.betas},
            "left_plateau": {f"{b:g}": int(sum(r["left_plateau"] for r in _by(runs, d, b)))
                             for b in s.betas},
            "final_over_min": {f"{b:g}": mean_ci([r["final"] / r["min"]
                                                  for r in _by(runs, d, b)])
                               for b in s.betas},
        }
    return fits


def _public(r: dict) -> dict:
    return {k: v for k, v in r.items() if not k.startswith("_")}


def _job(job: tuple, s: Settings) -> dict:
    """One independent run (``("big",)``, ``("concentration", d, β, seed)`` or
    ``("terminal", seed, spectrum)``), with the CPU time (user + sys) of the process that
    ran it in ``job_cpu_s``."""
    t0 = time.process_time()
    if job[0] == "big":
        r = big_run(s)
    elif job[0] == "concentration":
        r = concentration_run(*job[1:], s)
    else:
        r = terminal_run(job[1], s, job[2])
    r["job_cpu_s"] = time.process_time() - t0
    return r


def run(out: Path, quick: bool = False, settings: Settings | None = None,
        progress=None, workers: int = 1) -> dict:
    """Run everything, write the four PNGs, ``results.json``, ``trajectories.npz`` and
    ``README.md`` into ``out``; return the results. ``workers`` > 1 runs the independent
    runs in that many processes (one thread each); every run is seeded, so the numbers are
    the same, only the wall time changes."""
    s = settings or (quick_settings() if quick else Settings())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    load0, cpu0, wall0 = os.getloadavg(), time.process_time(), time.perf_counter()
    jobs = [("big",)]
    jobs += [("concentration", d, b, seed) for d in s.dims for b in s.betas
             for seed in range(seed_count(s, d))]
    jobs += [("terminal", seed, spectrum) for seed in range(s.terminal_seeds)
             for spectrum in (tuple(s.value_spectrum), (1.0, 1.0))]
    task = progress.add_task("meanfield", total=len(jobs)) if progress else None
    done = {}
    if workers <= 1:
        for job in jobs:
            done[job] = _job(job, s)
            if progress:
                progress.advance(task)
    else:  # independent runs, deterministic per job: the results do not depend on workers
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_job, job, s): job for job in jobs}
            for fut in as_completed(futures):
                done[futures[fut]] = fut.result()
                if progress:
                    progress.advance(task)
    big = done[("big",)]
    runs = [done[j] for j in jobs if j[0] == "concentration"]
    terms = [done[j] for j in jobs if j[0] == "terminal" and j[2] != (1.0, 1.0)]
    control = [done[j] for j in jobs if j[0] == "terminal" and j[2] == (1.0, 1.0)]
    cpu_runs = sum(r["job_cpu_s"] for r in runs)
    cpu_terminal = sum(r["job_cpu_s"] for r in terms + control)
    fits = _fits(runs, s)
    fits["terminal"] = {
        "abs_cos_slow": mean_ci([t["abs_cos_slow"] for t in terms]),
        "spread_slow": mean_ci([t["spread_slow"] for t in terms]),
        "spread_fast": mean_ci([t["spread_fast"] for t in terms]),
        "control_spread": mean_ci([t["spread"] for t in control]),
    }
    figure_distance(out, runs, s)
    figure_plateau(out, runs, fits, s)
    figure_terminal(out, terms, control, s)
    figure_arrival(out, runs, fits, s)
    results = {
        "settings": asdict(s),
        "quick": quick,
        "fits": fits,
        "runs": [_public(r) for r in runs],
        "terminal": [_public(t) for t in terms],
        "terminal_control": [_public(t) for t in control],
        "big": big,
        "machine": {"load_start": list(load0), "load_end": list(os.getloadavg()),
                    "cpu_s": time.process_time() - cpu0 + (
                        cpu_runs + cpu_terminal + big["job_cpu_s"] if workers > 1 else 0.0),
                    "workers": workers,
                    "cpu_concentration_s": cpu_runs,
                    "cpu_concentration_integration_s": sum(r["cpu_s"] for r in runs),
                    "cpu_concentration_w2_s": sum(r["w2_cpu_s"] for r in runs),
                    "cpu_terminal_s": cpu_terminal,
                    "wall_s": time.perf_counter() - wall0, "threads_per_worker": 1},
    }
    _write_npz(out / "trajectories.npz", runs, terms, control)
    _write_text(out / "results.json", json.dumps(results, indent=1))
    _write_text(out / "README.md", readme(results))
    return results


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_npz(path: Path, runs, terms, control) -> None:
    arrays = {}
    for r in runs:
        key = f"d{r['d']}_b{r['beta']:g}_s{r['seed']}"
        arrays[f"{key}_states"] = r["_states"]
        arrays[f"{key}_times"] = np.asarray(r["times"])
        arrays[f"{key}_X0"] = r["_X0"]
        arrays[f"{key}_image"] = r["_image"]
        arrays[f"{key}_A"] = r["_A"]
    for name, group in (("terminal", terms), ("control", control)):
        for t in group:
            arrays[f"{name}_s{t['seed']}_states"] = t["_states"]
            arrays[f"{name}_s{t['seed']}_times"] = np.asarray(t["times"])
            arrays[f"{name}_s{t['seed']}_V"] = np.asarray(t["V"])
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def _ci(x: dict, fmt: str = ".2f") -> str:
    return f"{x['mean']:{fmt}} (95 % CI [{x['ci'][0]:{fmt}}, {x['ci'][1]:{fmt}}])"


def summary_table(res: dict) -> list[str]:
    """The measured claims as a markdown table (one column per d), built from the results:
    the README of the output directory and the project README's section carry it."""
    s, f = res["settings"], res["fits"]
    dims = s["dims"]
    betas = ", ".join(f"{b:g}" for b in s["betas"])

    def row(claim, cell, target=""):
        return f"| {claim} | " + " | ".join(cell(f[str(d)], d) for d in dims) + f" | {target} |"

    def seeds(d):
        return s["seeds"][dims.index(d)]

    def slope_cell(fd, d):
        x = fd["plateau_slope"]
        ok = "yes" if x["mean"] <= -0.35 else "no"
        whole = "yes" if x["ci"][1] <= -0.35 else "no"
        return (f"{x['mean']:.2f} [{x['ci'][0]:.2f}, {x['ci'][1]:.2f}] ({seeds(d)} seeds; "
                f"mean ≤ −0.35: {ok}, whole CI: {whole})")

    def arrival_cell(fd, d):
        a, c = fd["arrival_fit"], fd["arrival_fit_concentrating"]
        text = (f"{a['slope']:.2f}·log β {a['intercept']:+.2f}, R² {a['r2']:.2f}; per seed "
                f"{fd['arrival_slope']['mean']:.2f} [{fd['arrival_slope']['ci'][0]:.2f}, "
                f"{fd['arrival_slope']['ci'][1]:.2f}]")
        if c:
            text += f"; runs that concentrate only: {c['slope']:.2f}, R² {c['r2']:.2f}"
        return text

    t = f["terminal"]
    big = res["big"]
    lines = [
        "| claim | " + " | ".join(f"d = {d}" for d in dims) + " | target |",
        "|---|" + "---|" * len(dims) + "---|",
        row(f"plateau minimum of W2, β = {betas} (mean over seeds)",
            lambda fd, d: ", ".join(f"{v:.2g}" for v in fd["plateau_min_mean"])),
        row("runs whose W2 falls by > 2× from t = 0",
            lambda fd, d: ", ".join(f"{v}/{seeds(d)}" for v in fd["concentrating_runs"].values())),
        row(f"log-log slope of the plateau vs β ({s['betas'][0]:g}…{s['betas'][-1]:g}), "
            "95 % CI over seeds", slope_cell,
            f"≤ −0.35 (√(log(β+1)/β): {f['reference_slope']:.2f})"),
        row("local slopes between consecutive β",
            lambda fd, d: ", ".join(f"{v:.2f}" for v in fd["plateau_local_slopes"])),
        row("arrival time (W2 ≤ 2 × min, interpolated) vs log β: pooled fit; per-seed slope",
            arrival_cell, "slope and R² reported"),
        row(f"runs leaving the plateau (> 2 × min) before {s['horizon']:g}·log β",
            lambda fd, d: ", ".join(f"{v}/{seeds(d)}" for v in fd["left_plateau"].values())),
        row("final W2 / plateau minimum",
            lambda fd, d: ", ".join(f"{v['mean']:.2g}" for v in fd["final_over_min"].values())),
        f"| terminal phase (β = {s['terminal_beta']:g}, A = I, V = R·diag"
        f"{tuple(s['value_spectrum'])}·Rᵀ, t = {s['terminal_t']:g}): \\|cos\\| of the late "
        f"principal axis with V's slow eigenvector | {t['abs_cos_slow']['mean']:.2f} "
        f"[{t['abs_cos_slow']['ci'][0]:.2f}, {t['abs_cos_slow']['ci'][1]:.2f}]; spread "
        f"{t['spread_slow']['mean']:.2g} along it, {t['spread_fast']['mean']:.2g} across; "
        f"V = I: {t['control_spread']['mean']:.2g} |" + " |" * (len(dims) - 1) + " |",
        f"| n = {big['n']} run (d = 2, β = {big['beta']:g}, to t = {big['t_max']:.1f}) | "
        f"W2 on {big['subsamples']} subsamples of {big['subsample']}: min "
        f"{big['min']:.2g} at t = {big['t_min']:.2f}, final {big['final']:.2g}; "
        f"{big['cpu_total_s']:.0f} s CPU, {big['wall_total_s'] / 60:.1f} min wall at load "
        f"{big['load_start'][0]:.1f}–{big['load_end'][0]:.1f} |" + " |" * (len(dims) - 1)
        + " ≤ 10 min |",
    ]
    return lines


def readme(res: dict) -> str:
    s, f = res["settings"], res["fits"]
    big, m = res["big"], res["machine"]
    betas = ", ".join(f"{b:g}" for b in s["betas"])
    lines = [
        "# Mean-field self-attention at low temperature",
        "",
        f"Claims of {PAPER}, measured on the normalised flow "
        "ẋᵢ = V(Σⱼ softmaxⱼ(β xᵢᵀAxⱼ) xⱼ − xᵢ) (`exactformer.meanfield`, docs/meanfield.md). "
        f"n = {s['n']} tokens, d ∈ {list(s['dims'])}, β ∈ {{{betas}}}, "
        f"{' and '.join(f'{k} seeds (d = {d})' for d, k in zip(s['dims'], s['seeds']))}, "
        "V = I, A random SPD (condition "
        f"{s['condition']:g}); half of the tokens on the ellipsoid xᵀAx = 1, half inside. "
        "W2 is exact (POT) between the tokens at time t and the push-forward T#μ₀ of the "
        "initial tokens under the zero-temperature projection map. Every number below is in "
        "`results.json`; trajectories in `trajectories.npz`. "
        f"{'Quick run (pipeline check, small n).' if res['quick'] else ''}",
        "",
        *summary_table(res),
        "",
        "![distance](distance_vs_time.png)",
        "",
    ]
    parts = []
    for d in s["dims"]:
        fd = f[str(d)]
        mins = ", ".join(f"{v:.2g}" for v in fd["plateau_min_mean"])
        k_seeds = s["seeds"][s["dims"].index(d)]
        left = ", ".join(f"β={k}: {v}/{k_seeds}" for k, v in fd["left_plateau"].items())
        ratio = ", ".join(f"β={k}: {v['mean']:.2g}" for k, v in fd["final_over_min"].items())
        parts.append(f"d = {d}: plateau minima {mins} (β = {betas}); runs whose W2 rises "
                     f"above 2× its minimum before t = {s['horizon']:g}·log β: {left}; "
                     f"final / minimum: {ratio}.")
    lines += ["**(1) Distance vs time.** Fast concentration (W2 falls from its t = 0 value), "
              "a minimum, then a departure as the finite-β flow drifts away from the "
              "zero-temperature limit. " + " ".join(parts), ""]
    lines += ["![plateau](plateau_vs_beta.png)", ""]
    parts = []
    for d in s["dims"]:
        fd = f[str(d)]
        loc = ", ".join(f"{v:.2f}" for v in fd["plateau_local_slopes"])
        parts.append(f"d = {d}: fitted log-log slope {_ci(fd['plateau_slope'])} over "
                     f"β = {s['betas'][0]:g}…{s['betas'][-1]:g}; local slopes between "
                     f"consecutive β: {loc}.")
    lines += [f"**(2) Plateau minimum vs β.** Target: slope ≤ −0.35; sqrt(log(β+1)/β) "
              f"itself fits {f['reference_slope']:.2f} on this grid. " + " ".join(parts), ""]
    t = f["terminal"]
    lines += ["![terminal](terminal_phase.png)", "",
              f"**(3) Terminal phase.** β = {s['terminal_beta']:g}, A = I and tokens on and "
              "inside the unit circle (so that V is the only anisotropy), V = R·diag"
              f"{tuple(s['value_spectrum'])}·Rᵀ with a random rotation R per seed, n = "
              f"{s['terminal_n']}, t = {s['terminal_t']:g}. |cos| between the late "
              "configuration's principal axis and V's eigenvector of the smallest eigenvalue: "
              f"{_ci(t['abs_cos_slow'])}; RMS spread along that eigenvector "
              f"{_ci(t['spread_slow'], '.3g')}, along the other {_ci(t['spread_fast'], '.3g')}. "
              "Control with V = I (same tokens): RMS spread "
              f"{_ci(t['control_spread'], '.2g')}.", ""]
    parts = []
    for d in s["dims"]:
        fd = f[str(d)]
        parts.append(f"d = {d}: arrival = {fd['arrival_fit']['slope']:.2f}·log β "
                     f"{fd['arrival_fit']['intercept']:+.2f} (pooled, R² = "
                     f"{fd['arrival_fit']['r2']:.2f}); per-seed slope "
                     f"{_ci(fd['arrival_slope'])}.")
        fc = fd["arrival_fit_concentrating"]
        conc = ", ".join(f"β={k}: {v}" for k, v in fd["concentrating_runs"].items())
        if fc:
            parts.append(f"Runs whose W2 falls by more than 2× ({conc}; the others arrive at "
                         f"t = 0 by definition): arrival = {fc['slope']:.2f}·log β "
                         f"{fc['intercept']:+.2f}, R² = {fc['r2']:.2f}.")
    lines += ["![arrival](arrival_time.png)", "",
              "**(4) Arrival at the plateau** (first t with W2 ≤ 2 × its minimum, "
              "interpolated between the two output times around the crossing, log W2 linear "
              "in log t) against log β. " + " ".join(parts), ""]
    lines += [f"**Large run.** n = {big['n']}, d = 2, β = {big['beta']:g}, to t = "
              f"{big['t_max']:.1f} = {s['horizon']:g}·log β: {big['cpu_total_s']:.0f} s CPU "
              f"({big['wall_total_s']:.0f} s wall, load average {big['load_start'][0]:.1f} → "
              f"{big['load_end'][0]:.1f}), of which the integration {big['cpu_s']:.0f} s CPU "
              f"({big['steps']} steps, {big['rejected']} rejected). W2 on {big['subsamples']} "
              f"random subsamples of {big['subsample']} tokens (same indices at time t and in "
              f"the image): minimum {big['min']:.3g} at t = {big['t_min']:.2f}, final "
              f"{big['final']:.3g}; token-wise RMS distance on all tokens (an upper bound on "
              f"W2) at the minimum time: "
              f"{big['rms_identity'][big['times'].index(big['t_min'])]:.3g}.", "",
              f"Whole run: {m['cpu_s']:.0f} s CPU (user + sys, every process), "
              f"{m['wall_s']:.0f} s wall, {m.get('workers', 1)} worker process(es) of one "
              f"thread each, load average {m['load_start'][0]:.1f} at "
              f"start, {m['load_end'][0]:.1f} at end. CPU by part: concentration runs "
              f"{m['cpu_concentration_s']:.0f} s (integration "
              f"{m['cpu_concentration_integration_s']:.0f} s, exact W2 "
              f"{m['cpu_concentration_w2_s']:.0f} s), terminal phase {m['cpu_terminal_s']:.0f} s, "
              f"large run {big['cpu_total_s']:.0f} s.",
              ""]
    return "\n".join(lines)

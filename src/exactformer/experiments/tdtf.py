"""TD-TF against TD-DMD on three generated systems (issue 18, docs/tdtf.md).

Systems, all generated here from a seed (no downloads):

* ``near_linear`` — three oscillations (two undamped, one lightly damped) mixed into four
  channels, plus white noise: a signal a linear delay model can represent exactly;
* ``lorenz`` — Lorenz '63 (σ = 10, ρ = 28, β = 8/3), scipy's ``solve_ivp`` (DOP853,
  rtol = atol = 1e-10) sampled every 0.01, started on the attractor;
* ``reaction_diffusion`` — the λ–ω system on a periodic 32×32 grid (a spiral wave),
  pseudo-spectral Laplacian, reduced to its leading POD modes by an SVD of the training
  snapshots.

The abstract's "unsteady aerodynamics" data are not available offline and are not used.

For every system and seed: TD-TF, TD-DMD (full-rank delay least squares) and, with PyDMD
installed, ``HankelDMD`` are fitted on the same training series with the same window K;
then on held-out data: one-step error, rollout error against the horizon, valid prediction
time (first time ``‖x̂ − x‖/√mean‖x‖² > 0.4``; in Lyapunov times λ₁ = 0.906 for Lorenz),
and long free rollouts compared with the true attractor (per-variable W1 distance of the
marginals, power spectra). Errors are normalised by √(mean ‖x‖²) of the test data.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..dataset import write_atomic
from ..tdtf import TDDMD, TDTF, HankelDMDBaseline, TDTFConfig, delay_windows, rollout

LYAPUNOV_LORENZ = 0.906
VPT_THRESHOLD = 0.4
SYSTEMS = ("near_linear", "lorenz", "reaction_diffusion")


# ------------------------------------------------------------------------------ data


@dataclass
class SystemData:
    """One generated system: training series, held-out test series, long true run."""

    name: str
    train: np.ndarray
    test: np.ndarray
    long: np.ndarray  # the true attractor / long-term statistics reference
    dt: float
    lyapunov: float | None = None
    clean_test: np.ndarray | None = None  # noise-free test series, when there is noise
    note: str = ""


def near_linear(seed: int, n_train: int = 3000, n_test: int = 1000, n_long: int = 4000,
                dt: float = 0.1, noise: float = 0.02) -> SystemData:
    """Three oscillations mixed into 4 channels plus white noise (std ``noise`` × signal)."""
    rng = np.random.default_rng(seed)
    omega = np.array([0.6, 1.3, 2.2]) * rng.uniform(0.9, 1.1, 3)
    gamma = np.array([0.0, 1e-3, 0.0])  # the second oscillation decays slowly
    phase = rng.uniform(0, 2 * np.pi, 3)
    amp = rng.uniform(0.5, 1.5, 3)
    n = n_train + n_test + n_long
    t = np.arange(n) * dt
    env = amp * np.exp(-gamma * t[:, None])
    basis = np.concatenate([env * np.cos(omega * t[:, None] + phase),
                            env * np.sin(omega * t[:, None] + phase)], axis=1)
    clean = basis @ rng.normal(size=(6, 4)) / math.sqrt(6)
    x = clean + noise * clean.std() * rng.standard_normal(clean.shape)
    a, b = n_train, n_train + n_test
    return SystemData("near_linear", x[:a], x[a:b], clean[b:], dt, clean_test=clean[a:b],
                      note=f"ω = {np.round(omega, 3).tolist()}, γ = {gamma.tolist()}, "
                           f"noise {noise:g} × signal std")


def _lorenz_rhs(t, s):
    x, y, z = s
    return [10.0 * (y - x), x * (28.0 - z) - y, x * y - 8.0 / 3.0 * z]


def lorenz(seed: int, n_train: int = 20000, n_test: int = 6000, n_long: int = 50000,
           dt: float = 0.01) -> SystemData:
    """Lorenz '63 from a seeded start, 50 time units of spin-up onto the attractor.

    One trajectory: training, test and long reference are consecutive segments.
    """
    from scipy.integrate import solve_ivp

    rng = np.random.default_rng(seed)
    x0 = rng.normal(size=3) * 5 + np.array([0.0, 0.0, 25.0])
    tol = {"method": "DOP853", "rtol": 1e-10, "atol": 1e-10}
    start = solve_ivp(_lorenz_rhs, (0.0, 50.0), x0, **tol).y[:, -1]
    n = n_train + n_test + n_long
    t = np.arange(n) * dt
    x = solve_ivp(_lorenz_rhs, (0.0, t[-1]), start, t_eval=t, **tol).y.T
    a, b = n_train, n_train + n_test
    return SystemData("lorenz", x[:a], x[a:b], x[b:], dt, LYAPUNOV_LORENZ,
                      note="σ = 10, ρ = 28, β = 8/3; DOP853, rtol = atol = 1e-10")


def lambda_omega(seed: int, n_train: int = 2000, n_test: int = 1000, n_long: int = 2000,
                 dt: float = 0.05, grid: int = 32, modes: int = 4, length: float = 20.0,
                 beta: float = 1.0, diffusion: float = 0.1) -> SystemData:
    """λ–ω reaction–diffusion, reduced to ``modes`` POD coefficients.

    ``u_t = λ(A)u − ω(A)v + D∇²u``, ``v_t = ω(A)u + λ(A)v + D∇²v``, A² = u² + v²,
    λ = 1 − A², ω = −βA², on a periodic square of side ``length``; a one-armed spiral
    start ``(tanh r cos(θ − r), tanh r sin(θ − r))`` rotated by a seeded angle, plus small
    seeded noise. The POD basis (SVD of the mean-subtracted training snapshots) is used
    for all segments.
    """
    from scipy.integrate import solve_ivp

    rng = np.random.default_rng(seed)
    xs = np.linspace(-length / 2, length / 2, grid, endpoint=False)
    X, Y = np.meshgrid(xs, xs, indexing="ij")
    r, theta = np.hypot(X, Y), np.arctan2(Y, X) + rng.uniform(0, 2 * np.pi)
    u0 = np.tanh(r) * np.cos(theta - r) + 0.01 * rng.standard_normal(X.shape)
    v0 = np.tanh(r) * np.sin(theta - r) + 0.01 * rng.standard_normal(X.shape)
    k = 2 * np.pi * np.fft.fftfreq(grid, d=length / grid)
    lap = -(k[:, None] ** 2 + k[None, :] ** 2)

    def rhs(t, s):
        u, v = s[: grid * grid].reshape(grid, grid), s[grid * grid:].reshape(grid, grid)
        a2 = u * u + v * v
        lam, om = 1 - a2, -beta * a2
        du = lam * u - om * v + diffusion * np.fft.ifft2(lap * np.fft.fft2(u)).real
        dv = om * u + lam * v + diffusion * np.fft.ifft2(lap * np.fft.fft2(v)).real
        return np.concatenate([du.ravel(), dv.ravel()])

    n = n_train + n_test + n_long
    t = np.arange(n) * dt
    snaps = solve_ivp(rhs, (0.0, t[-1]), np.concatenate([u0.ravel(), v0.ravel()]),
                      t_eval=t, method="RK45", rtol=1e-8, atol=1e-8).y.T
    mean = snaps[:n_train].mean(axis=0)
    _, s, Vt = np.linalg.svd(snaps[:n_train] - mean, full_matrices=False)
    a = (snaps - mean) @ Vt[:modes].T
    energy = float((s[:modes] ** 2).sum() / (s ** 2).sum())
    i, j = n_train, n_train + n_test
    return SystemData("reaction_diffusion", a[:i], a[i:j], a[j:], dt,
                      note=f"{grid}×{grid} grid, β = {beta:g}, D = {diffusion:g}; "
                           f"{modes} POD modes hold {100 * energy:.4f} % of the energy")


GENERATORS = {"near_linear": near_linear, "lorenz": lorenz,
              "reaction_diffusion": lambda_omega}


# --------------------------------------------------------------------------- settings


@dataclass
class Protocol:
    """How one system is generated, fitted and evaluated."""

    sizes: dict  # keyword arguments of the generator
    model: TDTFConfig
    horizon: int  # steps of the short rollouts (error vs horizon, VPT)
    n_starts: int  # short rollouts per seed, spread over the test series
    long_steps: int  # steps of each free rollout for long-term statistics
    n_long: int  # free rollouts per seed
    hankel_rank: float | int = 0  # PyDMD svd_rank (0: optimal hard threshold)


def protocols(quick: bool) -> dict[str, Protocol]:
    if quick:
        return {
            "near_linear": Protocol({"n_train": 1000, "n_test": 400, "n_long": 600},
                                    TDTFConfig(window=16, epochs=8, patience=5), 200, 6, 600,
                                    1),
            "lorenz": Protocol({"n_train": 4000, "n_test": 1500, "n_long": 6000},
                               TDTFConfig(window=8, epochs=8, patience=5), 300, 6, 1500, 2),
            "reaction_diffusion": Protocol({"n_train": 600, "n_test": 300, "n_long": 400,
                                            "grid": 16},
                                           TDTFConfig(window=8, epochs=8, patience=5), 200, 4,
                                           400, 1),
        }
    return {
        "near_linear": Protocol({}, TDTFConfig(window=16, epochs=150), 500, 20, 4000, 1),
        "lorenz": Protocol({}, TDTFConfig(window=8, epochs=150), 1100, 24, 5000, 8),
        "reaction_diffusion": Protocol({}, TDTFConfig(window=8, epochs=150), 1000, 10, 2000,
                                       1),
    }


# ---------------------------------------------------------------------------- metrics


def normalised_errors(pred: np.ndarray, truth: np.ndarray, scale: float) -> np.ndarray:
    """‖x̂ − x‖/scale along the last axis; a diverged (NaN) prediction counts as +inf."""
    e = np.linalg.norm(pred - truth, axis=-1) / scale
    return np.where(np.isfinite(e), e, np.inf)


def valid_steps(errors: np.ndarray, threshold: float = VPT_THRESHOLD) -> np.ndarray:
    """Per rollout (rows): the number of steps before the error first exceeds threshold."""
    over = errors > threshold
    return np.where(over.any(axis=1), over.argmax(axis=1), errors.shape[1])


def marginal_w1(samples: np.ndarray, reference: np.ndarray) -> np.ndarray | None:
    """W1 distance of each variable's marginal to the reference's; None if non-finite."""
    from scipy.stats import wasserstein_distance

    if not np.isfinite(samples).all():
        return None
    return np.array([wasserstein_distance(samples[:, i], reference[:, i])
                     for i in range(reference.shape[1])])


def power_spectrum(x: np.ndarray, dt: float, nperseg: int = 1024):
    """Welch power spectral density of every variable: (frequencies, (F, d))."""
    from scipy.signal import welch

    f, p = welch(x, fs=1 / dt, nperseg=min(nperseg, len(x)), axis=0)
    return f, p


def spectrum_error(x: np.ndarray, reference: np.ndarray, dt: float) -> float | None:
    """Mean |log10 P − log10 P_true| over variables and over the frequencies where the true
    spectrum is above 1e-8 of its peak (the resolved band); None if non-finite."""
    if not np.isfinite(x).all():
        return None
    n = min(1024, len(x), len(reference))
    f, p = power_spectrum(x, dt, n)
    _, q = power_spectrum(reference, dt, n)
    band = q > 1e-8 * q.max(axis=0)
    with np.errstate(divide="ignore"):
        diff = np.abs(np.log10(np.maximum(p, 1e-300)) - np.log10(q))
    return float(diff[band].mean())


# ----------------------------------------------------------------------------- runner


def _fit_models(data: SystemData, proto: Protocol, seed: int, progress=None):
    K = proto.model.window
    cfg = replace(proto.model, seed=seed)
    models, seconds = {}, {}
    t0 = time.process_time()
    models["TD-TF"] = TDTF.fit(data.train, cfg, progress=progress)
    seconds["TD-TF"] = time.process_time() - t0
    t0 = time.process_time()
    models["TD-DMD"] = TDDMD.fit(data.train, K)
    seconds["TD-DMD"] = time.process_time() - t0
    try:
        import pydmd  # noqa: F401
    except ImportError:
        pass
    else:
        t0 = time.process_time()
        models["HankelDMD"] = HankelDMDBaseline(K, proto.hankel_rank).fit(data.train)
        seconds["HankelDMD"] = time.process_time() - t0
    return models, seconds


def evaluate(model, data: SystemData, proto: Protocol, K: int) -> dict:
    """One model on one system: every metric of the module docstring (JSON-ready)."""
    test = data.test
    scale = float(np.sqrt((test ** 2).sum(axis=1).mean()))
    W, Y = delay_windows(test, K)
    pred = model.predict(W)
    res = {"one_step": float(np.sqrt(((pred - Y) ** 2).sum(axis=1).mean()) / scale)}
    if data.clean_test is not None:  # against the noise-free next state
        clean = data.clean_test[K:]
        res["one_step_vs_clean"] = float(np.sqrt(((pred - clean) ** 2).sum(axis=1).mean())
                                         / scale)
    H = min(proto.horizon, len(test) - K)
    starts = np.linspace(0, len(test) - K - H, proto.n_starts).astype(int)
    windows = np.stack([test[s:s + K] for s in starts])
    truth = np.stack([test[s + K:s + K + H] for s in starts])
    err = normalised_errors(rollout(model, windows, H), truth, scale)
    steps = valid_steps(err)
    unit = data.dt * (data.lyapunov or 1.0)
    vpt = (steps * unit).tolist()
    grid = np.unique(np.geomspace(1, H, 40).astype(int))
    res.update(
        horizon_steps=grid.tolist(),
        rollout_error_mean=[float(v) for v in np.mean(err[:, grid - 1], axis=0)],
        rollout_error_median=[float(v) for v in np.median(err[:, grid - 1], axis=0)],
        vpt=vpt, vpt_mean=float(np.mean(vpt)), vpt_median=float(np.median(vpt)),
        vpt_unit="Lyapunov times" if data.lyapunov else "time units",
        vpt_censored=int((steps == H).sum()),
    )
    # long free rollouts from states on the test series
    L = proto.long_steps
    s0 = np.linspace(0, len(test) - K, proto.n_long).astype(int)
    free = rollout(model, np.stack([test[s:s + K] for s in s0]), L)
    burn = L // 10
    pooled = free[:, burn:].reshape(-1, test.shape[1])
    w1 = marginal_w1(pooled, data.long)
    res["diverged_rollouts"] = int((~np.isfinite(free).all(axis=(1, 2))).sum())
    res["w1_per_variable"] = None if w1 is None else w1.tolist()
    res["w1_mean"] = None if w1 is None else float(w1.mean())
    sd = data.long.std(axis=0)
    res["w1_mean_over_std"] = None if w1 is None else float((w1 / sd).mean())
    res["spectrum_log10_error"] = spectrum_error(free[0, burn:], data.long, data.dt)
    res["_free"] = free[0]  # first free rollout (for figures; dropped from the JSON)
    res["_example"] = (truth[0], rollout(model, windows[:1], H)[0])
    return res


def run_system(name: str, proto: Protocol, seed: int, progress=None) -> tuple[dict, dict]:
    t0 = time.process_time()
    data = GENERATORS[name](seed, **proto.sizes)
    gen_cpu = time.process_time() - t0
    models, fit_cpu = _fit_models(data, proto, seed, progress)
    half = len(data.long) // 2  # finite-sample level of W1: one true run against another
    floor = marginal_w1(data.long[:half], data.long[half:])
    out = {"system": name, "seed": seed, "note": data.note, "dt": data.dt,
           "w1_truth_half_vs_half": float(floor.mean()),
           "train_shape": list(data.train.shape), "test_shape": list(data.test.shape),
           "generate_cpu_s": gen_cpu, "fit_cpu_s": fit_cpu, "models": {}}
    extras = {"data": data, "models": models}
    for label, model in models.items():
        t0 = time.process_time()
        r = evaluate(model, data, proto, proto.model.window)
        extras[label] = {k: r.pop(k) for k in ("_free", "_example")}
        r["eval_cpu_s"] = time.process_time() - t0
        out["models"][label] = r
    tf = models["TD-TF"]
    out["tdtf"] = {"params": tf.n_params, "epochs_run": len(tf.log.val),
                   "best_epoch": tf.log.best_epoch, "stopped_early": tf.log.stopped_early,
                   "best_val_loss": float(min(tf.log.val)) if tf.log.val else None,
                   "config": asdict(tf.cfg)}
    out["tddmd_spectral_radius"] = models["TD-DMD"].spectral_radius()
    if "HankelDMD" in models:
        out["hankel_rank"] = int(models["HankelDMD"].rank)
    return out, extras


def _stats(values) -> dict:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if not len(v):
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "n": int(len(v))}


def _ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def summarise(runs: list[dict]) -> dict:
    """Means and spreads over seeds, and the issue's three claims checked per seed."""
    summary: dict = {}
    for name in SYSTEMS:
        rs = [r for r in runs if r["system"] == name]
        if not rs:
            continue
        s: dict = {}
        for label in rs[0]["models"]:
            s[label] = {key: _stats([r["models"][label][key] for r in rs])
                        for key in ("one_step", "vpt_mean", "w1_mean", "w1_mean_over_std",
                                    "spectrum_log10_error")}
            starts = np.concatenate([r["models"][label].get("vpt", []) for r in rs])
            if len(starts):  # every start of every seed pooled
                s[label]["vpt_per_start"] = {
                    "median": float(np.median(starts)), "p10": float(np.percentile(starts, 10)),
                    "p90": float(np.percentile(starts, 90)), "n": int(len(starts))}
        s["w1_truth_half_vs_half"] = _stats([r.get("w1_truth_half_vs_half") for r in rs])
        s["ratios_per_seed"] = [{
            "seed": r["seed"],
            "one_step_tdtf_over_tddmd": _ratio(r["models"]["TD-TF"]["one_step"],
                                               r["models"]["TD-DMD"]["one_step"]),
            "vpt_tdtf_over_tddmd": _ratio(r["models"]["TD-TF"]["vpt_mean"],
                                          r["models"]["TD-DMD"]["vpt_mean"]),
            "w1_tdtf_over_tddmd": _ratio(r["models"]["TD-TF"]["w1_mean"],
                                         r["models"]["TD-DMD"]["w1_mean"]),
        } for r in rs]
        summary[name] = s
    claims = {}
    if "near_linear" in summary:
        ratios = [x["one_step_tdtf_over_tddmd"] for x in summary["near_linear"]
                  ["ratios_per_seed"]]
        claims["near_linear_one_step_within_1.5x"] = {
            "ratio": _stats(ratios), "holds_every_seed": all(x <= 1.5 for x in ratios)}
    if "lorenz" in summary:
        per = summary["lorenz"]["ratios_per_seed"]
        vr = [x["vpt_tdtf_over_tddmd"] for x in per]
        wr = [x["w1_tdtf_over_tddmd"] for x in per]
        claims["lorenz_vpt_at_least_2x"] = {
            "ratio": _stats(vr), "holds_every_seed": all(x is not None and x >= 2 for x in vr)}
        claims["lorenz_w1_at_most_half"] = {
            "ratio": _stats(wr), "holds_every_seed": all(x is not None and x <= 0.5
                                                         for x in wr)}
    return {"per_system": summary, "claims": claims}


def run(out, quick: bool = False, seeds=None, systems=SYSTEMS, progress=None,
        log=None) -> dict:
    """Run every system for every seed; write results.json, figures and README.md."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = list(seeds if seeds is not None else ((0,) if quick else (0, 1, 2)))
    protos = protocols(quick)
    runs, first = [], {}
    for name in systems:
        for seed in seeds:
            if log is not None:
                log(f"{name}, seed {seed}")
            r, extras = run_system(name, protos[name], seed, progress)
            runs.append(r)
            first.setdefault(name, extras)
            if log is not None:
                m = r["models"]
                log("  " + "; ".join(f"{k}: one-step {v['one_step']:.3g}, VPT "
                                     f"{v['vpt_mean']:.3g}, W1 {v['w1_mean']}"
                                     for k, v in m.items()))
    results = {
        "setting": {"quick": quick, "seeds": seeds, "systems": list(systems),
                    "vpt_threshold": VPT_THRESHOLD, "lyapunov_lorenz": LYAPUNOV_LORENZ,
                    "error_normalisation": "‖x̂ − x‖ / √(mean over the test series of ‖x‖²)",
                    "protocols": {k: {**asdict(v), "model": asdict(v.model)}
                                  for k, v in protos.items() if k in systems}},
        "runs": runs,
        **summarise(runs),
    }
    from .tdtf_report import write_figures, write_readme

    figures = write_figures(out, first, runs)
    results["figures"] = figures
    results["wall_s"] = time.perf_counter() - wall0
    results["cpu_s"] = time.process_time() - cpu0
    try:
        import os

        results["load_average_at_end"] = list(os.getloadavg())
    except OSError:
        pass
    text = json.dumps(results, indent=1, default=_json_default)
    write_atomic(out / "results.json", lambda tmp: Path(tmp).write_text(text))
    write_readme(out, results)
    return results


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(type(obj).__name__)


# --------------------------------------------------------------------------- ablation

ABLATIONS = {
    "TD-TF as in the main run": {},
    "linear FF (attention the only nonlinearity)": {"activation": "linear"},
    "lag-only scores (the FF the only nonlinearity)": {"lag_only_scores": True},
    "both restrictions (a gradient-trained linear delay model)": {
        "activation": "linear", "lag_only_scores": True},
    "no increment scaling (δ = 1)": {"scale_increments": False},
    "window K = 2": {"window": 2},
    "window K = 16": {"window": 16},
    "5-step rollout loss, 60 epochs": {"rollout_steps": 5, "epochs": 60},
}


def ablation(out, quick: bool = False, seeds=(0,), log=None) -> dict:
    """Lorenz '63: which ingredient makes TD-TF outlast TD-DMD (writes ablation.json/.md).

    Each variant changes one setting of the main run's TD-TF; TD-DMD is refitted with the
    variant's window. Same data, seeds and metrics as :func:`run`.
    """
    wall0, cpu0 = time.perf_counter(), time.process_time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = protocols(quick)["lorenz"]
    rows = []
    for seed in seeds:
        data = lorenz(seed, **base.sizes)
        for name, change in ABLATIONS.items():
            proto = replace(base, model=replace(base.model, seed=seed, **change))
            K = proto.model.window
            t0 = time.process_time()
            model = TDTF.fit(data.train, proto.model)
            fit_cpu = time.process_time() - t0
            row = {"variant": name, "seed": seed, "change": change, "fit_cpu_s": fit_cpu,
                   "epochs_run": len(model.log.val)}
            for label, m in (("TD-TF", model), ("TD-DMD", TDDMD.fit(data.train, K))):
                r = evaluate(m, data, proto, K)
                row[label] = {k: r[k] for k in ("one_step", "vpt_mean", "w1_mean",
                                                "diverged_rollouts")}
            rows.append(row)
            if log is not None:
                tf = row["TD-TF"]
                log(f"  seed {seed}, {name}: one-step {tf['one_step']:.3g}, VPT "
                    f"{tf['vpt_mean']:.3g} LT, W1 {tf['w1_mean']}, {fit_cpu:.0f} s CPU")
    result = {"seeds": list(seeds), "quick": quick, "rows": rows,
              "wall_s": time.perf_counter() - wall0, "cpu_s": time.process_time() - cpu0}
    text = json.dumps(result, indent=1, default=_json_default)
    write_atomic(out / "ablation.json", lambda tmp: Path(tmp).write_text(text))
    from .tdtf_report import write_ablation

    write_ablation(out, result)
    return result

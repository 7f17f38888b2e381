"""Figures and README.md of ``exactformer experiment tdtf`` (captions built from results)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..dataset import write_atomic

COLORS = {"truth": "black", "TD-TF": "C3", "TD-DMD": "C0", "HankelDMD": "C2"}
TITLES = {"near_linear": "near-linear oscillations", "lorenz": "Lorenz '63",
          "reaction_diffusion": "λ–ω reaction–diffusion (POD)"}


def _plt():
    from ..figures import pyplot

    return pyplot()


def _time_axis(data, n):
    unit = data.dt * (data.lyapunov or 1.0)
    return np.arange(1, n + 1) * unit, ("Lyapunov times" if data.lyapunov else "time")


def write_figures(out: Path, first: dict, runs: list[dict]) -> list[str]:
    """Rollouts against truth, error vs horizon, attractors, marginals, spectra."""
    plt = _plt()
    names = []
    for name, ex in first.items():
        data = ex["data"]
        truth, _ = ex["TD-TF"]["_example"]
        d = min(3, truth.shape[1])
        t, unit = _time_axis(data, len(truth))
        fig, axes = plt.subplots(d, 1, figsize=(9, 1.9 * d + 0.6), sharex=True, squeeze=False)
        for i in range(d):
            ax = axes[i, 0]
            ax.plot(t, truth[:, i], color=COLORS["truth"], lw=1.6, label="truth")
            for label in ex["models"]:
                ax.plot(t, ex[label]["_example"][1][:, i], color=COLORS[label], lw=1,
                        label=label)
            ax.set_ylabel(f"x{i}")
            lo, hi = truth[:, i].min(), truth[:, i].max()
            pad = 0.5 * (hi - lo)
            ax.set_ylim(lo - pad, hi + pad)
        axes[0, 0].legend(fontsize=8, ncol=4, loc="upper right")
        axes[-1, 0].set_xlabel(unit)
        fig.suptitle(f"{TITLES[name]}: one rollout from a test window (seed {runs[0]['seed']})")
        fig.tight_layout()
        fname = f"rollout_{name}.png"
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
        names.append(fname)

    systems = list(first)
    fig, axes = plt.subplots(1, len(systems), figsize=(4.6 * len(systems), 3.8), squeeze=False)
    for ax, name in zip(axes[0], systems):
        data = first[name]["data"]
        rs = [r for r in runs if r["system"] == name]
        for label in rs[0]["models"]:
            steps = np.asarray(rs[0]["models"][label]["horizon_steps"])
            curves = np.array([r["models"][label]["rollout_error_median"] for r in rs])
            t = steps * data.dt * (data.lyapunov or 1.0)
            with np.errstate(invalid="ignore"):
                ax.plot(t, np.exp(np.mean(np.log(np.minimum(curves, 1e6)), axis=0)),
                        color=COLORS[label], label=label)
        ax.axhline(0.4, color="gray", ls="--", lw=0.8, label="VPT threshold 0.4")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("horizon (" + ("Lyapunov times" if data.lyapunov else "time") + ")")
        ax.set_ylabel("median normalised error")
        ax.set_title(TITLES[name], fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "error_vs_horizon.png", dpi=110)
    plt.close(fig)
    names.append("error_vs_horizon.png")

    if "lorenz" in first:
        names += _lorenz_figures(out, first["lorenz"], plt)
    fig, axes = plt.subplots(1, len(systems), figsize=(4.6 * len(systems), 3.6), squeeze=False)
    from .tdtf import power_spectrum

    for ax, name in zip(axes[0], systems):
        ex = first[name]
        data = ex["data"]
        n = min(1024, len(data.long), len(ex["TD-TF"]["_free"]) * 9 // 10)
        f, p = power_spectrum(data.long, data.dt, n)
        ax.semilogy(f, p[:, 0], color=COLORS["truth"], lw=1.6, label="truth")
        for label in ex["models"]:
            free = ex[label]["_free"]
            if np.isfinite(free).all():
                f2, p2 = power_spectrum(free[len(free) // 10:], data.dt, n)
                ax.semilogy(f2, np.maximum(p2[:, 0], 1e-30), color=COLORS[label], lw=1,
                            label=label)
        ax.set_xlim(0, f[np.argmax(p[:, 0] < 1e-8 * p[:, 0].max())] if
                    (p[:, 0] < 1e-8 * p[:, 0].max()).any() else f[-1])
        ax.set_ylim(1e-10 * p[:, 0].max(), 10 * p[:, 0].max())
        ax.set_xlabel("frequency")
        ax.set_ylabel("PSD of x0")
        ax.set_title(TITLES[name], fontsize=10)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "spectra.png", dpi=110)
    plt.close(fig)
    names.append("spectra.png")
    return names


def _lorenz_figures(out: Path, ex: dict, plt) -> list[str]:
    data = ex["data"]
    labels = list(ex["models"])
    fig, axes = plt.subplots(1, 1 + len(labels), figsize=(3.8 * (1 + len(labels)), 3.8),
                             sharex=True, sharey=True)
    n = len(ex["TD-TF"]["_free"])
    axes[0].plot(data.long[:n, 0], data.long[:n, 2], color="black", lw=0.3)
    axes[0].set_title("truth")
    for ax, label in zip(axes[1:], labels):
        free = ex[label]["_free"]
        ok = np.isfinite(free).all(axis=1)
        ax.plot(free[ok, 0], free[ok, 2], color=COLORS[label], lw=0.3)
        ax.set_title(f"{label} free rollout" + ("" if ok.all() else " (diverged)"))
    for ax in axes:
        ax.set_xlabel("x")
    axes[0].set_ylabel("z")
    lo, hi = data.long.min(axis=0), data.long.max(axis=0)
    axes[0].set_xlim(lo[0] - 5, hi[0] + 5)
    axes[0].set_ylim(lo[2] - 10, hi[2] + 5)
    fig.tight_layout()
    fig.savefig(out / "lorenz_attractor.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for i, ax in enumerate(axes):
        bins = np.linspace(lo[i], hi[i], 60)
        ax.hist(data.long[:, i], bins=bins, density=True, color="lightgray", label="truth")
        for label in labels:
            free = ex[label]["_free"]
            tail = free[len(free) // 10:, i]
            if np.isfinite(tail).all() and ((tail >= lo[i]) & (tail <= hi[i])).any():
                ax.hist(tail, bins=bins, density=True, histtype="step",
                        color=COLORS[label], label=label)
        ax.set_xlabel("xyz"[i])
    axes[0].legend(fontsize=8)
    fig.suptitle("Lorenz '63: marginals of one long free rollout against the attractor")
    fig.tight_layout()
    fig.savefig(out / "lorenz_marginals.png", dpi=110)
    plt.close(fig)
    return ["lorenz_attractor.png", "lorenz_marginals.png"]


# ----------------------------------------------------------------------------- README


def _pm(s: dict, fmt: str = ".3g") -> str:
    if s["mean"] is None:
        return "diverged"
    return f"{s['mean']:{fmt}} ± {s['std']:{fmt}}"


def table(results: dict) -> list[str]:
    """Markdown rows: system × model, mean ± std over seeds."""
    rows = ["| system | model | one-step error | valid prediction time (mean per seed) | "
            "VPT per start: median [10 %, 90 %] | W1 of marginals (mean over variables) | "
            "spectrum error (log10) |",
            "|---|---|---|---|---|---|---|"]
    for name, s in results["per_system"].items():
        unit = " LT" if name == "lorenz" else ""
        for label in model_labels(s):
            st = s[label]
            p = st.get("vpt_per_start")
            spread = "" if p is None else f"{p['median']:.3g} [{p['p10']:.3g}, {p['p90']:.3g}]"
            rows.append(f"| {name} | {label} | {_pm(st['one_step'])} | "
                        f"{_pm(st['vpt_mean'])}{unit} | {spread} | {_pm(st['w1_mean'])} | "
                        f"{_pm(st['spectrum_log10_error'])} |")
        if s.get("w1_truth_half_vs_half", {}).get("n"):
            rows.append(f"| {name} | truth: first vs second half of the reference run | | | | "
                        f"{_pm(s['w1_truth_half_vs_half'])} | |")
    return rows


def model_labels(summary: dict) -> list[str]:
    """The model entries of one system's summary (TD-TF, TD-DMD, HankelDMD)."""
    return [k for k, v in summary.items() if isinstance(v, dict) and "one_step" in v]


def claims_text(results: dict) -> list[str]:
    c = results["claims"]
    lines = []
    if "near_linear_one_step_within_1.5x" in c:
        x = c["near_linear_one_step_within_1.5x"]
        lines.append(f"* near-linear, TD-TF one-step error within 1.5× of TD-DMD's: ratio "
                     f"{_pm(x['ratio'])} (min {x['ratio']['min']:.3g}, max "
                     f"{x['ratio']['max']:.3g}) — "
                     f"{'holds' if x['holds_every_seed'] else 'does NOT hold'} on every seed.")
    if "lorenz_vpt_at_least_2x" in c:
        x = c["lorenz_vpt_at_least_2x"]
        lines.append(f"* Lorenz, TD-TF valid prediction time ≥ 2× TD-DMD's: ratio "
                     f"{_pm(x['ratio'])} (min {x['ratio']['min']:.3g}) — "
                     f"{'holds' if x['holds_every_seed'] else 'does NOT hold'} on every seed.")
    if "lorenz_w1_at_most_half" in c:
        x = c["lorenz_w1_at_most_half"]
        if x["ratio"]["n"]:
            lines.append(f"* Lorenz, W1 of TD-TF's free-rollout marginals ≤ ½ of TD-DMD's: "
                         f"ratio {_pm(x['ratio'])} (max {x['ratio']['max']:.3g}) — "
                         f"{'holds' if x['holds_every_seed'] else 'does NOT hold'} on every "
                         f"seed.")
        else:
            lines.append("* Lorenz, W1 ratio: undefined (a free rollout diverged).")
    return lines


def write_readme(out: Path, results: dict) -> None:
    st = results["setting"]
    per = results["per_system"]
    lines = [
        "# TD-TF against TD-DMD", "",
        f"Seeds {st['seeds']} ({'quick' if st['quick'] else 'full'} run), "
        f"{results['wall_s']:.0f} s wall, {results['cpu_s']:.0f} s CPU. Errors are "
        f"{st['error_normalisation']}; the valid prediction time is the first time that "
        f"error exceeds {st['vpt_threshold']} (Lorenz: in Lyapunov times, λ₁ = "
        f"{st['lyapunov_lorenz']}; other systems: in time units). W1: Wasserstein-1 distance "
        "between each variable's marginal over long free rollouts and the true long run's, "
        "averaged over variables. Spectrum error: mean |log10 PSD − log10 PSD_true| over "
        "the resolved band. Means ± sample standard deviation over seeds. See docs/tdtf.md.",
        "", *table(results), "", "## The issue's claims", "", *claims_text(results), "",
        "## Figures", "",
    ]
    runs = results["runs"]
    for fig in results["figures"]:
        lines.append(f"![{fig}]({fig})")
        lines.append("")
        lines.append(_caption(fig, per, runs))
        lines.append("")
    text = "\n".join(lines)
    write_atomic(out / "README.md", lambda tmp: Path(tmp).write_text(text))


def _caption(fig: str, per: dict, runs: list[dict]) -> str:
    def vpt(name, label):
        return per[name][label]["vpt_mean"]

    if fig.startswith("rollout_"):
        name = fig[len("rollout_"):-4]
        r = next(r for r in runs if r["system"] == name)
        parts = [f"{label}: valid for {m['vpt_mean']:.3g} "
                 f"{'Lyapunov times' if name == 'lorenz' else 'time units'} on average"
                 for label, m in r["models"].items()]
        return (f"*{TITLES[name]}, seed {r['seed']}: the first test rollout against the truth "
                f"(first variables). Over the {len(r['models']['TD-TF']['vpt'])} test starts "
                f"of this seed, {'; '.join(parts)}.*")
    if fig == "error_vs_horizon.png":
        parts = []
        for name in per:
            parts.append(f"{TITLES[name]}: mean VPT TD-TF {_pm(vpt(name, 'TD-TF'))} vs TD-DMD "
                         f"{_pm(vpt(name, 'TD-DMD'))}")
        return ("*Median normalised rollout error against the horizon (geometric mean of "
                "the seeds' medians); the dashed line is the 0.4 threshold. " +
                "; ".join(parts) + ".*")
    if fig == "lorenz_attractor.png":
        s = per["lorenz"]
        return (f"*Lorenz '63, x–z projection of one long free rollout per model against the "
                f"true attractor. W1 of the marginals (mean over x, y, z and seeds): TD-TF "
                f"{_pm(s['TD-TF']['w1_mean'])}, TD-DMD {_pm(s['TD-DMD']['w1_mean'])}.*")
    if fig == "lorenz_marginals.png":
        s = per["lorenz"]
        return (f"*Histograms of x, y, z over one long free rollout against the true "
                f"attractor's. W1 / std (mean over variables): TD-TF "
                f"{_pm(s['TD-TF']['w1_mean_over_std'])}, TD-DMD "
                f"{_pm(s['TD-DMD']['w1_mean_over_std'])}.*")
    if fig == "spectra.png":
        parts = [f"{TITLES[n]}: TD-TF {_pm(per[n]['TD-TF']['spectrum_log10_error'])}, TD-DMD "
                 f"{_pm(per[n]['TD-DMD']['spectrum_log10_error'])}" for n in per]
        return ("*Welch power spectrum of the first variable over one long free rollout "
                "against the truth (a diverged or decayed rollout drops out or falls "
                "below). Spectrum error (mean |Δ log10 PSD|): " + "; ".join(parts) + ".*")
    return ""


def ablation_table(result: dict) -> list[str]:
    """Markdown rows: variant, mean over seeds of one-step error, VPT, W1 (TD-DMD beside)."""
    rows = ["| variant | TD-TF one-step | TD-TF VPT (LT) | TD-TF W1 | TD-DMD VPT (LT), same K |"
            " fit CPU s |", "|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["variant"] for r in result["rows"]):
        rs = [r for r in result["rows"] if r["variant"] == name]

        def mean(key, label="TD-TF", rs=rs):
            v = [r[label][key] for r in rs]
            return "diverged" if any(x is None for x in v) else f"{np.mean(v):.3g}"

        rows.append(f"| {name} | {mean('one_step')} | {mean('vpt_mean')} | {mean('w1_mean')} |"
                    f" {mean('vpt_mean', 'TD-DMD')} | "
                    f"{np.mean([r['fit_cpu_s'] for r in rs]):.0f} |")
    return rows


def write_ablation(out: Path, result: dict) -> None:
    text = "\n".join([
        "# Lorenz '63: TD-TF ablation", "",
        f"Seeds {result['seeds']}; means over seeds; {result['cpu_s']:.0f} s CPU. Each row "
        "changes one setting of the main run's TD-TF (docs/tdtf.md); VPT in Lyapunov times.",
        "", *ablation_table(result), ""])
    write_atomic(out / "ablation.md", lambda tmp: Path(tmp).write_text(text))

"""Figures of the pure-attention clustering dynamics (``exactformer experiment clustering``).

Regenerates, as PNGs with captions in a ``README.md``, the pictures behind Alcalde,
Fantuzzi and Zuazua, *Clustering in pure-attention hardmax transformers and its role in
sentiment analysis* (arXiv:2407.01602), computed with :mod:`exactformer.dynamics`. Every
figure function returns the numbers its caption claims, collected in ``summary.json``, and
hands its raw configurations and trajectories to ``run(..., trajectories=dict)``: the tests
recompute every claim from those, independently of the numbers the figure reports.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..dynamics import (
    argmax_sets,
    leaders,
    limit_configuration,
    random_spd,
    simulate,
)
from ..figures import pyplot, save

ALPHA = 1.0


def _tokens(seed: int, n: int, d: int, condition: float = 4.0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), random_spd(d, rng, condition)


def _paths(ax, traj, labels, cmap="tab10"):
    cm = pyplot().get_cmap(cmap)
    for i in range(traj.states.shape[1]):
        p = traj.states[:, i]
        ax.plot(p[:, 0], p[:, 1], "-", color=cm(labels[i] % 10), lw=0.8, alpha=0.8)
    ax.scatter(*traj.initial.T, s=12, c=[cm(c % 10) for c in labels], zorder=3)


# ------------------------------------------------------------------------ figures


def _keep(raw: dict | None, **arrays) -> None:
    """Hand a figure's raw data (configurations, trajectories) to the caller, if asked."""
    if raw is not None:
        raw.update(arrays)


def _layers(k: int) -> str:
    return "1 layer" if k == 1 else f"{k} layers"


def fig_argmax_geometry(out: Path, raw: dict | None = None) -> dict:
    """Argmax set of a token = the tokens furthest along ``A x_i`` (a supporting line)."""
    plt = pyplot()
    Z, A = _tokens(7, 14, 2)
    lead = leaders(Z, A)
    mask = argmax_sets(Z, A)
    norms = np.einsum("ij,jk,ik->i", Z, A, Z)
    follower = int(next(i for i in np.argsort(norms) if i not in lead and norms[i] > 0.5))
    queries = [follower, int(lead[0])]
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    info = []
    for ax, i in zip(axes, queries, strict=True):
        v = A @ Z[i]
        u = v / np.linalg.norm(v)
        proj = Z @ u
        best = np.flatnonzero(mask[i])
        ax.scatter(*Z.T, s=18, c="0.5", zorder=3)
        ax.scatter(*Z[best].T, s=90, facecolor="none", edgecolor="tab:red", lw=2, zorder=4,
                   label="argmax set $C_i$")
        ax.scatter(*Z[i], s=60, marker="s", c="tab:blue", zorder=5, label="query $x_i$")
        ax.annotate("", xy=u * 1.5, xytext=(0, 0),
                    arrowprops={"arrowstyle": "->", "color": "tab:blue", "lw": 2})
        ax.text(*(u * 1.6), "$A x_i$", color="tab:blue")
        t = np.linspace(-4, 4, 2)
        perp = np.array([-u[1], u[0]])
        ax.plot(*(np.outer(t, u)).T, color="tab:blue", lw=0.6, ls=":")
        feet = np.outer(proj, u)  # foot of each token on the line through A x_i
        for z, f in zip(Z, feet, strict=True):
            ax.plot([z[0], f[0]], [z[1], f[1]], color="0.75", lw=0.6)
        ax.scatter(*feet.T, s=8, c="tab:blue")
        line = proj.max() * u + np.outer(t, perp)
        ax.plot(*line.T, color="tab:red", lw=1.2,
                label=r"supporting line $\langle A x_i, y\rangle = \max$")
        ax.set_aspect("equal")
        ax.set_xlim(-3, 3)
        ax.set_ylim(-3, 3)
        kind = "a leader: its own argmax" if i in lead else "a follower"
        ax.set_title(f"token {i} ({kind})")
        ax.legend(loc="lower left", fontsize=8)
        info.append({"query": i, "argmax": best.tolist(),
                     "top_projection": int(np.argmax(proj)), "is_leader": bool(i in lead)})
    save(fig, out / "argmax_geometry.png")
    _keep(raw, Z=Z, A=A, queries=np.array(queries))
    return {"queries": info}


def fig_rank_one(out: Path, raw: dict | None = None) -> dict:
    """Rank-one ``A = a aᵀ``: tokens only see ``⟨a, z⟩`` and run straight to the extreme
    token on their side; the limit lies on the line through the two extremes."""
    plt = pyplot()
    rng = np.random.default_rng(11)
    a = np.array([1.0, 0.4])
    A = np.outer(a, a)
    Z = rng.standard_normal((25, 2)) * [1.0, 1.6]
    traj = simulate(Z, A, alpha=ALPHA)
    p = Z @ a
    top, bottom = int(np.argmax(p)), int(np.argmin(p))
    expected = np.where((p > 0)[:, None], Z[top], Z[bottom])
    labels = (p > 0).astype(int)
    fig, ax = plt.subplots(figsize=(6, 6))
    _paths(ax, traj, labels)
    ax.plot(*np.c_[Z[bottom], Z[top]], "k--", lw=1, label="limit line")
    ax.scatter(*Z[[top, bottom]].T, marker="*", s=250, c="k", zorder=5, label="extreme tokens")
    ax.annotate("", xy=a, xytext=(0, 0), arrowprops={"arrowstyle": "->", "lw": 2})
    ax.text(*(a * 1.1), "a")
    ax.set_aspect("equal")
    ax.legend(loc="lower right")
    ax.set_title("rank-one A = a aᵀ: straight paths to the extreme tokens")
    save(fig, out / "rank_one.png")
    _keep(raw, Z=Z, A=A, a=a, states=traj.states)
    return {
        "converged": traj.converged,
        "steps": traj.steps,
        "max_error_to_extremes": float(np.abs(traj.final - expected).max()),
        "extremes": [top, bottom],
        "n_limit_points": limit_configuration(traj).n_clusters,
    }


def fig_clustering(out: Path, raw: dict | None = None) -> dict:
    """Full clustering: snapshots of the layers, every token ends at an initial leader."""
    plt = pyplot()
    Z, A = _tokens(3, 30, 2)
    traj = simulate(Z, A, alpha=ALPHA)
    lc = limit_configuration(traj)
    snaps = [0, 1, 3, traj.steps]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.3), sharex=True, sharey=True)
    cm = plt.get_cmap("tab10")
    for ax, k in zip(axes, snaps, strict=True):
        ax.scatter(*traj.states[k].T, s=16, c=[cm(c % 10) for c in lc.labels])
        ax.scatter(*Z[lc.leaders].T, marker="*", s=200, facecolor="none", edgecolor="k")
        ax.set_title(f"after {_layers(k)}" if k else "input (stars: leaders)")
        ax.set_xlabel("z₁")
        ax.set_ylabel("z₂")
        ax.set_aspect("equal")
    save(fig, out / "clustering.png")
    _keep(raw, Z=Z, A=A, states=traj.states)
    return {
        "n_tokens": len(Z),
        "leaders": lc.leaders.tolist(),
        "n_clusters": lc.n_clusters,
        "cluster_kinds": sorted(set(lc.kind.tolist())),
        "steps": traj.steps,
        "limit_equals_leaders": bool(
            lc.n_clusters == len(lc.leaders) and set(lc.kind.tolist()) == {"leader"}
        ),
    }


def fig_trajectories_2d(out: Path, raw: dict | None = None) -> dict:
    """Paths of 60 tokens in the plane, coloured by the leader they reach."""
    plt = pyplot()
    Z, A = _tokens(21, 60, 2, condition=6.0)
    traj = simulate(Z, A, alpha=0.5)
    lc = limit_configuration(traj)
    fig, ax = plt.subplots(figsize=(6.5, 6.5))
    _paths(ax, traj, lc.labels)
    ax.scatter(*lc.points.T, marker="*", s=220, c="k", zorder=5, label="limit points")
    ax.set_aspect("equal")
    ax.legend(loc="lower right")
    ax.set_title(f"hardmax trajectories, α = 0.5 ({_layers(traj.steps)})")
    save(fig, out / "trajectories_2d.png")
    _keep(raw, Z=Z, A=A, states=traj.states)
    return {"steps": traj.steps, "n_clusters": lc.n_clusters, "n_leaders": len(lc.leaders),
            "kinds": {k: int((lc.kind == k).sum()) for k in ("leader", "emerged", "tie")}}


def fig_sphere(out: Path, raw: dict | None = None) -> dict:
    """Normalised variant: tokens rescaled to unit norm after every layer."""
    plt = pyplot()
    Z, A = _tokens(5, 40, 3, condition=8.0)
    traj = simulate(Z, A, alpha=ALPHA, sphere=True, max_steps=2000)
    lc = limit_configuration(traj)
    fig = plt.figure(figsize=(7, 7))
    ax = fig.add_subplot(projection="3d")
    u, v = np.mgrid[0 : 2 * np.pi : 30j, 0 : np.pi : 15j]
    ax.plot_wireframe(np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v), color="0.85",
                      lw=0.4)
    cm = plt.get_cmap("tab10")
    for i in range(len(Z)):
        p = traj.states[:, i]
        ax.plot(*p.T, color=cm(lc.labels[i] % 10), lw=1.2)
    ax.scatter(*traj.initial.T, s=10, c=[cm(c % 10) for c in lc.labels])
    ax.scatter(*lc.points.T, marker="*", s=200, c="k")
    ax.set_box_aspect((1, 1, 1))
    ax.set_title(f"on the sphere: {lc.n_clusters} clusters after {_layers(traj.steps)}")
    save(fig, out / "sphere.png")
    _keep(raw, Z=Z, A=A, states=traj.states, tol=traj.tol)
    return {
        "converged": traj.converged,
        "steps": traj.steps,
        "max_norm_error": float(np.abs(np.linalg.norm(traj.states, axis=2) - 1).max()),
        "n_clusters": lc.n_clusters,
        "n_leaders": len(lc.leaders),
        "leaders_kept": int(np.sum(
            np.abs(traj.states[:, lc.leaders] - traj.initial[lc.leaders]).max(axis=(0, 2))
            < 1e-9)),
        "kinds": {k: int((lc.kind == k).sum()) for k in ("leader", "emerged", "tie")},
    }


def fig_no_concentration(out: Path, raw: dict | None = None) -> dict:
    """An exactly symmetric configuration: the centre ties with every token and stays."""
    plt = pyplot()
    Z = np.array([[1, 0], [0, 1], [-1, 0], [0, -1], [0, 0], [0.25, 0.125], [-0.25, -0.125],
                  [0.5, -0.375], [-0.5, 0.375]])
    A = np.diag([1.0, 2.0])
    traj = simulate(Z, A, alpha=ALPHA)
    lc = limit_configuration(traj)
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    _paths(ax, traj, lc.labels)
    tie = np.flatnonzero(lc.kind == "tie")
    ax.scatter(*lc.points[tie].T, s=160, facecolor="none", edgecolor="tab:red", lw=2,
               label="tie point (not a leader)", zorder=6)
    ax.scatter(*Z[lc.leaders].T, marker="*", s=200, c="k", label="leaders", zorder=5)
    ax.set_aspect("equal")
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title("a configuration that does not concentrate")
    save(fig, out / "no_concentration.png")
    _keep(raw, Z=Z, A=A, states=traj.states)
    return {"concentrated": lc.concentrated, "tie_points": lc.points[tie].tolist(),
            "n_clusters": lc.n_clusters}


def fig_softmax(out: Path, quick: bool, raw: dict | None = None) -> dict:
    """Hardmax against softmax at several temperatures, same input and depth."""
    plt = pyplot()
    Z, A = _tokens(3, 30, 2)
    depth = 40
    scale = float(np.abs(Z @ A @ Z.T).max())
    taus = [1.0, 0.1, 0.01, 0.001]
    hard = simulate(Z, A, alpha=ALPHA, max_steps=depth, min_steps=depth, tol=0)
    runs = [("hardmax", hard)]
    for t in taus:
        runs.append((f"softmax τ = {t:g}·s", simulate(Z, A, alpha=ALPHA, attention="softmax",
                                                       temperature=t * scale,
                                                       max_steps=depth, tol=0)))
    lc = limit_configuration(hard)
    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 4.2), sharex=True,
                             sharey=True)
    errors, clusters = {}, {}
    for ax, (name, traj) in zip(axes, runs, strict=True):
        _paths(ax, traj, lc.labels)
        ax.scatter(*traj.final.T, marker="x", s=30, c="k", zorder=5)
        ax.set_title(name)
        ax.set_xlabel("z₁")
        ax.set_ylabel("z₂")
        ax.set_aspect("equal")
        if name != "hardmax":
            errors[name] = float(np.abs(traj.final - hard.final).max())
            clusters[name] = limit_configuration(traj, atol=1e-3).n_clusters
    fig.suptitle(f"after {_layers(depth)}; s = largest |score| = {scale:.2f}; colours: hardmax"
                 " clusters")
    save(fig, out / "hardmax_vs_softmax.png")
    _keep(raw, Z=Z, A=A, finals={name: traj.final for name, traj in runs})
    return {"depth": depth, "score_scale": scale, "temperatures": taus,
            "max_distance_to_hardmax": list(errors.values()),
            "clusters_at_1e-3": list(clusters.values()), "hardmax_clusters": lc.n_clusters}


def fig_convergence_time(out: Path, quick: bool, progress=None,
                         raw: dict | None = None) -> dict:
    """Layers until no token moves by more than 1e-10 × scale, against the number of tokens."""
    plt = pyplot()
    ns = [2, 4, 8, 16, 32, 64, 128] if quick else [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
    seeds = 5 if quick else 20
    dims = [2, 8]
    tol = 1e-10
    steps = {d: np.zeros((len(ns), seeds), dtype=int) for d in dims}
    converged = True
    task = progress.add_task("convergence time", total=len(dims) * len(ns) * seeds) \
        if progress else None
    for d in dims:
        for a, n in enumerate(ns):
            for s in range(seeds):
                Z, A = _tokens(1000 * n + s, n, d)
                traj = simulate(Z, A, alpha=ALPHA, tol=tol, max_steps=2000)
                converged &= traj.converged
                steps[d][a, s] = traj.steps
                if progress:
                    progress.advance(task)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for d in dims:
        med = np.median(steps[d], axis=1)
        ax.plot(ns, med, "o-", label=f"d = {d}: median")
        ax.fill_between(ns, steps[d].min(axis=1), steps[d].max(axis=1), alpha=0.2,
                        label=f"d = {d}: min–max over {seeds} seeds")
    ref = np.log(1 / tol) / np.log(1 + ALPHA)
    ax.axhline(ref, color="k", ls=":", label="log(1/tol)/log(1+α)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("number of tokens n")
    ax.set_ylabel("layers to convergence")
    ax.set_title(f"convergence time (α = {ALPHA:g}, tol = {tol:g})")
    ax.legend(fontsize=8)
    save(fig, out / "convergence_time.png")
    _keep(raw, n=ns, seeds=seeds, tol=tol, steps=steps)
    return {
        "n": ns,
        "seeds": seeds,
        "all_converged": bool(converged),
        "reference_steps": float(ref),
        "median_steps": {str(d): np.median(steps[d], axis=1).tolist() for d in dims},
        "max_steps": {str(d): steps[d].max(axis=1).tolist() for d in dims},
    }


# ---------------------------------------------------------------------------- run

CAPTIONS = {
    "argmax_geometry.png": lambda s: (
        "**Argmax set.** Token $x_i$ attends to the tokens with the largest projection onto "
        "$A x_i$: project every token onto the line through $A x_i$ (blue ticks); the argmax "
        "set sits on the supporting line (red). Left: a follower "
        f"(token {s['queries'][0]['query']}, argmax {s['queries'][0]['argmax']}); right: a "
        f"leader (token {s['queries'][1]['query']}), which is its own argmax and never moves."
    ),
    "rank_one.png": lambda s: (
        "**Rank-one A.** With $A = a a^T$ the scores only see $⟨a, z⟩$, so every token runs "
        "on a straight line to the extreme token on its side of the origin; the limit "
        f"({s['n_limit_points']} points) lies on the line through the two extremes "
        f"(max deviation {s['max_error_to_extremes']:.1e}, {_layers(s['steps'])})."
    ),
    "clustering.png": lambda s: (
        f"**Full clustering onto the leaders.** {s['n_tokens']} tokens, anisotropic SPD A, "
        f"α = 1. The {len(s['leaders'])} leaders (stars: tokens that win their own argmax) "
        "never move; every other token converges to one of them "
        f"({s['n_clusters']} clusters after {_layers(s['steps'])})."
    ),
    "no_concentration.png": lambda s: (
        "**No concentration.** An exactly symmetric configuration (square, centre, symmetric "
        "pairs): the centre ties with every token, moves to the mean — itself — and stays, "
        f"away from all leaders (tie points: {s['tie_points']}). Such ties are unstable: a "
        "generic perturbation sends the centre to a leader."
    ),
    "trajectories_2d.png": lambda s: (
        f"**Trajectories in 2-D.** 60 tokens, α = 0.5: {s['n_clusters']} limit points, "
        f"{s['kinds']['leader']} of them initial leaders, {s['kinds']['emerged']} leaders "
        f"that emerged during the run, {s['kinds']['tie']} ties ({_layers(s['steps'])})."
    ),
    "sphere.png": lambda s: (
        "**On the sphere (normalised case).** Tokens are rescaled to unit norm after every "
        f"layer; they cluster on the sphere: {s['n_clusters']} clusters after {s['steps']} "
        f"layers (norm error {s['max_norm_error']:.1e}). Unlike the flat case the convex hull "
        "is not preserved — rescaling can carry a token past a leader — so only "
        f"{s['leaders_kept']} of the {s['n_leaders']} initial leaders keep their place, and "
        f"{s['kinds']['emerged']} clusters sit at leaders that emerged during the run."
    ),
    "hardmax_vs_softmax.png": lambda s: (
        f"**Hardmax vs softmax.** Same input, {s['depth']} layers; softmax temperature "
        f"τ = {', '.join(f'{t:g}' for t in s['temperatures'])} × the largest score. Max "
        "distance of the softmax output to the hardmax one: "
        f"{', '.join(f'{e:.1e}' for e in s['max_distance_to_hardmax'])}; clusters (within "
        f"1e-3): {s['clusters_at_1e-3']} against {s['hardmax_clusters']} for hardmax. "
        "At high temperature tokens merge towards one cluster; as τ → 0 softmax reproduces "
        "hardmax."
    ),
    "convergence_time.png": lambda s: (
        "**Convergence time.** Layers until no token moves by more than 1e-10 × scale, "
        f"median and range over {s['seeds']} random configurations per n; the dotted line is "
        "the time a token needs at the contraction rate 1/(1+α) from distance 1. 0 layers "
        "means every token was already a leader (common for few tokens in high dimension). "
        f"Median for d = 2: {s['median_steps']['2']}."
    ),
}


def run(out: Path, quick: bool = False, progress=None,
        trajectories: dict | None = None) -> dict:
    """Write all figures, ``summary.json`` and ``README.md`` into ``out``.

    ``trajectories`` (a dict), if given, receives per figure its raw inputs and trajectories.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    raw = trajectories if trajectories is not None else {}

    def keep(name):
        return raw.setdefault(name, {}) if trajectories is not None else None

    summary = {
        "argmax_geometry.png": fig_argmax_geometry(out, keep("argmax_geometry.png")),
        "rank_one.png": fig_rank_one(out, keep("rank_one.png")),
        "clustering.png": fig_clustering(out, keep("clustering.png")),
        "no_concentration.png": fig_no_concentration(out, keep("no_concentration.png")),
        "trajectories_2d.png": fig_trajectories_2d(out, keep("trajectories_2d.png")),
        "sphere.png": fig_sphere(out, keep("sphere.png")),
        "hardmax_vs_softmax.png": fig_softmax(out, quick, keep("hardmax_vs_softmax.png")),
        "convergence_time.png": fig_convergence_time(out, quick, progress,
                                                     keep("convergence_time.png")),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    lines = [
        "# Pure-attention clustering",
        "",
        "Dynamics $z_i ← z_i/(1+α) + α/(1+α)·\\mathrm{mean}\\{z_j : j ∈ "
        "\\arg\\max_k ⟨A z_i, z_k⟩\\}$ "
        "(Alcalde, Fantuzzi, Zuazua, *Clustering in pure-attention hardmax transformers and "
        "its role in sentiment analysis*, arXiv:2407.01602), simulated with "
        "`exactformer.dynamics`. Numbers below are measured by this run (`summary.json`).",
        "",
    ]
    for name, caption in CAPTIONS.items():
        lines += [f"![{name}]({name})", "", caption(summary[name]), ""]
    (out / "README.md").write_text("\n".join(lines), encoding="utf-8")
    return summary

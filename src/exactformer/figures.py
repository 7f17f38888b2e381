"""Figures of token trajectories through a compiled model (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import numeric as nm
from .dataset import Dataset, write_atomic
from .model import Transformer


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display): every figure's entry."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path, dpi: int = 110) -> None:
    """Lay out, write ``path`` atomically (PNG by its name) and close the figure."""
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=Path(path).suffix[1:] or "png"))
    pyplot().close(fig)


def _symlog_axes(ax) -> None:
    """Symmetric log axes, linear within ±1, ticks written as plain numbers (not −10⁰)."""
    from matplotlib.ticker import FuncFormatter, SymmetricalLogLocator

    for axis, set_scale in ((ax.xaxis, ax.set_xscale), (ax.yaxis, ax.set_yscale)):
        set_scale("symlog", linthresh=1.0)
        axis.set_major_locator(SymmetricalLogLocator(base=10, linthresh=1.0))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def trajectory_states(model: Transformer, dataset: Dataset):
    """Token states (float64, concatenated) after every layer, with labels."""
    trace: list = []
    if model.exact and model.attention == "softmax":  # exp has no rational forward pass
        model = model.as_float()
    model.run(dataset.inputs if not model.exact else [nm.to_exact(x) for x in dataset.inputs],
              trace=trace)
    return [(label, nm.to_float(X)) for label, X in trace]


def _stage_index(model: Transformer, states, word: str) -> int:
    """Index in ``states`` of the state right after the last layer whose block kind has ``word``."""
    idx = 0
    for i, (label, _) in enumerate(states):
        if label == "input":
            continue
        block = int(label.split()[1])
        layer = label.split()[2]
        kind = model.blocks[block].kind
        if word in kind and (layer == "sa" or model.blocks[block].sa is None):
            idx = i
    return idx


def plot_trajectories(model: Transformer, dataset: Dataset, out_dir) -> list[Path]:
    """Write ``trajectories.png`` (four panels) and ``paths.png`` (every token's path).

    Panels: the input, after separation (broadcast and splits), after the collapse, and
    the output lying on the targets. Only the first two coordinates are drawn.
    """
    plt = pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    states = trajectory_states(model, dataset)
    seq = np.repeat(np.arange(dataset.n_sequences), dataset.input_lengths)
    colors = plt.get_cmap("tab10")(np.arange(dataset.n_sequences) % 10)
    targets = np.concatenate(dataset.targets)
    panels = [
        ("input", 0),
        ("after separation", _stage_index(model, states, "broadcast")),
        ("after collapse", _stage_index(model, states, "collapse")),
        ("output on the targets", len(states) - 1),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.2))
    for ax, (title, i) in zip(axes, panels):
        X = states[i][1]
        for j in range(dataset.n_sequences):
            pts = X[seq == j]  # shrinking markers keep coinciding tokens visible
            ax.scatter(pts[:, 0], pts[:, 1], s=max(160 - 45 * j, 25), color=colors[j],
                       marker="os^Dv<>ph*"[j % 10], alpha=0.85, edgecolor="k",
                       label=f"sequence {j}")
        if title.startswith("output"):
            ax.scatter(targets[:, 0], targets[:, 1], s=220, marker="*", facecolor="none",
                       edgecolor="crimson", linewidth=1.5, label="targets")
        ax.set_title(f"{title}\n({states[i][0]})", fontsize=10)
        ax.set_xlabel("x₁")
        ax.set_ylabel("x₂")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=8, loc="best")
    fig.suptitle(f"Token trajectories through the compiled model ({model.n_blocks} blocks)")
    fig.tight_layout()
    paths = [out_dir / "trajectories.png"]
    write_atomic(paths[0], lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 6))
    stack = np.stack([X for _, X in states])  # (layers, T, d)
    labelled: set = set()
    for t in range(stack.shape[1]):
        j = int(seq[t])
        ax.plot(stack[:, t, 0], stack[:, t, 1], "-", color=colors[j], alpha=0.5, lw=1,
                label=None if j in labelled else f"sequence {j}")
        labelled.add(j)
        ax.scatter(stack[0, t, 0], stack[0, t, 1], color=colors[j], s=40, edgecolor="k")
    ax.scatter(targets[:, 0], targets[:, 1], s=220, marker="*", color="crimson",
               label="targets", zorder=5)
    _symlog_axes(ax)
    ax.set_xlabel("x₁ (linear within ±1, logarithmic beyond)")
    ax.set_ylabel("x₂ (linear within ±1, logarithmic beyond)")
    ax.set_title("Every token's path through all layers (dots: inputs)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(out_dir / "paths.png")
    write_atomic(paths[1], lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return paths


def plot_collapse_contrast(hardmax: Transformer, softmax: Transformer, dataset: Dataset,
                           out_dir) -> Path:
    """``collapse_contrast.png``: hardmax tokens land *on* their leader, softmax within ε.

    Both models come from the same seed, so every layer before the collapse is identical and
    the hardmax collapse output is each token's destination.
    """
    plt = pyplot()
    states = {}
    for name, model in (("hardmax", hardmax), ("softmax", softmax)):
        st = trajectory_states(model, dataset)
        states[name] = st[_stage_index(model, st, "collapse")][1]
    dist = np.linalg.norm(states["softmax"] - states["hardmax"], axis=1)
    scale = max(float(np.max(np.abs(states["hardmax"]))), 1e-300)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    seq = np.repeat(np.arange(dataset.n_sequences), dataset.input_lengths)
    colors = plt.get_cmap("tab10")(seq % 10)
    ax = axes[0]
    h, s = states["hardmax"], states["softmax"]
    ax.scatter(h[:, 0], h[:, 1], s=220, facecolor="none", edgecolor="k",
               label="hardmax (on the leader)")
    ax.scatter(s[:, 0], s[:, 1], s=40, c=colors, label="softmax (within ε)")
    ax.set_title("after the collapse (first two coordinates)")
    ax.set_xlabel("x₁")
    ax.set_ylabel("x₂")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[1]
    rel = np.maximum(dist / scale, 1e-18)
    ax.bar(np.arange(len(rel)), rel, color=colors)
    ax.axhline(1e-16, color="gray", ls=":", label="float64 rounding")
    ax.set_yscale("log")
    ax.set_xlabel("token (coloured by sequence)")
    ax.set_ylabel("|softmax − hardmax| / scale")
    ax.set_title(f"softmax collapse error, τ = {softmax.temperature:.3g}; hardmax: 0")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    path = Path(out_dir) / "collapse_contrast.png"
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path

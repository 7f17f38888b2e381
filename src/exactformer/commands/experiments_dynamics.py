"""``exactformer experiment clustering`` and ``exactformer experiment sentiment``.

Thin wrappers around :mod:`exactformer.experiments.clustering` and
:mod:`exactformer.experiments.sentiment`: parse options, show progress, print a summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..cli import QUIET, console, experiment_app, fail, user_errors
from ..cli import output_directory as _make_dir


def _progress():
    """A bar on a terminal, plain lines in a log (:mod:`exactformer.progress`)."""
    from ..progress import Progress

    return Progress(console)


@experiment_app.command("clustering",
                        short_help="Figures of the pure-attention clustering dynamics.")
@user_errors
def clustering(
    out: Annotated[Path, typer.Option("--out", help="Directory for PNGs and README.md.")],
    quick: Annotated[bool, typer.Option("--quick", help="Fewer configurations.")] = False,
    quiet: bool = QUIET,
) -> None:
    """Figures of the pure-attention clustering dynamics, captioned in OUT/README.md.

    Argmax geometry, leaders, rank-one A, a non-concentrating configuration, 2-D and sphere
    trajectories, hardmax vs softmax, convergence time against the number of tokens.
    """
    from ..experiments import clustering as exp

    _make_dir(out)
    with _progress() as progress:
        summary = exp.run(out, quick=quick, progress=progress)
    console.print(f"wrote {len(summary)} figures, README.md and summary.json to {out}")


@experiment_app.command("sentiment",
                        short_help="Leader-word sentiment classifier against baselines.")
@user_errors
def sentiment(
    out: Annotated[Path, typer.Option("--out", help="Directory for results.json and pictures.")],
    quick: Annotated[bool, typer.Option("--quick", help="Subset, tiny search (< 1 min).")] = False,
    seeds: Annotated[str, typer.Option(
        "--seeds", help="Seeds of split, init and batches: 0-4 or 0,1,2.")] = "0",
    attention: Annotated[str, typer.Option("--attention", help="hardmax or softmax.")] = "hardmax",
    epochs: Annotated[int | None, typer.Option(
        "--epochs", help="Most epochs tried on validation.")] = None,
    quiet: bool = QUIET,
) -> None:
    """Train the interpretable leader-word sentiment classifier and its baselines.

    Corpus: sentence polarity v1.0 (Pang & Lee 2005), shipped with the package. Every seed
    selects on its validation part and is tested once; writes results.json (per seed, mean,
    std, paired difference to the unigram baseline), table.md, and for the first seed
    sentences.html, leaders_per_class.png and embeddings_pca.png into OUT.
    """
    from ..experiments import sentiment as exp

    exp.require_torch()  # one clear line and exit 2 when PyTorch is missing
    seed_list = exp.parse_seeds(seeds)
    if attention not in ("hardmax", "softmax"):
        fail(f"--attention must be hardmax or softmax, got {attention!r}")
    settings = exp.quick_settings(seed_list[0]) if quick else exp.Settings(seed=seed_list[0])
    settings.attention = attention
    if epochs is not None:
        if epochs < 0:
            fail("--epochs must be at least 0")
        settings.epochs = epochs
    _make_dir(out)
    with _progress() as progress:
        r = exp.run(out, settings, seed_list, progress=progress)
    std = "" if r["model"]["std"] is None else f" ± {r['model']['std']:.4f}"
    console.print(
        f"test accuracy {r['model']['mean']:.4f}{std} ({attention}, {len(seed_list)} seed(s));"
        f" baselines: unigram {r['unigram']['mean']:.4f}, uni+bigram {r['bigram']['mean']:.4f};"
        f" CPU {r['cpu_seconds']:.1f} s, wall {r['wall_seconds']:.1f} s; wrote {out}",
        highlight=False,
    )


@experiment_app.command("meanfield",
                        short_help="Softmax flow at low temperature against hardmax.")
@user_errors
def meanfield(
    out: Annotated[Path, typer.Option("--out", help="Directory for PNGs, results, README.md.")],
    quick: Annotated[bool, typer.Option("--quick", help="Small n, few β (< 1 min).")] = False,
    workers: Annotated[int, typer.Option(
        "--workers", min=1, max=64,
        help="Processes for the independent runs (same numbers, less wall time).")] = 1,
    quiet: bool = QUIET,
) -> None:
    """Softmax self-attention flow at low temperature against its hardmax limit (W2, POT).

    Distance to the projection map's push-forward vs time and β, plateau vs sqrt(log(β+1)/β),
    arrival time vs log β, terminal phase vs the eigenvectors of V; see docs/meanfield.md.
    """
    import importlib.util

    if importlib.util.find_spec("ot") is None:
        fail("experiment meanfield needs POT: pip install 'exactformer[meanfield]'")
    _make_dir(out)
    from ..experiments import meanfield as exp

    with _progress() as progress:
        r = exp.run(out, quick=quick, progress=progress, workers=workers)
    slopes = ", ".join(f"d={d}: {r['fits'][str(d)]['plateau_slope']['mean']:.2f}"
                       for d in r["settings"]["dims"])
    console.print(f"plateau slope vs β {slopes}; {r['machine']['cpu_s']:.0f} s CPU; wrote {out}",
                  highlight=False)

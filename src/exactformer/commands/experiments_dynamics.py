"""``exactformer experiment clustering`` and ``exactformer experiment sentiment``.

Thin wrappers around :mod:`exactformer.experiments.clustering` and
:mod:`exactformer.experiments.sentiment`: parse options, show progress, print a summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..cli import console, experiment_app, fail, user_errors


def _make_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"cannot create output directory {out}: {exc.strerror or exc}")


def _progress():
    """A bar on a terminal, plain lines in a log (:mod:`exactformer.progress`)."""
    from ..progress import Progress

    return Progress(console)


@experiment_app.command("clustering")
@user_errors
def clustering(
    out: Annotated[Path, typer.Option("--out", help="Directory for PNGs and README.md.")],
    quick: Annotated[bool, typer.Option("--quick", help="Fewer configurations.")] = False,
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


@experiment_app.command("sentiment")
@user_errors
def sentiment(
    out: Annotated[Path, typer.Option("--out", help="Directory for results.json and pictures.")],
    quick: Annotated[bool, typer.Option("--quick", help="Subset, fewer epochs (< 1 min).")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of split, init and batches.")] = 0,
    attention: Annotated[str, typer.Option("--attention", help="hardmax or softmax.")] = "hardmax",
    epochs: Annotated[int | None, typer.Option("--epochs", help="Override the epochs.")] = None,
) -> None:
    """Train the interpretable leader-word sentiment classifier and its baselines.

    Corpus: sentence polarity v1.0 (Pang & Lee 2005), shipped with the package. Writes
    results.json, sentences.html, leaders_per_class.png and embeddings_pca.png into OUT.
    """
    from ..experiments import sentiment as exp

    exp.require_torch()  # one clear line and exit 2 when PyTorch is missing
    if attention not in ("hardmax", "softmax"):
        fail(f"--attention must be hardmax or softmax, got {attention!r}")
    settings = exp.quick_settings(seed) if quick else exp.Settings(seed=seed)
    settings.attention = attention
    if epochs is not None:
        if epochs < 1:
            fail("--epochs must be at least 1")
        settings.epochs = epochs
    _make_dir(out)
    with _progress() as progress:
        r = exp.run(out, settings, progress=progress)
    console.print(
        f"test accuracy {r['test_acc']:.4f} ({attention}); baselines: unigram "
        f"{r['baseline']:.4f}, uni+bigram {r['baseline_bigram']:.4f}; training "
        f"{r['train_seconds']:.1f} s, total {r['total_seconds']:.1f} s; wrote {out}",
        highlight=False,
    )

"""``exactformer train`` and ``exactformer experiment tikhonov`` (issue 7, docs/design.md §6).

Both need PyTorch (``pip install exactformer[torch]``); without it they print one line and
exit 2. The numerics live in :mod:`exactformer.training` and
:mod:`exactformer.experiments.tikhonov`; this module only parses options and shows progress.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import typer

from ..cli import (
    QUIET,
    app,
    console,
    experiment_app,
    fail,
    output_directory,
    output_file,
    user_errors,
)
from ..dataset import load_dataset

# "hardmax" as in compile; "hardmax-surrogate" (the older name) is still accepted
ATTENTION_CHOICES = ("softmax", "hardmax", "hardmax-surrogate")


def _require_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        fail("this command needs PyTorch: pip install 'exactformer[torch]'")


@contextmanager
def _bar(enabled: bool, total: int, label: str):
    """Progress whose description carries the current loss; yields ``update(**fields)``."""
    from ..progress import Progress

    with Progress(console, enabled=enabled) as bar:
        task = bar.add_task(label, total=total)

        def update(advance=1, description=None):
            bar.update(task, advance=advance, description=description or label)

        yield update


@app.command("train",
             short_help="Train a transformer on DATA with L + ε‖θ‖² (PyTorch).")
@user_errors
def train_cmd(
    data: Path = typer.Argument(..., metavar="DATA",
                                help="Dataset (.npz or .json, docs/design.md §2)."),
    out: Path = typer.Option(..., "-o", "--out", metavar="MODEL",
                             help="Model file to write (.safetensors)."),
    attention: str = typer.Option("hardmax", metavar="hardmax|softmax",
                                  help="softmax, or hardmax (a hardmax model trained through "
                                       "softmax at --temperature; also 'hardmax-surrogate')."),
    blocks: int = typer.Option(None, "--blocks", help="Number of blocks L (random: 6; "
                                                      "compiled: the compiled model's)."),
    width: int = typer.Option(None, "--width", help="FF width w (random: 4)."),
    rank: int = typer.Option(2, "--rank", help="Attention rank h (random init)."),
    temperature: float = typer.Option(1.0, help="Softmax / surrogate temperature τ."),
    epochs: int = typer.Option(2000, help="Full-batch epochs."),
    lr: float = typer.Option(None, "--lr", help="Adam learning rate, cosine schedule "
                                                "(default 1e-2 random, 1e-6 compiled)."),
    weight_decay: float = typer.Option(0.0, "--weight-decay",
                                       help="Tikhonov ε: the objective is L + ε‖θ‖²."),
    init: str = typer.Option("random", help="random, or compiled (start from the exact "
                                            "compiled model of DATA)."),
    seed: int = typer.Option(0, min=0, help="Seed of the initialisation (and of the compiler)."),
    log: Path = typer.Option(None, "--log", metavar="LOG", help="Loss curve, .csv or .json "
                                                                "(default: OUT with .log.csv)."),
    quiet: bool = QUIET,
):
    """Train a docs/design.md §1 transformer on DATA with loss L + ε‖θ‖² (Adam + cosine)."""
    if attention not in ATTENTION_CHOICES:
        fail(f"--attention must be hardmax or softmax, not {attention!r}")
    output_file(out, "-o", (".safetensors",), inputs=[data])
    _require_torch()
    from .. import training as tr

    if init not in ("random", "compiled"):
        fail(f"--init must be random or compiled, not {init!r}")
    for name, value in (("--epochs", epochs), ("--blocks", blocks), ("--width", width),
                        ("--rank", rank)):
        if value is not None and value < (0 if name == "--rank" else 1):
            fail(f"{name} must be positive, got {value}")
    # Adam steps ~lr per weight whatever the gradient's size, and a compiled model's point
    # moves have windows ~gap wide (docs/design.md §4): 1e-2 destroys it within three epochs
    lr = lr if lr is not None else (1e-6 if init == "compiled" else 1e-2)
    if not lr > 0:
        fail(f"--lr must be positive, got {lr}")
    if not weight_decay >= 0:
        fail(f"--weight-decay must be >= 0, got {weight_decay}")
    if not temperature > 0:
        fail(f"--temperature must be positive, got {temperature}")
    from ..classification import resolve_targets

    # a classification file: its classes' codes are the targets, as for compile --labels
    dataset = resolve_targets(load_dataset(data))
    mode = "softmax" if attention == "softmax" else "hardmax"
    # before any allocation (a compiled model has at least --blocks blocks of --width)
    default = (6, 4) if init == "random" else (1, 1)
    tr.check_memory(dataset.d, blocks or default[0], width or default[1], rank, dataset)
    if init == "compiled":
        net, _ = tr.compiled_model(dataset, seed=seed)
        if blocks is not None or width is not None:
            ffw = max((b.ff.width for b in net.blocks if b.ff is not None), default=1)
            tr.check_memory(dataset.d, max(blocks or 0, net.n_blocks), max(width or 0, ffw), 2,
                            dataset)  # embed's identity blocks have rank 2
            net = tr.embed(net, blocks, width)
        net.attention, net.temperature = mode, temperature
    else:
        net = tr.random_model(dataset.d, blocks or default[0], width or default[1], rank, mode,
                              temperature, seed)
    if dataset.labels is not None:  # predict reads the classes from the model's info
        net.info.update(codes=np.asarray(dataset.codes).tolist(),
                        classes=np.asarray(dataset.classes).tolist())
    log = log or out.with_suffix(".log.csv")
    output_file(log, "--log", (".csv", ".json"), inputs=[data, out])
    cfg = tr.TrainConfig(epochs=epochs, lr=lr, weight_decay=weight_decay,
                         surrogate=temperature, seed=seed)
    net.info.update(trained=json.dumps({"epochs": epochs, "lr": lr, "weight_decay":
                                        weight_decay, "attention": attention}))
    with _bar(not quiet, epochs, "training") as update:
        def progress(epoch, loss, penalty):
            update(description=f"loss {loss:.3e}  penalty {penalty:.3e}")

        res = tr.train(net, dataset, cfg, checkpoint=out, log=log, progress=progress)
    if not quiet:
        best = res.best()
        state = "interrupted (Ctrl-C), saved" if res.interrupted else "done"
        console.print(f"{state}: {len(res.loss)} epochs, loss {res.final_loss:.6g}, "
                      f"penalty ε‖θ‖² {res.final_penalty:.6g} (best objective "
                      f"{best.get('objective', float('nan')):.6g} at epoch "
                      f"{best.get('epoch', '-')}) → {out}, log {log}", highlight=False)


@experiment_app.command("tikhonov",
                        short_help="Minimal Tikhonov loss against ε‖θ_exact‖² (paper Fig. 1).")
@user_errors
def tikhonov_cmd(
    out: Path = typer.Option(..., "--out", metavar="DIR",
                             help="Directory for the figures and results.json."),
    quick: bool = typer.Option(False, "--quick", help="ε ∈ {1e-1, 1e-2, 1e-3}, 500 epochs."),
    seed: int = typer.Option(0, min=0,
                             help="Seed of the data, the compiler and the initialisation."),
    epochs: int = typer.Option(None, help="Epochs per ε (default 500 quick, 3000 full)."),
    quiet: bool = QUIET,
):
    """The paper's Fig. 1: minimal Tikhonov-regularised loss vs ε, against ε‖θ_exact‖²."""
    _require_torch()
    from ..experiments import tikhonov

    eps = tikhonov.QUICK_EPS if quick else tikhonov.FULL_EPS
    n_epochs = epochs or (500 if quick else 3000)
    if n_epochs < 1:
        fail(f"--epochs must be positive, got {n_epochs}")
    output_directory(out)
    with _bar(not quiet, len(eps) * n_epochs, "tikhonov") as update:
        def progress(k, epoch, res):
            update(description=f"ε = {eps[k]:g}  J {res.loss[-1] + res.penalty[-1]:.3e}")

        r = tikhonov.run(out, quick=quick, seed=seed, epochs=n_epochs, progress=progress)
    console.print(f"slope {r['slope']:.3f}; ‖θ_exact‖² = {r['theta_exact_sq_norm']:.4g}; "
                  f"minimal loss {r['minimal_loss']}; compile {r['compile_seconds']:.3f} s vs "
                  f"train {r['train_seconds']:.1f} s (×{r['train_over_compile_ratio']:.0f}); "
                  f"{r['wall_time_s']:.1f} s → {out}", highlight=False)

"""``exactformer tdtf fit|forecast`` and ``exactformer experiment tdtf`` (issue 18).

Thin wrappers around :mod:`exactformer.tdtf` and :mod:`exactformer.experiments.tdtf`
(docs/tdtf.md). All need PyTorch; without it, and on any bad input, one line and exit 2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from ..cli import (
    QUIET,
    Typer,
    app,
    console,
    experiment_app,
    fail,
    output_directory,
    output_file,
    refuse_swapped,
    user_errors,
)
from .training import _require_torch  # one line and exit 2 without PyTorch

tdtf_app = Typer(help="Time-delayed transformer (TD-TF) on your own time series.",
                       no_args_is_help=True)
app.add_typer(tdtf_app, name="tdtf")


def _say(text: str) -> None:
    console.print(text, highlight=False, markup=False, soft_wrap=True)


@tdtf_app.command("fit",
                  short_help="Train a TD-TF on a time series (PyTorch).")
@user_errors
def fit_cmd(
    data: Path = typer.Argument(..., metavar="SERIES",
                                help="Series: .npz with array x (T, d), or .csv (one row "
                                     "per time step, optional header)."),
    out: Path = typer.Option(..., "-o", "--out", help="Model file to write (.safetensors)."),
    window: int = typer.Option(8, "--window", "-K", help="States per delay window K."),
    epochs: int = typer.Option(200, help="Largest number of epochs (early stopping)."),
    rollout_steps: int = typer.Option(1, "--rollout-steps",
                                      help="Train on the error of H autoregressive steps."),
    activation: str = typer.Option("gelu", help="gelu, tanh or linear."),
    val_fraction: float = typer.Option(0.2, "--val-fraction",
                                       help="Last fraction of the series used for early "
                                            "stopping."),
    lr: float = typer.Option(3e-3, "--lr", help="Adam learning rate."),
    seed: int = typer.Option(0, min=0, help="Seed of initialisation and shuffles."),
    quiet: bool = QUIET,
):
    """Train a TD-TF on DATA; print its validation one-step error next to TD-DMD's."""
    _require_torch()
    from ..tdtf import TDDMD, TDTF, TDTFConfig, delay_windows, load_series

    output_file(out, "-o", (".safetensors",), inputs=[data])
    x = load_series(data)
    cfg = TDTFConfig(window=window, epochs=epochs, rollout_steps=rollout_steps,
                     activation=activation, val_fraction=val_fraction, lr=lr, seed=seed)
    cfg.check()

    def progress(epoch, train, val):
        if not quiet and (epoch % 10 == 0):
            _say(f"epoch {epoch}: train {train:.4g}, validation {val:.4g}")

    model = TDTF.fit(x, cfg, progress=progress)
    model.info.update(source=str(data), rows=int(len(x)))
    model.save(out)
    cut = int(round(len(x) * (1 - val_fraction)))
    val = x[max(0, cut - window):]
    W, Y = delay_windows(val, window)
    scale = float(np.sqrt((val ** 2).sum(axis=1).mean())) or 1.0

    def err(m):
        return float(np.sqrt(((m.predict(W) - Y) ** 2).sum(axis=1).mean()) / scale)

    line = f"TD-TF one-step error on the validation part {err(model):.4g}"
    try:
        line += f" (TD-DMD, same window and training rows: {err(TDDMD.fit(x[:cut], window)):.4g})"
    except Exception:  # too few rows for the full-rank least squares: skip the comparison
        pass
    log = model.log
    _say(f"{line}; {len(log.val)} epochs, best {log.best_epoch}, {model.n_params} parameters, "
         f"{log.seconds:.1f} s → {out}")


@tdtf_app.command("forecast",
                  short_help="Roll a TD-TF model forward from a series' end.")
@user_errors
def forecast_cmd(
    model_path: Path = typer.Argument(..., metavar="MODEL", help="A model from `tdtf fit`."),
    data: Path = typer.Argument(..., metavar="SERIES",
                                help="History (.npz x or .csv); its last K rows start "
                                     "the rollout."),
    steps: int = typer.Option(..., "--steps", "-n", help="Number of states to forecast."),
    out: Path = typer.Option(..., "-o", "--out", help="Forecast (.npz with x, or .csv)."),
    quiet: bool = QUIET,
):
    """Autoregressive rollout of MODEL from the end of DATA; writes (steps, d)."""
    _require_torch()
    from ..tdtf import TDTF, load_series, save_series

    if steps < 1:
        fail(f"--steps must be at least 1, got {steps}")
    output_file(out, "-o", (".npz", ".csv"), inputs=[data, model_path])
    refuse_swapped(model_path, data, (".csv", ".npz"), "series", "SERIES")
    model = TDTF.load(model_path)
    x = load_series(data)
    pred = model.forecast(x, steps)
    if not np.isfinite(pred).all():
        fail(f"the rollout left the finite range after {int(np.isfinite(pred).all(axis=1).sum())}"
             " steps; nothing written", 1)
    save_series(pred, out)
    _say(f"wrote {steps} forecast steps of d = {pred.shape[1]} to {out}")


@experiment_app.command("tdtf",
                        short_help="TD-TF against TD-DMD on generated systems (PyTorch).")
@user_errors
def experiment_cmd(
    out: Path = typer.Option(..., "--out", help="Directory for results.json, figures, README."),
    quick: bool = typer.Option(False, "--quick", help="One seed, small data (< 1 min)."),
    seeds: str = typer.Option(None, "--seeds", help="Comma-separated seeds (default 0,1,2; "
                                                    "quick: 0)."),
    systems: str = typer.Option(None, "--systems", help="Comma-separated subset of "
                                                        "near_linear,lorenz,reaction_diffusion."),
    ablation: bool = typer.Option(False, "--ablation", help="Instead: the Lorenz ablation "
                                                            "(ablation.json, ablation.md)."),
    quiet: bool = QUIET,
):
    """TD-TF vs TD-DMD (and PyDMD HankelDMD) on generated near-linear, Lorenz '63 and
    λ–ω reaction–diffusion data: errors, valid prediction time, attractor statistics."""
    _require_torch()
    from ..experiments import tdtf as exp

    try:
        seed_list = None if seeds is None else [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        fail(f"--seeds must be comma-separated integers, got {seeds!r}")
    chosen = exp.SYSTEMS if systems is None else tuple(s.strip() for s in systems.split(","))
    unknown = [s for s in chosen if s not in exp.SYSTEMS]
    if unknown:
        fail(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(exp.SYSTEMS)}")
    output_directory(out)
    if ablation:
        a = exp.ablation(out, quick=quick, seeds=seed_list or (0,), log=_say)
        _say(f"{a['wall_s']:.0f} s wall, {a['cpu_s']:.0f} s CPU → {out / 'ablation.md'}")
        return
    r = exp.run(out, quick=quick, seeds=seed_list, systems=chosen, log=_say)
    from ..experiments.tdtf_report import claims_text

    for line in claims_text(r):
        _say(line)
    _say(f"{r['wall_s']:.0f} s wall, {r['cpu_s']:.0f} s CPU → {out}")

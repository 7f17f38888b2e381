"""Interpretability commands: export (ONNX, TransformerLens, checked before writing) and
explain (the mechanism annotations of a compiled model)."""

from __future__ import annotations

from pathlib import Path

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


@app.command("export",
             short_help="Export MODEL to ONNX or TransformerLens, checked.")
@user_errors
def export_cmd(
    model_path: Path = typer.Argument(..., metavar="MODEL", help="Model file (.safetensors)."),
    to: str = typer.Option(..., "--to", metavar="onnx|transformer-lens",
                           help="Format to write."),
    out: Path = typer.Option(None, "-o", "--out", metavar="OUT",
                             help="File to write (default: MODEL with .onnx / .pt)."),
    data: Path = typer.Option(None, "--data", metavar="DATA",
                              help="Dataset to check on (default: a seeded random probe)."),
    seed: int = typer.Option(0, min=0, help="Seed of the random probe."),
    quiet: bool = QUIET,
):
    """Convert MODEL, check its outputs against the numpy model (≤ 1e-12 relative, same
    hardmax argmax sets), then write it; docs/export.md."""
    from ..dataset import load_dataset
    from ..export import SUFFIX, TARGETS, export

    if to not in TARGETS:
        fail(f"--to must be one of {', '.join(TARGETS)}, not {to!r}")
    out = output_file(out or model_path.with_suffix(SUFFIX[to]), "-o", (SUFFIX[to],),
                      inputs=[model_path, data])
    dataset = None if data is None else load_dataset(data, require_targets=False)
    report = export(model_path, to, out, dataset, seed)
    console.print(report.summary(), highlight=False, soft_wrap=True)


@app.command("explain",
             short_help="Leaders, collapse and final blocks of MODEL on DATA.")
@user_errors
def explain_cmd(
    model_path: Path = typer.Argument(..., metavar="MODEL", help="Model file (.safetensors)."),
    data: Path = typer.Argument(..., metavar="DATA", help="The dataset it was compiled from."),
    out: Path = typer.Option(None, "-o", "--out", metavar="FIG", help="Figure to write "
                             "(default: MODEL with .mechanism.png)."),
    sequences: int = typer.Option(10, min=0, help="Sequences to print."),
    quiet: bool = QUIET,
):
    """The mechanism of a compiled MODEL on DATA: block roles, each sequence's leaders and
    destinations, the block where each token's value becomes final (printed and plotted)."""
    from ..dataset import load_dataset
    from ..mechanism import annotations, describe, plot
    from ..model import Transformer

    path = output_file(out or model_path.with_suffix(".mechanism.png"), "-o", (".png",),
                       inputs=[model_path, data])
    model = Transformer.load(model_path)
    dataset = load_dataset(data, require_targets=False)
    try:
        mech = annotations(model, dataset.inputs)
    except ValueError as exc:
        fail(f"{model_path}: {exc}")
    if len(mech["leaders"]) != dataset.n_sequences:
        fail(f"{data} has {dataset.n_sequences} sequences, the model was compiled from "
             f"{len(mech['leaders'])}")
    for line in describe(model, mech, sequences):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    plot(model, mech, path)
    console.print(f"figure: {path}", style="dim")


@experiment_app.command("ground-truth",
                        short_help="Interpretability tools scored against the mechanism.")
@user_errors
def ground_truth_cmd(
    out: Path = typer.Option(..., "--out", metavar="DIR",
                             help="Directory for results.json and the figure."),
    quick: bool = typer.Option(False, "--quick", help="Smaller datasets (a pipeline check)."),
    seed: int = typer.Option(0, min=0, help="Seed of the datasets."),
    quiet: bool = QUIET,
):
    """Score attention inspection and activation patching against the compiled mechanism:
    precision/recall of leader recovery, rank of the collapse block (needs the torch extra)."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        fail("experiment ground-truth needs torch: pip install 'exactformer[torch]'")
    from ..experiments.ground_truth import run

    output_directory(out)
    results = run(out, quick=quick, seed=seed)
    for name, r in results.items():
        ai, ap = r["attention_inspection"], r["activation_patching"]
        console.print(f"{name}: {r['blocks']} blocks, collapse {r['collapse_block']}; "
                      f"attention: rank {ai['collapse_rank']}/{ai['of_blocks']}, leaders P "
                      f"{ai['precision']:.2f} R {ai['recall']:.2f}; patching: rank "
                      f"{ap['collapse_rank']}/{ap['of_blocks']}, leaders P "
                      f"{ap['precision']:.2f} R {ap['recall']:.2f}", highlight=False,
                      soft_wrap=True)
    console.print(f"wrote {out / 'results.json'} and {out / 'ground_truth.png'}")

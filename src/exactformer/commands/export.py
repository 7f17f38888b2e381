"""Export command: a model to ONNX or TransformerLens, checked before it is written."""

from __future__ import annotations

from pathlib import Path

import typer

from ..cli import app, console, fail, user_errors


@app.command("export")
@user_errors
def export_cmd(
    model_path: Path = typer.Argument(..., metavar="MODEL", help="Model file (.safetensors)."),
    to: str = typer.Option(..., "--to", help="onnx or transformer-lens."),
    out: Path = typer.Option(None, "-o", "--out",
                             help="File to write (default: MODEL with .onnx / .pt)."),
    data: Path = typer.Option(None, "--data",
                              help="Dataset to check on (default: a seeded random probe)."),
    seed: int = typer.Option(0, help="Seed of the random probe."),
):
    """Convert MODEL, check its outputs against the numpy model (≤ 1e-12 relative, same
    hardmax argmax sets), then write it; docs/export.md."""
    from ..dataset import load_dataset
    from ..export import SUFFIX, TARGETS, export

    if to not in TARGETS:
        fail(f"--to must be one of {', '.join(TARGETS)}, not {to!r}")
    dataset = None if data is None else load_dataset(data, require_targets=False)
    report = export(model_path, to, out or model_path.with_suffix(SUFFIX[to]), dataset, seed)
    console.print(report.summary(), highlight=False, soft_wrap=True)

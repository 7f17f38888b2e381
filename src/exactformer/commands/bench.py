"""``exactformer bench``: the performance grid of issue 6 (see :mod:`exactformer.bench`)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..cli import QUIET, app, console, output_directory, user_errors


@app.command("bench",
             short_help="Time compile and verify over a grid of sizes.")
@user_errors
def bench_cmd(
    out: Path = typer.Option(..., "--out", metavar="DIR",
                             help="Directory for bench.json, bench.md, bench.png."),
    quick: bool = typer.Option(False, "--quick", help="Tiny grid, well under a minute."),
    repeat: int = typer.Option(None, "--repeat", min=1,
                               help="Runs per case, median reported (default 3, quick 1)."),
    only: str = typer.Option(None, "--only", help="Only cases whose key contains this text."),
    learn: bool = typer.Option(True, "--learn/--no-learn", help="Compile-vs-learn row."),
    quiet: bool = QUIET,
):
    """Time compile and verify (whole CLI processes) over a grid of sizes; write a report."""
    from ..bench import run_bench

    output_directory(out)

    result = run_bench(out, quick=quick, repeat=repeat, only=only, learn=learn,
                       log=lambda s: console.print(s, highlight=False, markup=False))
    failed = [r["key"] for r in result["rows"] if not r["ok"]]
    console.print(f"wrote {out / 'bench.json'}, {out / 'bench.md'}, {out / 'bench.png'} "
                  f"({result['seconds']:.0f} s)", highlight=False)
    if failed:
        console.print(f"cases that failed: {', '.join(failed)}", style="red", highlight=False)
        raise typer.Exit(1)

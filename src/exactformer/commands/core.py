"""Core commands: compile, verify, info, run, demo."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import typer
from rich.table import Table
from rich.text import Text

from ..cli import (
    QUIET,
    app,
    console,
    emit,
    err_console,
    fail,
    output_directory,
    output_file,
    printable,
    refuse_swapped,
    user_errors,
)
from ..dataset import Dataset, load_dataset, save_dataset

DATA = typer.Argument(..., metavar="DATA", help="Dataset (.npz or .json, docs/design.md §2).")
MODEL = typer.Argument(..., metavar="MODEL", help="Model file (.safetensors).")
ATTENTION = ("hardmax", "softmax")
MODEL_SUFFIXES = (".safetensors",)
DATA_SUFFIXES = (".npz", ".json")


def _attention(value: str) -> str:
    if value not in ATTENTION:
        fail(f"--attention must be hardmax or softmax, not {value!r}")
    return value


def _load_model(path: Path, data: Path | None = None):
    """Read MODEL; a dataset given in its place (swapped arguments) is named as such."""
    from ..model import Transformer

    refuse_swapped(path, data, DATA_SUFFIXES, "dataset", "DATA")
    return Transformer.load(path)


def _progress(enabled: bool, where=None):
    """Progress of the compiler's stages: a bar on a terminal, plain lines in a log."""
    from ..progress import Progress

    return Progress(where or console, enabled=enabled)


def _summary(model, dataset: Dataset, report, seconds: float, title: str) -> Table:
    from ..compiler import paper_bound, strict_bound

    N, sm = dataset.n_sequences, int(dataset.output_lengths.sum())
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("sequences N", str(N))
    t.add_row("read-out Σm", str(sm))
    t.add_row("tokens / d", f"{dataset.n_tokens} / {dataset.d}")
    t.add_row("attention", model.attention + (f" (τ = {model.temperature:.6g})"
                                              if model.attention == "softmax" else ""))
    t.add_row("mode", str(model.info.get("mode", "")))
    t.add_row("blocks", f"{model.n_blocks}  (paper: {paper_bound(dataset, model.attention)} = "
              f"2Σm+{'2N+1' if model.attention == 'hardmax' else '3N'}; our strict bound: "
              f"{strict_bound(dataset, model.attention)})")
    t.add_row("FF width / attention rank", f"{model.width} / {model.rank}")
    t.add_row("parameters", f"{model.n_params:,}")
    if "weight_bits" in model.info:  # exact mode (docs/exact.md)
        t.add_row("bit lengths", f"weights ≤ {model.info['weight_bits']}, token states ≤ "
                  f"{model.info['state_bits']} (largest numerator or denominator)")
    kind = {"exact rational": "exact rational arithmetic", "ball arithmetic":
            "certified in ball arithmetic", "interval": "float64, certified in interval "
            "arithmetic"}.get(report.method, "float64")
    t.add_row("verification", Text.assemble(("PASS", "green") if report.passed else
                                            ("FAIL", "red"), f" ({kind})"))
    if report.method == "interval":
        t.add_row("certified δ", f"{report.max_delta:.3g} abs, "
                  f"{report.max_delta / dataset.scale:.3g} rel (every output to its target)")
    if "float_realisation" in model.info:
        t.add_row("float64 tensors", "certified as a float model" if model.info[
            "float_realisation"] else "NOT a float realisation (run, twin and info refuse them)")
    if report.accuracy is not None:
        C = len(np.unique(dataset.labels))
        t.add_row("classification", f"accuracy {100 * report.accuracy:.2f} %, {C} classes "
                  f"(bound N + C + 1 = {N + C + 1} + splits)")
    t.add_row("max error", f"{report.max_abs_error:.3g} abs, {report.max_rel_error:.3g} rel")
    t.add_row("min score margin", _margin(report.min_margin))
    t.add_row("time", f"{seconds:.2f} s")
    return t


def _margin(margin: float) -> str:
    """The smallest attention score margin, or why there is none."""
    if np.isnan(margin):  # exact softmax: the certificate works on intervals, not scores
        return "not measured (the ball-arithmetic certificate runs no float pass)"
    return "none (no attention layer)" if np.isinf(margin) else f"{margin:.3g}"


@app.command("compile",
             short_help="Compile DATA into a verified model file.")
@user_errors
def compile_cmd(
    data: Path = DATA,
    out: Path = typer.Option(..., "-o", "--out", metavar="MODEL",
                             help="Model file to write (.safetensors)."),
    attention: str = typer.Option("hardmax", metavar="hardmax|softmax",
                                  help="Attention of the model."),
    compact: bool = typer.Option(False, "--compact", help="No width limit: a handful of blocks."),
    exact: bool = typer.Option(False, "--exact", help="Rational weights, proven exact."),
    seed: int = typer.Option(0, min=0, help="Seed of every generic draw (≥ 0)."),
    labels: bool = typer.Option(False, "--labels",
                                help="Classification: DATA carries `labels` (and optional "
                                     "`codes`); read-outs become class code vectors."),
    quiet: bool = QUIET,
):
    """Compile DATA into a transformer, verify it, then write it to MODEL (-o)."""
    import exactformer

    _attention(attention)
    output_file(out, "-o", MODEL_SUFFIXES, inputs=[data])
    dataset = load_dataset(data)
    if labels and dataset.labels is None:
        fail(f"{data}: --labels given but the file reads as a dataset with outputs (a "
             "classification file carries 'labels' instead of 'outputs')")
    from ..classification import resolve_targets

    dataset = resolve_targets(dataset)
    t0 = time.perf_counter()
    with _progress(not quiet and dataset.n_tokens > 20_000) as progress:
        model = exactformer.compile(dataset, attention=attention, compact=compact, exact=exact,
                                    seed=seed, progress=progress)  # verified: never a wrong model
    report = model.report
    seconds = time.perf_counter() - t0
    model.save(out)
    if not quiet:
        console.print(_summary(model, dataset, report, seconds, f"compiled {data} → {out}"))


from ..tolerances import MAX_VERIFY_TOL as MAX_TOL  # noqa: E402  (docs/limits.md)
from ..tolerances import VERIFY_TOL as DEFAULT_TOL  # noqa: E402


@app.command("verify",
             short_help="Prove that MODEL reproduces DATA; exit 1 if not.")
@user_errors
def verify_cmd(
    model_path: Path = MODEL,
    data: Path = DATA,
    exact: bool = typer.Option(None, "--exact/--float",
                               help="Rational arithmetic (default: when the model is exact)."),
    tol: float = typer.Option(DEFAULT_TOL, metavar="TOL", help="Float mode: largest relative error "
                              f"that passes, 0 … {MAX_TOL:g}."),
    certify: bool = typer.Option(True, "--certify/--no-certify",
                                 help="Float mode: prove the outputs in interval arithmetic "
                                      "(docs/verification.md), or only run the float check."),
    json_output: bool = typer.Option(False, "--json",
                                     help="Print one JSON object on stdout and nothing else "
                                          "(its schema: docs/verification.md)."),
    quiet: bool = QUIET,
):
    """Re-run MODEL on DATA and check every sequence; exit 1 if not exact."""
    import exactformer

    if not 0 <= tol <= MAX_TOL:  # also NaN: a tolerance of 1e300 would pass any model
        fail(f"--tol must be a relative error between 0 and {MAX_TOL:g}, got {tol!r}")
    t0 = time.perf_counter()
    model = _load_model(model_path, data)
    dataset = load_dataset(data)
    if dataset.labels is not None and model.info.get("codes") is None \
            and not any(len(y) for y in dataset.targets):
        fail(f"{data} holds labels but {model_path} is not a classification model (no class "
             "codes): verify it against data with outputs, or compile the labels with --labels")
    if dataset.d != model.d:
        fail(f"{data}: tokens have d = {dataset.d} but {model_path} works on d = {model.d}")
    t1 = time.perf_counter()
    exact_mode = model.exact if exact is None else exact
    if exact_mode and tol != DEFAULT_TOL:
        console.print("note: --tol is for float mode; exact mode requires error 0",
                      highlight=False)
    slow = exact_mode and dataset.n_tokens > 20_000
    # exact mode: long runs show progress (on stderr with --json: stdout is the object alone)
    with _progress(slow and not quiet, err_console if json_output else None) as progress:
        report = exactformer.verify(model, dataset, exact=exact, tol=tol, certify=certify,
                                    progress=progress)
    t2 = time.perf_counter()
    if json_output:
        from .verify_json import document, dumps

        seconds = {"load": t1 - t0, "check": t2 - t1, "total": t2 - t0}
        emit(dumps(document(report, model, dataset, model_path, data, seconds)))
    console.print(report.summary(), highlight=False)
    if report.certificate:
        console.print(f"certificate: {report.certificate}", highlight=False)
    if report.note:
        console.print(f"note: {report.note}", highlight=False)
    console.print(f"checked in {t2 - t1:.2f} s", style="dim")
    if not report.passed:
        bad = np.flatnonzero(~(report.prefix_ok & report.set_ok))
        console.print(f"wrong sequences: {bad[:20].tolist()}{' …' if len(bad) > 20 else ''}")
        raise typer.Exit(1)


def _recorded_claim(info: dict) -> str:
    """What the compiler proved, as recorded in the file (info shows it, verify re-proves it)."""
    method = info.get("verified_by")
    if not method or not isinstance(method, str):
        return ""
    text = {"interval": "certified in interval arithmetic", "exact rational":
            "exact rational arithmetic", "ball arithmetic": "ball arithmetic"}.get(method, method)
    if method == "interval" and type(info.get("certified_delta_rel")) in (int, float):
        text += f", δ ≤ {float(info['certified_delta_rel']):.3g} × scale"
    return _shown(text) + " (recorded in the file, not re-proved: run `exactformer verify`)"


def _shown(value, limit: int = 120) -> str:
    """A metadata value as one printable line, at most ``limit`` characters (files are input)."""
    import json

    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = printable(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@app.command("info",
             short_help="Metadata and the role of every block of MODEL.")
@user_errors
def info_cmd(model_path: Path = MODEL, quiet: bool = QUIET):
    """Metadata, size and the role of every block of MODEL (-q: only check that it loads)."""
    from ..mechanism import block_runs

    model = _load_model(model_path)
    t = Table(title=str(model_path), show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("format", "exactformer/1" + (" (with rational weights)" if model.exact else ""))
    t.add_row("attention", model.attention)
    if model.attention == "softmax":
        t.add_row("temperature τ", repr(model.temperature))
    t.add_row("d", str(model.d))
    t.add_row("blocks", str(model.n_blocks))
    t.add_row("FF width / attention rank", f"{model.width} / {model.rank}")
    t.add_row("parameters", f"{model.n_params:,}")
    if not model.has_float_realisation:
        t.add_row("float64 tensors", "no float realisation: they do not certify as a float "
                  "model; run, predict and the PyTorch twin refuse them")
    claim = _recorded_claim(model.info)
    if claim:
        t.add_row("verified at compile time", Text(claim))
    for key, value in list(model.info.items())[:50]:
        leaks = value if key == "softmax_off_argmax_weight" and isinstance(value, dict) else {}
        if leaks and all(type(w) in (int, float) for w in leaks.values()):
            for block, weight in list(leaks.items())[:20]:
                t.add_row(Text(f"softmax layer {_shown(block, 20)}"),
                          f"worst weight off the argmax set {weight:.3g}")
        else:
            t.add_row(Text(_shown(key, 40)), Text(_shown(value)))
    console.print(t)
    blocks = Table(title="blocks", title_justify="left")
    for col in ("blocks", "kind", "FF width", "attention rank"):
        blocks.add_column(col)
    for first, last, kind in block_runs(model):
        group = model.blocks[first:last + 1]
        blocks.add_row(f"{first}" if first == last else f"{first}–{last}", Text(_shown(kind, 60)),
                       _span([b.ff.width for b in group if b.ff is not None]),
                       _span([b.sa.rank for b in group if b.sa is not None]))
    console.print(blocks)


def _span(values: list[int]) -> str:
    """"-" for no layer, "4" when all agree, "2–4" when the blocks of a group differ."""
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}–{hi}"


@app.command("run",
             short_help="Write MODEL's outputs on every sequence of DATA.")
@user_errors
def run_cmd(
    model_path: Path = MODEL,
    data: Path = typer.Argument(..., metavar="DATA",
                                help="Inputs (.npz or .json); targets are not needed."),
    out: Path = typer.Option(..., "-o", "--out", metavar="OUT",
                             help="Where to write the outputs (.npz or .json)."),
    quiet: bool = QUIET,
):
    """Run MODEL on every input sequence of DATA and write the outputs (full length)."""
    from ..numeric import to_float

    output_file(out, "-o", DATA_SUFFIXES, inputs=[data, model_path])
    model = _load_model(model_path, data)
    dataset = load_dataset(data, require_targets=False)
    if dataset.d != model.d:
        fail(f"{data}: tokens have d = {dataset.d} but the model works on d = {model.d}")
    outputs = [to_float(y) for y in _runnable(model).run(dataset.inputs)]
    save_dataset(Dataset(dataset.inputs, outputs), out)
    console.print(f"wrote the outputs of {len(outputs)} sequences to {out}")


@app.command("demo",
             short_help="Compile and draw a three-sequence example.")
@user_errors
def demo_cmd(
    out: Path = typer.Option(Path("exactformer-demo"), "--out", metavar="DIR",
                             help="Directory for the files."),
    attention: str = typer.Option("hardmax", metavar="hardmax|softmax",
                                  help="Attention of the model."),
    quiet: bool = QUIET,
):
    """Compile the embedded 3-sequence dataset in exact mode and draw its trajectories."""
    import exactformer

    from ..demo import demo_dataset
    from ..figures import plot_trajectories
    from ..numeric import to_float

    _attention(attention)
    output_directory(out)
    dataset = demo_dataset()
    t0 = time.perf_counter()
    model = exactformer.compile(dataset, attention=attention, exact=True)
    report = model.report  # compile verified it (exact: error 0, or the ball certificate)
    seconds = time.perf_counter() - t0
    console.print(Text.assemble(("exactformer demo", "bold"), ": 3 sequences in R², target "
                                "lengths 1, 1, 2 — a split (sequences 0 and 2 share their mean), "
                                "a satellite (sequence 2's second read-out) and a shared target "
                                "(1, 0)."))
    console.print(_summary(model, dataset, report, seconds, "compiled the demo dataset"))
    save_dataset(dataset, out / "demo.json")
    model.save(out / "demo.safetensors")
    figs = plot_trajectories(model, dataset, out)
    if attention == "softmax":
        from ..figures import plot_collapse_contrast

        # the saved model itself (its τ), against the hardmax model of the same exact draws
        hard = exactformer.compile(dataset, attention="hardmax", exact=True)
        figs.append(plot_collapse_contrast(hard.as_float(), model.as_float(), dataset, out))
    if report.certificate:
        console.print(f"certificate: {report.certificate}")
    outputs = report.outputs  # exact outputs (softmax: the certificate's, exp is not rational)
    for j, (x, y) in enumerate(zip(dataset.inputs, outputs)):
        m = len(dataset.targets[j])
        shown = ", ".join(f"({a:g}, {b:g})" for a, b in to_float(y[:m]))
        console.print(f"  sequence {j}: {len(x)} tokens → read-out {shown}", highlight=False)
    console.print("wrote " + ", ".join(str(p) for p in [out / "demo.json",
                                                         out / "demo.safetensors", *figs]))
    console.print(f"try: exactformer verify {out / 'demo.safetensors'} {out / 'demo.json'}")


def _runnable(model):
    """The model to run in float64 or rationals (softmax has no rational forward pass)."""
    if model.exact and model.attention == "softmax":  # exp has no rational forward pass
        return model.float_model()
    return model


@app.command("predict",
             short_help="The class of every sequence of DATA (--labels models).")
@user_errors
def predict_cmd(
    model_path: Path = typer.Argument(..., metavar="MODEL", help="A model compiled with --labels."),
    data: Path = typer.Argument(..., metavar="DATA",
                                help="Inputs (.npz or .json); labels are not needed."),
    out: Path = typer.Option(None, "-o", "--out", metavar="OUT",
                             help="Write the classes here (.json or .npz)."),
    quiet: bool = QUIET,
):
    """Predict the class of every sequence of DATA (the code nearest to its read-out)."""
    import json

    from ..classification import class_index, predict

    if out is not None:
        output_file(out, "-o", DATA_SUFFIXES, inputs=[data, model_path])
    model = _load_model(model_path, data)
    codes = model.info.get("codes")
    if codes is None:
        fail(f"{model_path}: not a classification model (no class codes in its metadata)")
    names = np.asarray(model.info.get("classes", list(range(len(codes)))))
    dataset = load_dataset(data, require_targets=False)
    if dataset.d != model.d:
        fail(f"{data}: tokens have d = {dataset.d} but the model works on d = {model.d}")
    index, dist = predict(_runnable(model), dataset.inputs, codes, return_distance=True)
    classes = names[index]
    if out is None:
        for j, c in enumerate(classes.tolist()):
            console.print(f"sequence {j}: class {printable(c)}", highlight=False)
    else:
        from ..dataset import write_atomic

        if out.suffix.lower() == ".npz":
            def write(tmp):
                with open(tmp, "wb") as fh:
                    np.savez(fh, classes=classes)
        else:
            def write(tmp):
                Path(tmp).write_text(json.dumps(classes.tolist()))
        write_atomic(out, write)
        console.print(f"wrote {len(classes)} classes to {out}", highlight=False)
    far = np.flatnonzero(~(dist <= 1e-6))
    if len(far):
        console.print(f"note: {len(far)} of {len(classes)} sequences read out none of the class "
                      f"codes (e.g. sequence {int(far[0])}, {dist[far[0]]:.3g} × scale away): "
                      "their nearest code is reported", style="dim", highlight=False)
    if dataset.labels is not None:
        try:
            truth = class_index(np.asarray(dataset.labels), names)
            acc = f"{100 * float(np.mean(index == truth)):.2f} %"
        except Exception as exc:  # a label the model does not know
            acc = f"not computed ({exc})"
        console.print(f"accuracy against the file's labels: {acc}", highlight=False)

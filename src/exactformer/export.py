"""Export a model to ONNX or TransformerLens, checked before the file is written (issue 16).

``export(model, to="onnx" | "transformer-lens", out=..., data=...)`` converts the model,
runs the converted one on the data (or on a seeded random probe when no data is given),
and writes the file only if every output equals the numpy model's to ``REL_TOL`` relative
to the largest absolute output, and every hardmax layer picks the same argmax sets.
Otherwise it raises :class:`ExportError` naming the first block that departs and why.

Hardmax in another runtime: copies of a token get scores that two runtimes may round
differently, so an exported hardmax layer treats every key within ``tol · max|score|`` of
the row's top as tied, with ``tol`` a quarter of the layer's smallest score margin on the
checking inputs (the margin ``verify`` certifies: distinct tokens are at least that far
below the top), capped at 1e-9; 0 (exact equality, as numpy) when the margin is below
1e-11. docs/export.md describes the targets and what they cannot represent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ExactformerError
from .model import Block, Transformer

__all__ = ["export", "ExportError", "ExportReport", "MissingExtraError", "TARGETS", "REL_TOL"]

TARGETS = ("onnx", "transformer-lens")
SUFFIX = {"onnx": ".onnx", "transformer-lens": ".pt"}
REL_TOL = 1e-12
TIE_TOL_CAP = 1e-9
MIN_MARGIN_FOR_TOL = 1e-11
EXTRAS = {"onnx": ("onnx", "onnxruntime"), "transformer-lens": ("transformer_lens",)}


class ExportError(ExactformerError):
    """The target cannot represent the model exactly (one line naming the block)."""


class MissingExtraError(ExactformerError):
    """An optional dependency is not installed (the line names the extra)."""


@dataclass
class ExportReport:
    target: str
    path: Path | None
    max_rel_error: float
    checked_on: str  # "data (N sequences)" or "random probe (N sequences, seed s)"
    n_sequences: int
    tie_tolerances: dict = field(default_factory=dict)  # block → relative tie tolerance
    n_params: int = 0  # the model's parameters
    n_params_exported: int = 0  # the exported model's (TransformerLens pads)
    seconds: float = 0.0

    def summary(self) -> str:
        pad = ""
        if self.n_params_exported != self.n_params:
            pad = (f", {self.n_params_exported:,} parameters exported for {self.n_params:,} "
                   f"({self.n_params_exported / max(1, self.n_params):.2f}×)")
        where = f" to {self.path}" if self.path else ""
        return (f"exported{where} ({self.target}): max rel error {self.max_rel_error:.3g} "
                f"≤ {REL_TOL:g} on {self.checked_on}{pad}, {self.seconds:.2f} s")


def require(target: str) -> None:
    """Import the target's optional dependencies or raise the line naming the extra."""
    import importlib.util

    extra = "onnx" if target == "onnx" else "lens"
    for mod in EXTRAS[target]:
        if importlib.util.find_spec(mod) is None:
            raise MissingExtraError(f"export --to {target} needs {mod}: "
                                    f"pip install 'exactformer[{extra}]'")
    if target == "transformer-lens" and importlib.util.find_spec(
            "transformer_lens.HookedTransformer") is None:
        raise MissingExtraError("export --to transformer-lens writes a HookedTransformer, which "
                                "TransformerLens 4 removed: pip install 'exactformer[lens]' "
                                "(transformer-lens<4)")


def probe(model: Transformer, seed: int = 0, lengths=(1, 2, 3, 5, 8, 8)) -> list[np.ndarray]:
    """Seeded random inputs: standard normal tokens, the last sequence made of copies."""
    rng = np.random.default_rng(seed)
    seqs = [rng.normal(size=(n, model.d)) for n in lengths]
    seqs[-1] = seqs[-1][rng.integers(0, 3, size=len(seqs[-1]))]  # ties between copies
    return seqs


def reference(model: Transformer, sequences) -> tuple[list, dict[int, float]]:
    """The numpy model's outputs, and block → relative tie tolerance of its hardmax layer
    (module docstring)."""
    stats: list = []
    ref = model.run(sequences, stats=stats)
    if model.attention != "hardmax":
        return ref, {}
    out = {}
    for st in stats:
        margin = st.get("margin", np.inf)  # inf: no distinct rival in any row
        if margin >= MIN_MARGIN_FOR_TOL:
            out[int(st["block"])] = float(min(margin / 4, TIE_TOL_CAP))
    return ref, out


def export(model, to: str, out=None, data=None, seed: int = 0) -> ExportReport:
    """Convert ``model`` (a :class:`Transformer` or a path) for ``to``, check it, write it.

    ``data``: a :class:`~exactformer.Dataset` or a list of ``(n, d)`` sequences to check
    on (default: :func:`probe`). ``out=None`` checks without writing. Raises
    :class:`ExportError` when the target cannot reproduce the model (one line naming the
    block), :class:`MissingExtraError` when the extra is not installed.
    """
    t0 = time.perf_counter()
    if to not in TARGETS:
        raise ExportError(f"unknown export target {to!r} (choose from {', '.join(TARGETS)})")
    require(to)
    if not isinstance(model, Transformer):
        model = Transformer.load(model)
    if model.exact:  # the exported weights are the float64 roundings, if they certify
        model = model.float_model()
    if data is None:
        seqs, checked = probe(model, seed), f"a random probe (seed {seed})"
    else:
        seqs = list(getattr(data, "inputs", data))
        checked = "the data"
    seqs = [np.asarray(x, dtype=np.float64) for x in seqs if len(x)]
    for j, x in enumerate(seqs):
        if x.ndim != 2 or x.shape[1] != model.d:
            raise ExportError(f"sequence {j}: expected shape (n, {model.d}), got {x.shape}")
    ref, tols = reference(model, seqs)
    if to == "onnx":
        from . import to_onnx as target
    else:
        from . import to_lens as target
    converted = target.convert(model, tols)
    outputs, argmax = target.run(converted, model, seqs)
    _check_argmax(model, seqs, argmax, to)
    err = _rel_error(ref, outputs)
    if not err <= REL_TOL:
        worst = int(np.argmax([np.max(np.abs(r - o), initial=0) for r, o in zip(ref, outputs)]))
        l, e = _first_departure(model, [seqs[worst]], target, converted)
        raise ExportError(f"block {l} ({model.blocks[l].kind or 'no role'}): {to} departs from "
                          f"the numpy model by {e:.2g} relative there ({err:.2g} at the "
                          f"output, limit {REL_TOL:g}); not exported")
    path = None
    if out is not None:
        path = Path(out)
        target.write(converted, model, tols, path)
    return ExportReport(to, path, err, f"{checked} ({len(seqs)} sequences)", len(seqs), tols,
                        model.n_params, target.n_params(converted),
                        time.perf_counter() - t0)


def _rel_error(ref, out) -> float:
    scale = max((float(np.max(np.abs(r))) for r in ref if r.size), default=0.0) or 1.0
    diff = max((float(np.max(np.abs(r - o))) for r, o in zip(ref, out, strict=True)
                if r.size), default=0.0)
    return diff / scale


def _check_argmax(model: Transformer, seqs, argmax: dict, to: str) -> None:
    """Every hardmax layer's argmax sets in the target equal numpy's, sequence by sequence.

    A key may differ only if it is a copy: its value ``V x`` equals (to 1e-9 of the
    values' scale) the mean value of numpy's set, so the layer's output is the same.
    """
    for l, sets in sorted(argmax.items()):
        blk = model.blocks[l]
        head = Transformer(model.blocks[:l] + [Block(blk.ff, None, blk.kind)], model.d,
                           model.attention, model.temperature)
        for j, X in enumerate(head.run(seqs)):
            s = (X @ blk.sa.Q.T) @ (X @ blk.sa.K.T).T
            ours = s == s.max(axis=1, keepdims=True)
            rows = np.nonzero((ours != sets[j]).any(axis=1))[0]
            if len(rows) == 0:
                continue
            v = blk.sa.values(X)
            tol = 1e-9 * max(float(np.max(np.abs(v))), 1e-300)
            for i in rows:
                mean = v[ours[i]].mean(axis=0)
                keys = np.nonzero(ours[i] != sets[j][i])[0]
                if np.max(np.abs(v[keys] - mean)) > tol:
                    raise ExportError(
                        f"block {l} ({blk.kind or 'no role'}): {to} picks another hardmax "
                        f"argmax set than numpy (sequence {j}, token {int(i)}, key "
                        f"{int(keys[0])}); not exported")


def _first_departure(model: Transformer, seqs, target, converted) -> tuple[int, float]:
    """(block, relative error) where the target's residual state first leaves numpy's."""
    states = target.states(converted, model, seqs)  # per block: (n, d) of the one sequence
    for l in range(model.n_blocks):
        ref = Transformer(model.blocks[: l + 1], model.d, model.attention,
                          model.temperature).run(seqs)
        e = _rel_error(ref, [states[l]])
        if not e <= REL_TOL:
            return l, e
    return model.n_blocks - 1, float("nan")


def pad_numpy(seqs, d: int) -> tuple[np.ndarray, np.ndarray]:
    """``X (B, n_max, d)`` float64 with zero padding and ``key_padding_mask`` (True = pad)."""
    n = max((len(x) for x in seqs), default=0)
    X = np.zeros((len(seqs), n, d))
    pad = np.ones((len(seqs), n), dtype=bool)
    for j, x in enumerate(seqs):
        X[j, : len(x)] = x
        pad[j, : len(x)] = False
    return X, pad


def batches(seqs, max_scores: int = 4_000_000):
    """Index lists of sequences of similar length, each batch ≤ ``max_scores`` scores."""
    order = np.argsort([len(x) for x in seqs], kind="stable")
    batch: list[int] = []
    for j in order:
        n = len(seqs[j])
        if batch and (len(batch) + 1) * n * n > max_scores:
            yield batch
            batch = []
        batch.append(int(j))
    if batch:
        yield batch

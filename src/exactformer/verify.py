"""Verification: run a model on a dataset and check docs/design.md §3's "exact".

For every sequence: the first m_j outputs equal the targets (prefix read-out), and every
other output equals one of the sequence's targets (output set = target set). Exact models
run in rational arithmetic and must have error exactly 0; float models report the largest
relative error (relative to the data's largest absolute value) and the smallest relative
score margin of the attention layers, which certifies that rounding cannot change a
hardmax argmax set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import numeric as nm
from .dataset import Dataset
from .model import Transformer
from .tolerances import VERIFY_TOL

DEFAULT_TOL = VERIFY_TOL


@dataclass
class Report:
    """The outcome of :func:`verify`."""

    n_sequences: int
    exact: bool  # rational arithmetic (a proof) or float64
    max_abs_error: float
    max_rel_error: float
    worst_sequence: int
    prefix_ok: np.ndarray  # (N,) bool: read-out equals the targets (within tol)
    set_ok: np.ndarray  # (N,) bool: every other output is one of the targets
    min_margin: float  # smallest relative score margin over attention layers (inf if none)
    layer_margins: list = field(default_factory=list)  # (block, margin) per attention layer
    tol: float = DEFAULT_TOL
    accuracy: float | None = None  # classification: share of sequences read out as their class
    certificate: str | None = None  # softmax exact mode: what the ball-arithmetic proof says
    leaks: list = field(default_factory=list)  # softmax: (block, largest weight off argmax)

    @property
    def passed(self) -> bool:
        return bool(np.all(self.prefix_ok) and np.all(self.set_ok))

    def summary(self) -> str:
        kind = "exact rational" if self.exact else "float64"
        if self.certificate is not None:
            kind = "certified in ball arithmetic"
        status = "PASS" if self.passed else "FAIL"
        bad = int(np.count_nonzero(~(self.prefix_ok & self.set_ok)))
        acc = "" if self.accuracy is None else f"accuracy {100 * self.accuracy:.2f} %, "
        return (f"{status} ({kind}): {self.n_sequences} sequences, {bad} wrong, {acc}max abs error "
                f"{self.max_abs_error:.3g}, max rel error {self.max_rel_error:.3g}, "
                f"worst sequence {self.worst_sequence}, min score margin {self.min_margin:.3g}")


def verify(model: Transformer, dataset: Dataset, exact: bool | None = None,
           tol: float = DEFAULT_TOL) -> Report:
    """Run ``model`` on every input of ``dataset`` and check the targets.

    ``exact=None`` runs in rationals when the model has rational weights (exact mode), else
    in float64. In exact mode the tolerance is 0.
    """
    if model.d != dataset.d:
        from .errors import DatasetError

        raise DatasetError(f"the model works on d = {model.d} but the data has d = {dataset.d}")
    if dataset.labels is not None and not any(len(y) for y in dataset.targets):
        from .classification import with_codes

        codes = dataset.codes if dataset.codes is not None else model.info.get("codes")
        dataset = with_codes(dataset, codes)
    if exact is None:
        exact = model.exact
    if exact and model.attention == "softmax":
        return _certified(model, dataset)
    inputs = [nm.to_exact(x) for x in dataset.inputs] if exact else dataset.inputs
    stats: list = []
    outputs = model.run(inputs, stats=stats)
    scale = dataset.scale
    N = dataset.n_sequences
    prefix_err = np.zeros(N)
    set_err = np.zeros(N)
    for j, (out, y) in enumerate(zip(outputs, dataset.targets)):
        yy = nm.to_exact(y) if exact else y
        m = len(y)
        diff = np.abs(out[:m] - yy)
        prefix_err[j] = float(diff.max()) if diff.size else 0.0
        rest = out[m:]
        if len(rest):
            # distance of each remaining output to its nearest target (max-norm)
            dist = np.abs(rest[:, None, :] - yy[None, :, :]).max(axis=2).min(axis=1)
            set_err[j] = float(dist.max())
    limit = 0.0 if exact else tol * scale
    err = np.maximum(prefix_err, set_err)
    margins = [(s["block"], s.get("margin", np.inf)) for s in stats]
    leaks = [(s["block"], s["leak"]) for s in stats if "leak" in s]
    worst = int(np.argmax(err))
    accuracy = None
    if dataset.labels is not None:
        codes = nm.to_float(np.asarray(dataset.codes))
        first = np.stack([nm.to_float(o[0]) for o in outputs])
        pred = np.argmin(np.linalg.norm(first[:, None] - codes[None], axis=2), axis=1)
        accuracy = float(np.mean(pred == np.asarray(dataset.labels)))
    return Report(
        n_sequences=N,
        exact=exact,
        max_abs_error=float(err.max()),
        max_rel_error=float(err.max() / scale),
        worst_sequence=worst,
        prefix_ok=prefix_err <= limit,
        set_ok=set_err <= limit,
        min_margin=min((m for _, m in margins), default=np.inf),
        layer_margins=margins,
        tol=0.0 if exact else tol,
        leaks=leaks,
        accuracy=accuracy,
    )


def _certified(model: Transformer, dataset: Dataset) -> Report:
    """Softmax in exact mode: the ball-arithmetic certificate of :mod:`exactformer.certify`."""
    from .certify import certify

    cert = certify(model, dataset.inputs, dataset.targets)
    N = dataset.n_sequences
    ok = np.full(N, cert.passed)
    err = 0.0 if cert.passed else float("inf")
    return Report(N, True, err, err, 0, ok, ok.copy(), float("nan"), tol=0.0,
                  certificate=cert.message)

"""Verification: run a model on a dataset and check docs/design.md §3's "exact".

docs/verification.md states what each mode proves.

For every sequence the first m_j outputs must be the targets (prefix read-out) and every
other output one of the sequence's targets (output set = target set). "Is" means, beyond
doubt (the *pass rule*): every output lies within ``tol × scale`` of its target (scale = the
largest absolute value of inputs and targets) **and** closer to it than a quarter of the
distance from that target to the nearest other distinct target of the whole dataset; an
output after the read-out is judged against the nearest target of its own sequence's set.
A classification model passes only at 100 % accuracy.

Three ways to run the model, one evaluator (:mod:`exactformer.forward`):

* ``exact`` — rational arithmetic (exact models): error 0 is required and proven;
* certified float (the default for float models) — interval arithmetic around the float64
  forward pass: the true outputs of the stored float64 weights, in exact real arithmetic,
  lie within a certified distance δ of the computed ones; the rule is applied to δ;
* ``certify=False`` — the plain float64 check (the rule applied to the computed outputs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import numeric as nm
from .dataset import Dataset
from .model import Transformer
from .tolerances import TARGET_GAP, VERIFY_TOL

DEFAULT_TOL = VERIFY_TOL
_CERTIFIED_EVALUATOR = True
FAILURES_KEPT = 100  # failing tokens a report lists (in sequence order); all are counted


@dataclass
class Report:
    """The outcome of :func:`verify`."""

    n_sequences: int
    exact: bool  # rational arithmetic (a proof) or float64
    max_abs_error: float
    max_rel_error: float
    worst_sequence: int
    prefix_ok: np.ndarray  # (N,) bool: read-out is the targets (pass rule)
    set_ok: np.ndarray  # (N,) bool: every other output is one of the targets (pass rule)
    min_margin: float  # smallest relative score margin over attention layers (inf if none)
    layer_margins: list = field(default_factory=list)  # (block, margin) per attention layer
    tol: float = DEFAULT_TOL
    accuracy: float | None = None  # classification: share of sequences read out as their class
    certificate: str | None = None  # what the proof says (certified or exact softmax modes)
    leaks: list = field(default_factory=list)  # softmax: (block, largest weight off argmax)
    certified: bool | None = None  # None: not attempted (plain float check or exact)
    method: str = "float64"  # "exact rational", "interval", "ball arithmetic", "float64"
    delta: np.ndarray | None = None  # (N,) per sequence: certified (or observed) max-norm error
    where: str | None = None  # first sequence / token / block where the certificate fails
    outputs: list | None = field(default=None, repr=False)  # per sequence, what was checked
    failures: list = field(default_factory=list)  # first FAILURES_KEPT failing tokens: Failure
    n_failed_tokens: int | None = 0  # tokens failing the pass rule (None: the check stopped
    #                                  at the first, as the ball certificate does)
    note: str | None = None  # what the check means when it is not the model's own claim
    scale: float = 1.0  # the data's scale: errors are relative to it, tolerances scaled by it

    @property
    def passed(self) -> bool:
        ok = bool(np.all(self.prefix_ok) and np.all(self.set_ok))
        if self.accuracy is not None and self.accuracy < 1.0:
            ok = False
        return ok and self.certified is not False

    @property
    def n_failed_sequences(self) -> int:
        return int(np.count_nonzero(~(self.prefix_ok & self.set_ok)))

    @property
    def max_delta(self) -> float:
        return float(np.max(self.delta)) if self.delta is not None and len(self.delta) else 0.0

    def summary(self) -> str:
        kind = {"exact rational": "exact rational", "ball arithmetic":
                "certified in ball arithmetic"}.get(self.method, "float64")
        if self.method == "interval":
            kind = "float64, certified" if self.certified else "float64, NOT certified"
        status = "PASS" if self.passed else "FAIL"
        bad = self.n_failed_sequences
        acc = "" if self.accuracy is None else f"accuracy {100 * self.accuracy:.2f} %, "
        cert = ""
        if self.method == "interval":
            cert = f"certified δ {self.max_delta:.3g} abs, "
        margin = "" if np.isnan(self.min_margin) else f", min score margin {self.min_margin:.3g}"
        return (f"{status} ({kind}): {self.n_sequences} sequences, {bad} wrong, {acc}{cert}"
                f"max abs error {self.max_abs_error:.3g}, max rel error "
                f"{self.max_rel_error:.3g}, worst sequence {self.worst_sequence}{margin}")


def verify(model: Transformer, dataset: Dataset, exact: bool | None = None,
           tol: float = DEFAULT_TOL, certify: bool = True, progress=None) -> Report:
    """Run ``model`` on every input of ``dataset`` and check the targets (pass rule above).

    ``exact=None`` runs in rationals when the model has rational weights (exact mode), else
    in float64; ``exact=False`` runs the float64 tensors even of an exact model. In exact
    mode the tolerance is 0. ``certify`` (float mode): prove the float model in interval
    arithmetic (docs/verification.md); ``False`` is the plain float64 check.
    """
    if model.d != dataset.d:
        from .errors import DatasetError

        raise DatasetError(f"the model works on d = {model.d} but the data has d = {dataset.d}")
    from .classification import nearest_code, resolve_targets

    labels_only = dataset.labels is not None and not any(len(y) for y in dataset.targets)
    if labels_only and dataset.codes is None and model.info.get("codes") is None:
        from .errors import DatasetError

        raise DatasetError("the data holds labels but the model is not a classification "
                           "model (no class codes in its metadata): verify it against "
                           "data with outputs, or compile the labels with --labels")
    dataset = resolve_targets(dataset, model.info.get("codes"), model.info.get("classes"))
    if exact is None:
        exact = model.exact
    if exact and model.attention == "softmax":
        return _ball_certified(model, dataset)
    if not exact and model.exact:
        model = model.as_float()  # the file's float64 tensors, as every float reader sees them
    stats: list = []
    radii = None
    certificate = where = None
    if exact:  # an exact model reads float inputs exactly (no Fraction round trip)
        inputs = dataset.inputs if model.exact else [nm.to_exact(x) for x in dataset.inputs]
        outputs = model.run(inputs, stats=stats, exact_rows=True, progress=progress)
    elif certify and _CERTIFIED_EVALUATOR:
        from .forward import run_certified

        enc = run_certified(model, dataset.inputs, stats=stats, progress=progress)
        outputs, radii = enc.outputs, enc.radii
    else:
        outputs = model.run(dataset.inputs, stats=stats, progress=progress)
    rule = PassRule(dataset, 0.0 if exact else tol)
    observed, delta, ok_prefix, ok_set, blame_token = rule.apply(outputs, radii)
    margins = [(s["block"], s.get("margin", np.inf)) for s in stats]
    leaks = [(s["block"], s["leak"]) for s in stats if "leak" in s]
    worst = int(np.argmax(observed)) if len(observed) else 0
    accuracy = None
    if dataset.labels is not None:  # distances / scale: codes of 1e200 do not overflow
        codes = nm.to_float(np.asarray(dataset.codes))
        first = np.stack([nm.to_float(o[0]).reshape(-1) for o in outputs])
        pred = nearest_code(first, codes)[0]
        accuracy = float(np.mean(pred == np.asarray(dataset.labels)))
    certified = None
    method = "exact rational" if exact else "float64"
    if radii is not None:
        method = "interval"
        bad = np.flatnonzero(~(ok_prefix & ok_set))
        certified = len(bad) == 0
        if certified:
            certificate = (f"certified: the stored float64 model, in exact real arithmetic, puts "
                           f"every output within δ = {float(delta.max(initial=0)):.3g} of its "
                           "target (pass rule)")
        else:
            j = int(bad[0])
            tok = int(blame_token[j])
            block = enc.blame_block(j, tok)
            where = (f"sequence {j}, token {tok}"
                     + (f", block {block}" if block is not None else ""))
            certificate = (f"not certified: {where}: certified δ {delta[j]:.3g} does not meet "
                           f"the pass rule (limit {rule.limit_of(j):.3g})")
    scale = dataset.scale
    note = None
    if exact and not model.exact:
        note = _exact_on_float_note(rule, float(observed.max(initial=0.0)))
    return Report(
        n_sequences=dataset.n_sequences,
        exact=exact,
        max_abs_error=float(observed.max(initial=0.0)),
        max_rel_error=float(observed.max(initial=0.0) / scale),
        worst_sequence=worst,
        prefix_ok=ok_prefix,
        set_ok=ok_set,
        min_margin=min((m for _, m in margins), default=np.inf),
        layer_margins=margins,
        tol=0.0 if exact else tol,
        leaks=leaks,
        accuracy=accuracy,
        certificate=certificate,
        certified=certified,
        method=method,
        delta=delta,
        where=where,
        outputs=outputs,
        failures=rule.failures,
        n_failed_tokens=rule.n_failed,
        note=note,
        scale=scale,
    )


def _exact_on_float_note(rule: PassRule, error: float) -> str:
    """What ``exact=True`` checked on a model without rational weights, and what it means."""
    what = ("exact mode on a float model: its float64 weights were read as exact rationals and "
            "run in rational arithmetic, where the pass rule asks for error 0")
    if not rule.failures:
        return what + "; they interpolate the data exactly"
    first = rule.failures[0]
    return (f"{what}; they miss by up to {error:.3g} (first at sequence {first.sequence}, token "
            f"{first.token}): float weights are rounded, so a float model is not an exact "
            "interpolant. Its check is certified verification (the default without --exact: "
            "interval arithmetic, docs/verification.md)")


@dataclass(frozen=True)
class Failure:
    """One token that fails the pass rule: its error (δ: certified bound, or the observed
    error) and the largest error the rule allows it (``limit``; 0 in exact mode)."""

    sequence: int
    token: int
    readout: bool  # one of the first m_j outputs (else an output judged against the set)
    error: float
    limit: float


class PassRule:
    """The pass rule of the module docstring for one dataset and tolerance.

    Distances are in the max-norm. ``sep`` of a target is its distance to the nearest other
    distinct target of the whole dataset (inf when there is none).
    """

    def __init__(self, dataset: Dataset, tol: float):
        self.dataset = dataset
        self.abs_tol = tol * dataset.scale
        Y = np.concatenate(dataset.targets) if dataset.targets else np.zeros((0, dataset.d))
        self.distinct, self.target_id = np.unique(Y, axis=0, return_inverse=True)
        self.target_id = self.target_id.reshape(-1)
        self.sep = nearest_other(self.distinct)
        self.offsets = np.concatenate([[0], np.cumsum(dataset.output_lengths)])
        self.limits = np.zeros(dataset.n_sequences)
        self.failures: list[Failure] = []  # the first FAILURES_KEPT failing tokens
        self.n_failed = 0  # every failing token

    def limit_of(self, j: int) -> float:
        return float(self.limits[j])

    def apply(self, outputs, radii=None):
        """Per sequence: observed error, δ (error + radius), read-out ok, set ok, worst token.

        ``radii`` (per sequence, per token and coordinate) turns the observed error into a
        certified bound; without it δ is the observed error.
        """
        N = self.dataset.n_sequences
        observed, delta = np.zeros(N), np.zeros(N)
        ok_prefix, ok_set = np.ones(N, bool), np.ones(N, bool)
        worst_token = np.zeros(N, dtype=np.int64)
        exact = self.abs_tol == 0
        for j, (out, y) in enumerate(zip(outputs, self.dataset.targets)):
            m = len(y)
            ids = self.target_id[self.offsets[j]:self.offsets[j + 1]]
            rad = None if radii is None else radii[j]
            if exact:  # 0.0 exactly when equal (exactformer.rational.exact_errors)
                from .rational import exact_errors

                err, rest_err, near = exact_errors(out, y)
                obs, dl = np.concatenate([err, rest_err]), np.concatenate([err, rest_err])
            else:
                out = np.asarray(out, dtype=np.float64)
                gap = np.abs(out[:m] - y)
                obs_p = gap.max(axis=1) if m else np.zeros(0)
                dl_p = (gap + rad[:m]).max(axis=1) if rad is not None and m else obs_p
                rest = out[m:]
                if len(rest) and m:
                    dist = np.abs(rest[:, None, :] - y[None, :, :])  # (n-m, m, d)
                    near = dist.max(axis=2).argmin(axis=1)
                    g = np.take_along_axis(dist, near[:, None, None], 1)[:, 0]
                    obs_r = g.max(axis=1)
                    dl_r = (g + rad[m:]).max(axis=1) if rad is not None else obs_r
                else:
                    near = np.zeros(len(rest), dtype=np.int64)
                    obs_r = dl_r = np.zeros(len(rest))
                obs, dl = np.concatenate([obs_p, obs_r]), np.concatenate([dl_p, dl_r])
            own = np.concatenate([ids, ids[near]]) if m else np.zeros(0, dtype=np.int64)
            if not np.all(np.isfinite(dl)):
                dl = np.where(np.isfinite(dl), dl, np.inf)
            limit = np.minimum(self.abs_tol, self.sep[own] / 4) if len(own) else np.zeros(0)
            good = (dl <= self.abs_tol) & (4 * dl < self.sep[own]) if len(own) else np.ones(0,
                                                                                      bool)
            if exact:
                good = dl == 0
            observed[j] = float(obs.max()) if len(obs) else 0.0
            delta[j] = float(dl.max()) if len(dl) else 0.0
            ok_prefix[j] = bool(np.all(good[:m]))
            ok_set[j] = bool(np.all(good[m:]))
            bad = np.flatnonzero(~good)
            self.n_failed += len(bad)
            for t in bad[:max(0, FAILURES_KEPT - len(self.failures))].tolist():
                self.failures.append(Failure(j, t, t < m, float(dl[t]),
                                             float(limit[t]) if len(limit) else 0.0))
            worst_token[j] = int(bad[0]) if len(bad) else (int(np.argmax(dl)) if len(dl) else 0)
            self.limits[j] = float(limit[worst_token[j]]) if len(limit) else 0.0
        return observed, delta, ok_prefix, ok_set, worst_token


def nearest_other(points: np.ndarray, chunk: int = 1 << 22) -> np.ndarray:
    """Max-norm distance of each (distinct) point to the nearest other point (inf if alone)."""
    K = len(points)
    out = np.full(K, np.inf)
    if K < 2:
        return out
    if K > 8192:
        from scipy.spatial import cKDTree

        dist, _ = cKDTree(points).query(points, k=2, p=np.inf)
        return dist[:, 1]
    step = max(1, chunk // (K * max(1, points.shape[1])))
    for s in range(0, K, step):
        d = np.abs(points[s:s + step, None, :] - points[None, :, :]).max(axis=2)
        d[np.arange(len(d)), s + np.arange(len(d))] = np.inf
        out[s:s + step] = d.min(axis=1)
    return out


def close_targets(dataset: Dataset, gap: float = TARGET_GAP):
    """The closest pair of distinct targets if nearer than ``gap × scale``, else None.

    Returns ``(j1, j2, distance / scale)`` with the sequences holding the two targets.
    """
    Y = np.concatenate(dataset.targets) if dataset.targets else np.zeros((0, dataset.d))
    distinct, first = np.unique(Y, axis=0, return_index=True)
    sep = nearest_other(distinct)
    if not len(sep) or sep.min() >= gap * dataset.scale:
        return None
    i = int(np.argmin(sep))
    k = int(np.argmin(np.where(np.arange(len(distinct)) == i, np.inf,
                               np.abs(distinct - distinct[i]).max(axis=1))))
    offsets = np.cumsum(dataset.output_lengths)
    seq = lambda row: int(np.searchsorted(offsets, row, side="right"))  # noqa: E731
    return seq(first[i]), seq(first[k]), float(sep[i] / dataset.scale)


def _ball_certified(model: Transformer, dataset: Dataset) -> Report:
    """Softmax in exact mode: the ball-arithmetic certificate of :mod:`exactformer.certify`."""
    from .certify import certify

    cert = certify(model, dataset.inputs, dataset.targets)
    N = dataset.n_sequences
    ok = np.full(N, cert.passed)
    err = 0.0 if cert.passed else float("inf")
    # classification: a proof puts every read-out on its (distinct) class code; a failed
    # certificate stops at the first failure, so the accuracy is unknown
    accuracy = 1.0 if cert.passed and dataset.labels is not None else None
    return Report(N, True, err, err, 0, ok, ok.copy(), float("nan"), tol=0.0, accuracy=accuracy,
                  certificate=cert.message, certified=cert.passed, method="ball arithmetic",
                  delta=np.full(N, err), outputs=cert.outputs, scale=dataset.scale,
                  n_failed_tokens=0 if cert.passed else None)

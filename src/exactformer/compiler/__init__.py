"""The compiler: a dataset in, a verified transformer out (docs/design.md §4-§5).

``compile()`` is the algorithm of docs/design.md §4 as a sequence of passes:

    validate → shift & separate → split → leaders & collapse → project & snap → verify

Each pass lives in its own module and works on a :class:`~.state.TokenState`, the
simulated forward pass with bookkeeping by identity; the layers come from
:mod:`exactformer.craft`.
"""

from __future__ import annotations

import sys
import time
from fractions import Fraction

import numpy as np

from .. import numeric as nm
from ..dataset import Dataset
from ..errors import CompileError, DatasetError, InternalError, VerificationError
from ..mechanism import KEY as MECHANISM
from ..mechanism import record as record_mechanism
from ..model import Transformer
from ..progress import as_callback
from ..tolerances import COLLAPSE_TOL
from .endgame import plan_line, project, snap_all
from .leaders import check_collapsed, collapse_attention, place_leaders, plan_destinations
from .separate import shift_and_separate
from .split import split_classes
from .state import ModelBuilder, TokenState, check_memory, weight_bits
from .temperature import softmax_collapse
from .validate import analyse, check_float_normal, check_float_separable

__all__ = ["compile", "paper_bound", "record_verification", "strict_bound"]


def paper_bound(dataset: Dataset, attention: str = "hardmax") -> int:
    """Blocks of the published construction: 2Σm + 2N + 1 (hardmax), 2Σm + 3N (softmax)."""
    sm, n = int(dataset.output_lengths.sum()), dataset.n_sequences
    return 2 * sm + 2 * n + 1 if attention == "hardmax" else 2 * sm + 3 * n


def strict_bound(dataset: Dataset, attention: str = "hardmax") -> int:
    """Our strict-mode guarantee: 2Σm + N + 1 (hardmax), 2Σm + N + 2 (softmax)."""
    sm, n = int(dataset.output_lengths.sum()), dataset.n_sequences
    return 2 * sm + n + (1 if attention == "hardmax" else 2)


DRAWS = 4  # generic draws tried before an internal failure or a failed certificate is final


def compile(dataset: Dataset, attention: str = "hardmax", compact: bool = False,
            exact: bool = False, seed: int = 0, progress=None, verify: bool = True) -> Transformer:
    """Compile ``dataset`` into a transformer whose outputs equal the targets.

    ``attention``: "hardmax" or "softmax" (docs/design.md §5). ``compact``: no width limit, a
    handful of blocks. ``exact``: rational weights, verified with zero error. ``seed``
    drives every generic draw. ``progress``: ``True`` prints progress lines on stderr, or a
    callable ``progress(stage, done, total)`` called on long stages.

    The model is verified before it is returned (float models: certified in interval
    arithmetic, docs/verification.md); the report travels with it as ``model.report``.
    A draw whose construction fails internally (:class:`InternalError`) or whose model does
    not certify is replaced by a new generic draw (``seed`` first, then ``(seed, k)``), up to
    ``DRAWS`` draws; then the last failure is raised (:class:`VerificationError`: the check
    failed, or :class:`InternalError`). Bad data raises :class:`DatasetError` first.
    """
    from ..classification import resolve_targets

    dataset = resolve_targets(dataset)  # classification: targets are the classes' codes
    if attention not in ("hardmax", "softmax"):
        raise ValueError(f"attention must be 'hardmax' or 'softmax', got {attention!r}")
    progress = as_callback(progress)
    t0 = time.perf_counter()
    analysis = analyse(dataset)  # validate: ids, groups, docs/design.md §3
    if not exact:
        check_float_separable(dataset, analysis)
        check_targets_separable(dataset)
    floats = not exact or attention == "softmax"  # the construction computes in float64
    if floats:
        check_scale_ratio(dataset)
    e = scale_exponent(dataset, floats=floats)
    work = rescaled_data(dataset, e, exact) if e else dataset  # beyond float64's range: refused
    if not exact:
        check_float_normal(dataset)  # after: its remedy, --exact, must apply
    if e:
        analysis = analyse(work)  # the same ids: powers of two keep equal values equal
    failure: Exception | None = None
    for draw in range(DRAWS):
        rng = np.random.default_rng(seed if draw == 0 else [seed, draw])
        try:
            model = _build(work, analysis, attention, compact, exact, rng, progress)
            if e:
                model = scaled_back(model, e, fold=abs(np.log2(dataset.scale)) <= FOLD_EXPONENT)
            if exact:
                check_weights_fit_float64(model)
        except (InternalError, CompileError) as exc:  # this draw failed: try another
            failure = exc
            continue
        model.info.update({
            "mode": ("compact" if compact else "strict") + (", exact" if exact else ""),
            "seed": seed,
            "paper_blocks": paper_bound(dataset, attention),
            "compile_seconds": round(time.perf_counter() - t0, 4),
        })
        if draw:
            model.info["draw"] = draw
        if dataset.labels is not None and dataset.codes is not None:
            model.info["codes"] = np.asarray(dataset.codes).tolist()
            if dataset.classes is not None:
                model.info["classes"] = np.asarray(dataset.classes).tolist()
        if not verify:
            model.info["total_seconds"] = round(time.perf_counter() - t0, 4)
            return model
        report = _verify_compiled(model, dataset, progress)
        if report.passed:
            model.report = report
            record_verification(model, dataset, report)
            model.info["total_seconds"] = round(time.perf_counter() - t0, 4)
            return model
        why = f"; {report.certificate}" if report.certificate else ""
        failure = VerificationError(
            f"the compiled model failed verification in {draw + 1} generic draw(s), nothing "
            f"written ({report.summary()}{why})", report)
    if isinstance(failure, InternalError):
        raise InternalError(f"{failure} (in each of {DRAWS} generic draws)") from failure
    if isinstance(failure, CompileError):
        raise CompileError(f"{failure} (in each of {DRAWS} generic draws)") from failure
    raise failure


SCALE_EXPONENT = 64
"""Data whose scale lies outside 2^±64 (≈ 1.8e±19) is compiled at scale ~1 (docs/limits.md)."""


INPUT_FLOOR = -400
"""The inputs' scale at the working scale is kept above 2^this where the targets allow: scores
are squares of coordinates, and below ~2^-500 they leave float64's normal range."""
TARGET_CEILING = 600
"""...and the targets' scale below 2^this: beyond (targets over 2^1000 × the inputs' scale) the
weights would leave float64's range, and the data is left at its old exponent (refused there
when distinct values underflow, docs/limits.md)."""


SCALE_RATIO = 1000
"""Targets more than 2^this times the inputs' scale are refused where the construction
computes in float64 (docs/limits.md)."""


def check_scale_ratio(dataset: Dataset) -> None:
    """Refuse targets more than 2^SCALE_RATIO (~1e301) times the inputs' scale.

    The layers that carry the inputs to the targets amplify by that ratio: beyond it their
    weights or the scores leave float64's range, and such data (inputs 1e-20 beside targets
    3e300, inputs 1 beside targets 5e307) failed in every draw, exit 1 or 3.
    """
    ratio = np.log2(dataset.scale) - np.log2(dataset.input_scale)
    if ratio > SCALE_RATIO:
        raise DatasetError(
            f"the targets' scale ({dataset.scale:.3g}) is more than 2^{SCALE_RATIO} (~1e301) "
            f"times the inputs' scale ({dataset.input_scale:.3g}): the weights that carry "
            "inputs to targets would leave float64's range; scale the targets down or the "
            "inputs up (docs/limits.md)")


def scale_exponent(dataset: Dataset, floats: bool = True) -> int:
    """``e`` such that the data / 2^e has scale ~1, or 0 when the scale is moderate.

    Scores are squares of coordinates, so data at 1e200 overflows float64 and data at 1e-200
    underflows; a dataset is a dataset at any scale. Division by a power of two is exact.
    The inputs alone make scores: when dividing by the whole data's scale would put them
    below 2^INPUT_FLOOR (inputs 1 beside targets 1e250 sat at 1e-250, and every float or
    softmax compile failed with an internal error), e is lowered to keep them there, if the
    targets / 2^e then stay below 2^TARGET_CEILING. ``floats``: the construction computes in
    float64 somewhere (float mode, softmax); exact hardmax keeps its e.
    """
    e = int(np.round(np.log2(dataset.scale)))
    e = e if abs(e) > SCALE_EXPONENT else 0
    inputs = int(np.floor(np.log2(dataset.input_scale)))
    lowered = inputs - INPUT_FLOOR
    if floats and lowered < e and lowered >= np.log2(dataset.scale) - TARGET_CEILING:
        e = lowered if abs(lowered) > SCALE_EXPONENT else 0
    # 2^e and 2^-e are both model weights (η of the first and last block): keep them finite
    # (data at the largest floats, 1.8e308, or at subnormal ones, ~1e-310)
    return min(max(e, -1023), 1023)


def rescaled_data(dataset: Dataset, e: int, exact: bool = False) -> Dataset:
    """The dataset divided by 2^e (exact: a power of two), labels and codes kept.

    Exact unless the data spans more than float64's range: then the smallest values underflow
    at scale 1, and when that makes distinct inputs or targets equal, the dataset is refused
    (a limit of float64, docs/limits.md) rather than compiled into another dataset. ``exact``
    (an exact model): an input or target that loses bits is refused — the model would be
    built for the rounded values, and its exact verification failed in every draw (exit 1;
    targets 3e-300 beside inputs 1e20, inputs 1e-20 beside targets 3e300).
    """
    inputs = [np.ldexp(x, -e) for x in dataset.inputs]
    targets = [np.ldexp(y, -e) for y in dataset.targets]
    for what, before, after in (("inputs", dataset.inputs, inputs),
                                ("targets", dataset.targets, targets)):
        old, new = np.concatenate(before), np.concatenate(after)
        merged = len(np.unique(new, axis=0)) < len(np.unique(old, axis=0))
        if not np.array_equal(np.ldexp(new, e), old) and (
                merged or exact):
            tiny = np.abs(old[old != 0]).min()
            lost = (f"distinct {what} (down to {tiny:.3g}) underflow to equal values" if merged
                    else f"{what} (down to {tiny:.3g}) lose bits (subnormal), which an exact "
                    "model cannot reproduce")
            raise DatasetError(
                f"the data spans more than float64's range: compiled at scale 1 (divided by "
                f"2^{e}, its largest absolute value {dataset.scale:.3g}), {lost}; give inputs "
                "and targets scales within ~1e300 of each other (docs/limits.md)")
    return Dataset(inputs, targets,
                   labels=dataset.labels, codes=dataset.codes, classes=dataset.classes)


_FLOAT_MAX = Fraction(sys.float_info.max)


def check_weights_fit_float64(model: Transformer) -> None:
    """Exact mode: every rational weight must have a finite float64 image (docs/limits.md).

    The file stores each rational beside its float64 rounding (docs/design.md §2), so a
    weight beyond ~1.8e308 cannot be written: data whose scale over the gap between its
    closest distinct inputs approaches float64's range (inputs 0 and 1 next to 1.7e308)
    needs such weights. Refused with the size, not left to overflow while converting.
    """
    for name, t in model.named_tensors():
        t = np.asarray(t)
        if t.dtype == object and t.size:
            big = max(t.ravel(), key=abs)
            if abs(big) > _FLOAT_MAX:
                bits = abs(big).numerator.bit_length() - abs(big).denominator.bit_length()
                raise DatasetError(
                    f"the exact model needs a weight of about 2^{bits} ({name}), beyond "
                    "float64's range (~1.8e308), which the model file stores beside every "
                    "rational: the data's scale over the gap between its closest distinct "
                    "values is too large; scale the data down or drop the outlier")


def scaled_back(model: Transformer, e: int, fold: bool = True) -> Transformer:
    """A model for data at scale 2^e from one built at scale 1: ``x ↦ 2^e·f(2^-e·x)``.

    The first block's translation gets η = 2^-e (it reads the data, then shifts it at scale
    1). The last block, a snap (feed-forward only), scales its output back: η and W times
    2^e, so ``2^e·(η·x + W·r)`` is computed as ``(2^e·η)·x + (2^e·W)·r``. Powers of two
    commute with float rounding while no value leaves float64's normal range, so the model
    computes bit for bit what was built at scale 1 (and the certificate checks it). When
    that cannot be guaranteed (scaled weights out of range, ``fold=False``, or no
    feed-forward-only last block) one block with an FF of width 0 and η = 2^e is appended
    instead (docs/limits.md). ``fold=False`` (float mode): the data's scale lies beyond
    2^±FOLD_EXPONENT, where the scaled values could leave the normal range.
    """
    from ..model import Block, FeedForward

    first = model.blocks[0].ff
    if first is None or np.asarray(first.U).size and nm.max_abs(np.asarray(first.U)) != 0:
        raise InternalError("rescaling: the first block is not the translation")
    exact = model.exact
    down = Fraction(2) ** -e if exact else float(np.ldexp(1.0, -e))
    up = Fraction(2) ** e if exact else float(np.ldexp(1.0, e))
    first.eta = down
    model.info["rescaled_by"] = f"2^{e}"
    last = model.blocks[-1]
    if last.sa is None and last.ff is not None and len(model.blocks) > 1:
        ff = last.ff
        if exact:
            last.ff = FeedForward(ff.U, ff.b, ff.W * up, ff.eta * up)
            return model
        if fold:
            W = np.ldexp(np.asarray(ff.W, dtype=np.float64), e)
            eta = float(np.ldexp(float(ff.eta), e))
            if (np.all(np.isfinite(W)) and np.isfinite(eta)
                    and np.array_equal(np.ldexp(W, -e), ff.W)
                    and float(np.ldexp(eta, -e)) == float(ff.eta)):
                last.ff = FeedForward(ff.U, ff.b, W, eta)
                return model
    d = model.d
    U, b, W = nm.zeros((0, d), exact), nm.zeros((0,), exact), nm.zeros((d, 0), exact)
    model.blocks.append(Block(FeedForward(U, b, W, up), None, "rescale"))
    return model


FOLD_EXPONENT = 960
"""Float mode folds 2^e into the last snap only for |e| and |log2 scale| ≤ this: values kept
above 2^-62 (or below 2^63) relative to the data's scale then stay normal floats."""


def _build(dataset, analysis, attention, compact, exact, rng, progress) -> Transformer:
    """One generic draw of the construction (passes of docs/design.md §4-§5)."""
    X = np.concatenate(dataset.inputs)
    state = TokenState(nm.exact_rows(X) if exact else X.astype(np.float64, copy=True),
                       analysis.seq, analysis.value, analysis.segments, exact,
                       dataset.input_scale)
    targets = nm.to_exact(analysis.targets) if exact else analysis.targets
    builder = ModelBuilder(state)

    shift_and_separate(builder, rng)
    if exact:  # the first blocks' bit lengths project the memory need (docs/exact.md)
        check_memory(builder)
    rounds = split_classes(builder, analysis, rng, compact, progress)
    dest = plan_destinations(builder, analysis, rng)
    line = plan_line(dest, targets, dataset.scale, exact, rng, fold=not dest.satellites)
    place_leaders(builder, dest, rng, compact, progress)
    layer = collapse_attention(dest, line if line.folded else None)
    tau, X_new = 1.0, None
    if attention == "softmax":
        tau, X_new = softmax_collapse(state, dest, layer, line, targets)
    builder.add_sa(layer, "collapse", attention, tau, X_new=X_new)
    collapse_block = len(builder.blocks) - 1
    if not line.folded:
        if attention == "hardmax":
            check_collapsed(builder, dest, tol=COLLAPSE_TOL)
        project(builder, line)
    # exact softmax simulates the ideal collapse: leave room for the certified ε
    widen = attention == "softmax" and exact
    n_snaps = snap_all(builder, dest, targets, line, compact, progress, widen=widen)
    model = Transformer(builder.blocks, dataset.d, attention, float(tau), info={
        "split_rounds": rounds,
        "moved_leaders": len(dest.moves),
        "snap_layers": n_snaps,
        "destinations": len(dest.target),
    })
    model.info[MECHANISM] = record_mechanism(state, dest, collapse_block, model,
                                             dataset.inputs)
    if exact:  # largest numerator or denominator, in bits (docs/exact.md)
        model.info["weight_bits"] = weight_bits(model)
        model.info["state_bits"] = builder.state_bits
    return model


def check_targets_separable(dataset: Dataset) -> None:
    """Float mode: distinct targets nearer than ``TARGET_GAP × scale`` are refused.

    The pass rule (docs/verification.md) needs every output closer to its target than a
    quarter of the distance to the next target; float64 layers at the data's scale round by
    ~1e-16 × scale per operation (compact snaps ~1e-12 × scale), so targets nearer than
    1e-9 × scale cannot be told apart reliably. Exact mode has no such limit.
    """
    from ..verify import TARGET_GAP, close_targets

    pair = close_targets(dataset)
    if pair is not None:
        j1, j2, rel = pair
        where = f"sequence {j1}" if j1 == j2 else f"sequences {j1} and {j2}"
        raise DatasetError(
            f"{where} have distinct targets only {rel:.2g} × scale apart (< {TARGET_GAP:g}; "
            "scale = largest absolute value of inputs and targets): float64 cannot keep "
            "outputs that close apart; compile with --exact")


def _verify_compiled(model: Transformer, dataset: Dataset, progress=None):
    """The check before a model leaves the compiler: certified float, or exact.

    An exact model's float64 tensors are certified as a float model in their own right;
    when they do not certify, the model is kept (its rationals are proven) and its info
    says that the file has no float realisation (``float_realisation = false``).
    """
    from ..verify import verify as run_verify

    report = run_verify(model, dataset, progress=progress)
    if report.passed and model.exact:
        floats = run_verify(model, dataset, exact=False)
        model.info["float_realisation"] = bool(floats.passed)
        if floats.passed:
            model.info["float_delta"] = floats.max_delta
        if not report.leaks:  # exact softmax: the ball certificate reports no weights
            report.leaks = floats.leaks
    return report


def record_verification(model: Transformer, dataset: Dataset, report) -> None:
    """Keep the verification's headline numbers in ``model.info`` (saved with the file).

    ``verified_by`` says how the claim was proven at compile time (exact rational, ball
    arithmetic, interval = certified float, float64 = plain check); ``certified_delta`` is the
    certified max-norm distance of every output to its target (relative: ``/ scale``).
    ``info`` shows the claim as recorded, not re-proved (only ``verify`` proves).
    """
    model.info["max_rel_error"] = report.max_rel_error
    model.info["min_margin"] = report.min_margin
    model.info["verified_by"] = report.method
    if report.certified is not None:
        model.info["certified"] = bool(report.certified)
    if report.method == "interval":
        model.info["certified_delta"] = report.max_delta
        model.info["certified_delta_rel"] = report.max_delta / dataset.scale
    if model.attention == "softmax":
        model.info["softmax_off_argmax_weight"] = {str(b): w for b, w in report.leaks}

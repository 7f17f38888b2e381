"""The compiler: a dataset in, a verified transformer out (docs/design.md §4-§5).

``compile()`` is the algorithm of docs/design.md §4 as a sequence of passes:

    validate → shift & separate → split → leaders & collapse → project & snap → verify

Each pass lives in its own module and works on a :class:`~.state.TokenState`, the
simulated forward pass with bookkeeping by identity; the layers come from
:mod:`exactformer.craft`.
"""

from __future__ import annotations

import time

import numpy as np

from .. import numeric as nm
from ..dataset import Dataset
from ..errors import CompileError
from ..model import Transformer
from ..progress import as_callback
from ..tolerances import COLLAPSE_TOL
from .endgame import plan_line, project, snap_all
from .leaders import check_collapsed, collapse_attention, place_leaders, plan_destinations
from .separate import shift_and_separate
from .split import split_classes
from .state import ModelBuilder, TokenState
from .temperature import softmax_collapse
from .validate import analyse, check_float_separable

__all__ = ["compile", "paper_bound", "record_verification", "strict_bound"]


def paper_bound(dataset: Dataset, attention: str = "hardmax") -> int:
    """Blocks of the published construction: 2Σm + 2N + 1 (hardmax), 2Σm + 3N (softmax)."""
    sm, n = int(dataset.output_lengths.sum()), dataset.n_sequences
    return 2 * sm + 2 * n + 1 if attention == "hardmax" else 2 * sm + 3 * n


def strict_bound(dataset: Dataset, attention: str = "hardmax") -> int:
    """Our strict-mode guarantee: 2Σm + N + 1 (hardmax), 2Σm + N + 2 (softmax)."""
    sm, n = int(dataset.output_lengths.sum()), dataset.n_sequences
    return 2 * sm + n + (1 if attention == "hardmax" else 2)


def compile(dataset: Dataset, attention: str = "hardmax", compact: bool = False,
            exact: bool = False, seed: int = 0, progress=None, verify: bool = True) -> Transformer:
    """Compile ``dataset`` into a transformer whose outputs equal the targets.

    ``attention``: "hardmax" or "softmax" (docs/design.md §5). ``compact``: no width limit, a
    handful of blocks. ``exact``: rational weights, verified with zero error. ``seed``
    drives every generic draw. ``progress``: ``True`` prints progress lines on stderr, or a
    callable ``progress(stage, done, total)`` called on long stages.
    The model is verified before it is returned; a failed check raises CompileError.
    """
    if dataset.labels is not None and not any(len(y) for y in dataset.targets):
        from ..classification import with_codes

        dataset = with_codes(dataset, dataset.codes)  # classification: targets are codes
    if attention not in ("hardmax", "softmax"):
        raise ValueError(f"attention must be 'hardmax' or 'softmax', got {attention!r}")
    progress = as_callback(progress)
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)

    analysis = analyse(dataset)  # validate: ids, groups, docs/design.md §3
    if not exact:
        check_float_separable(dataset, analysis)
    X = np.concatenate(dataset.inputs)
    state = TokenState(nm.to_exact(X) if exact else X.astype(np.float64, copy=True),
                       analysis.seq, analysis.value, analysis.segments, exact, dataset.scale)
    targets = nm.to_exact(analysis.targets) if exact else analysis.targets
    builder = ModelBuilder(state)

    shift_and_separate(builder, rng)
    rounds = split_classes(builder, analysis, rng, compact, progress)
    dest = plan_destinations(builder, analysis, rng)
    line = plan_line(dest, targets, state.scale, exact, rng, fold=not dest.satellites)
    place_leaders(builder, dest, rng, compact, progress)
    layer = collapse_attention(dest, line if line.folded else None)
    tau, X_new = 1.0, None
    if attention == "softmax":
        tau, X_new = softmax_collapse(state, dest, layer, line, targets)
    builder.add_sa(layer, "collapse", attention, tau, X_new=X_new)
    if not line.folded:
        if attention == "hardmax":
            check_collapsed(builder, dest, tol=COLLAPSE_TOL)
        project(builder, line)
    # exact softmax simulates the ideal collapse: leave room for the certified ε
    widen = attention == "softmax" and exact
    n_snaps = snap_all(builder, dest, targets, line, compact, progress, widen=widen)

    model = Transformer(builder.blocks, dataset.d, attention, float(tau), info={
        "mode": ("compact" if compact else "strict") + (", exact" if exact else ""),
        "seed": seed,
        "split_rounds": rounds,
        "moved_leaders": len(dest.moves),
        "snap_layers": n_snaps,
        "destinations": len(dest.target),
        "paper_blocks": paper_bound(dataset, attention),
        "compile_seconds": round(time.perf_counter() - t0, 4),
    })
    if dataset.labels is not None and dataset.codes is not None:
        model.info["codes"] = np.asarray(dataset.codes).tolist()
    if verify:
        from ..verify import verify as run_verify

        report = run_verify(model, dataset)
        if not report.passed:
            raise CompileError("internal: the compiled model failed verification "
                               f"({report.summary()})")
        record_verification(model, dataset, report)
    model.info["total_seconds"] = round(time.perf_counter() - t0, 4)
    return model


def record_verification(model: Transformer, dataset: Dataset, report) -> None:
    """Keep the verification's headline numbers in ``model.info`` (saved with the file)."""
    from ..verify import verify as run_verify

    model.info["max_rel_error"] = report.max_rel_error
    model.info["min_margin"] = report.min_margin
    if model.attention == "softmax":
        leaks = report.leaks or run_verify(model.as_float(), dataset).leaks
        model.info["softmax_off_argmax_weight"] = {str(b): w for b, w in leaks}

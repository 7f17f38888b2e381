"""Softmax collapse (docs/design.md §5): choose the temperature τ and check it by simulation.

Under softmax the collapse is only approximate: token i lands within
``(n_i - 1)·exp(-gap_i/τ)·diam_i`` of its destination, where ``gap_i`` is its score gap
between the tokens sitting at its destination and every other token, and ``diam_i`` the
spread of its sequence on the line. With ``τ = min_i gap_i / ln((n_i-1)·diam_i/ε)`` and
ε = 1e-3 × the smallest spacing of the line, every cluster stays far narrower than the gaps
between clusters, and the one-sided snaps of the endgame (which map whole half-lines onto
a target) make the output exact anyway.
"""

from __future__ import annotations

import numpy as np

from .. import numeric as nm
from ..errors import CompileError, InternalError
from ..forward import length_buckets, query_chunks
from ..model import SelfAttention
from ..tolerances import SOFTMAX_ACCEPT, SOFTMAX_EPS
from .state import TokenState
from .types import Destinations, Line


def line_coordinates(st: TokenState, dest: Destinations, line: Line, targets) -> tuple:
    """λ of every token, λ of every destination, and the smallest spacing ε is measured on."""
    X, P, D = st.floats(), nm.to_float(dest.point), line
    alpha, beta = float(D.alpha), float(D.beta)
    v, w = nm.to_float(D.v), nm.to_float(D.w)
    lam = alpha * (X @ v) + beta
    lam_dest = alpha * (P @ v) + beta
    top = float(np.max(nm.to_float(targets) @ w)) / float(w @ w)
    levels = np.sort(np.concatenate([[top], lam_dest]))
    spacing = float(np.min(np.diff(levels))) if len(levels) > 1 else 1.0
    return lam, lam_dest, spacing


def choose_temperature(st: TokenState, dest: Destinations, line: Line, targets) -> float:
    """The largest τ that the collapse bound allows (float; callers may shrink it)."""
    lam, lam_dest, spacing = line_coordinates(st, dest, line, targets)
    eps = SOFTMAX_EPS * spacing
    Pi = st.floats() @ nm.to_float(dest.A).T
    moved = np.zeros(len(lam), dtype=bool)
    pid = st.point_ids()
    moved[np.isin(pid, [p for p, _ in dest.moves])] = True
    tau = np.inf
    for idx_all in length_buckets(st.segments):
        n = idx_all.shape[1]
        if n == 1:
            continue
        pi_keys = Pi[idx_all]  # (B, n, 2)
        for rows in query_chunks(idx_all):  # long sequences: a few query rows at a time
            idx = idx_all[:, rows]
            scores = Pi[idx] @ np.swapaxes(pi_keys, 1, 2)  # (B, rows, n)
            td = dest.token_dest[idx]
            td_keys = dest.token_dest[idx_all]
            at_dest = moved[idx_all][:, None, :] & (td_keys[:, None, :] == td[:, :, None])
            others = ~at_dest
            if not at_dest.any(axis=2).all():
                raise InternalError("internal: a token has no leader at its destination")
            top = np.where(at_dest, scores, np.inf).min(axis=2)
            rival = np.where(others, scores, -np.inf).max(axis=2)
            gap = top - rival
            diam = np.abs(lam[idx_all][:, None, :] - lam_dest[td][:, :, None]).max(axis=2)
            has_rival = np.isfinite(rival)
            if np.any(has_rival & (gap <= 0)):
                raise InternalError("internal: a token scores higher away from its destination")
            ratio = np.log(np.maximum((n - 1) * diam / eps, np.e))
            tau = min(tau, float(np.min(np.where(has_rival, gap / ratio, np.inf))))
    if not np.isfinite(tau):
        tau = 1.0  # no token has a rival: every weight is on the destination
    top_score = float(np.max(np.abs(Pi @ Pi.T))) if len(Pi) < 4096 else float(
        np.max(np.sum(Pi * Pi, axis=1)))
    if not tau > 0 or top_score / tau > 1e300:
        raise CompileError(
            f"softmax: the score gaps are too small for a certified collapse (τ = {tau:.3g} "
            "would overflow float64); the data is too close — use hardmax attention"
        )
    return tau


def softmax_collapse(st: TokenState, dest: Destinations, layer: SelfAttention, line: Line,
                     targets, tries: int = 8):
    """τ and the simulated output of the collapse; τ is halved until every token is within ε.

    Exact mode cannot simulate exp in rationals: it returns a rational τ and the ideal
    output (every token exactly on its destination); the certificate of
    :mod:`exactformer.certify` then proves the model in ball arithmetic.
    """
    tau = choose_temperature(st, dest, line, targets)
    if st.exact:  # τ a short dyadic below the bound (smaller τ: a sharper collapse)
        ideal = nm.exact_rows(dest.point)[dest.token_dest]
        return nm.dyadic_below(tau), ideal @ layer.value_matrix().T
    _, lam_dest, spacing = line_coordinates(st, dest, line, targets)
    alpha, v = float(line.alpha), nm.to_float(line.v)
    for _ in range(tries):
        X_new = layer(st.X, st.segments, "softmax", tau)
        if line.folded:  # output already on the line: λ = ⟨w, x⟩ / |w|²
            w = nm.to_float(line.w)
            lam = X_new @ w / float(w @ w)
        else:
            lam = alpha * (X_new @ v) + float(line.beta)
        miss = np.max(np.abs(lam - lam_dest[dest.token_dest]))
        if miss <= SOFTMAX_ACCEPT * SOFTMAX_EPS * spacing:
            return tau, X_new
        tau /= 2
    raise InternalError("internal: softmax: no temperature put every token within ε of its "
                        "destination")

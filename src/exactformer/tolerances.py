"""Every tolerance of float mode in one place, and how they relate (docs/design.md §4).

Exact mode needs none of these: there a positive gap is a proof. In float mode every
distance is compared with the data's *scale* (the largest absolute value of inputs and
targets) or with the *spread* of the tokens along a direction (≤ a few × scale after the
shift into the positive orthant), so the rules hold at any unit of measurement.

The ladder, from "the same" to "far apart" (× scale):

    COPY (1e-9)  <  MIN_GAP (1e-8, × spread)  <  DISTINCT (1e-7)  <  GOOD_GAP (1e-6, × spread)

(inputs; for targets, TARGET_GAP = COPY: float mode needs distinct targets at least that far
apart, since outputs are only ever compared with them, never moved by a trapezoid).

* Two values closer than ``COPY`` are copies of one point (equal means, merged copies); two
  values that are not copies must be at least ``DISTINCT`` apart, a factor 100 above, so that
  a draw landing in between is recognised as unlucky and redrawn rather than guessed.
* A point move needs a free gap of at least ``MIN_GAP`` × spread around its point, below
  ``DISTINCT``: every pair of distinct points qualifies along a generic direction up to the
  loss of a projection. ``GOOD_GAP`` accepts a direction at once.
* A point's own copies (after rounding) must span at most ``1/ISOLATION`` of its gap, and a
  cluster on the line at most ``1/ISOLATION`` of the gap below it: rounding then stays far
  inside the ramps of a trapezoid or a snap, which sit at quarters and thirds of a gap.
* Rounding of float64 is ~1e-16 relative per operation; the verifier's default tolerance
  ``VERIFY_TOL`` (1e-10) sits six orders above it, and the compact snaps' rounding budget
  ``SNAP_BUDGET`` (2e-12) fifty times below it.
"""

from __future__ import annotations

# -- same or distinct (× scale) ---------------------------------------------------------------
COPY = 1e-9
"""Values (or sequence means) closer than this × scale are one point."""
DISTINCT = 1e-7
"""Distinct values must be at least this × scale apart: in the input (else float mode refuses
the data, ``--exact`` takes it) and after every broadcast (else the draw is redone)."""

# -- isolating a point along a direction (× the spread of the tokens along it) ---------------
MIN_GAP = 1e-8
"""Smallest free gap around a point that a point move accepts (rounding above a trapezoid
grows like spread / gap)."""
GOOD_GAP = 1e-6
"""A first-choice direction with a gap at least this wide is taken at once."""
GAP_CAP = 1e-3
"""Screened trapezoids: gaps are capped at this × a bound on the spread, so only tokens above
``t_z − GAP_CAP × spread`` can be touched by a move (one screen finds them for many moves)."""
DRIFT = 1e-6
"""Strict leader moves: a row that moved less than this × spread cannot reach a later
trapezoid it was screened out of (the screen's floor sits GAP_CAP/2 × spread below it)."""
PROJECTION_KEEP = 1e-6
"""A direction ``z − mean`` keeps its projection away from the collapse plane only when that
projection is at least this × its length (else the plain direction is used)."""
ISOLATION = 20
"""A point's copies span at most 1/ISOLATION of its gap; a line cluster at most 1/ISOLATION of
the gap below it; exact softmax widens each cluster by 1/ISOLATION of the smallest spacing."""

# -- the collapse and the line -------------------------------------------------------------------
COLLAPSE_TOL = 1e-6
"""Hardmax collapse (not folded into the line): every token within this × scale of its
destination, else the compile stops with an internal error."""
SOFTMAX_EPS = 1e-3
"""Softmax collapse: ε, the distance a token may land from its destination, as a fraction of
the smallest spacing of the line (docs/design.md §5)."""
SOFTMAX_ACCEPT = 10
"""The simulated softmax collapse is accepted when every token is within SOFTMAX_ACCEPT × ε."""
LANDING = 6
"""After the snaps every token must sit below ``top + gap₀/LANDING`` on the line, half-way to the
lowest snap threshold (``top + gap₀/3``): every skipped ReLU was off by a sixth of a gap."""
SNAP_BUDGET = 2e-12
"""Compact snaps: estimated relative rounding per layer. Another evaluation order (the torch
twin's matmul) measured ~1.1× the numpy error; 2e-12 keeps both 50× under VERIFY_TOL."""

# -- verification and the screened forward pass --------------------------------------------------
VERIFY_TOL = 1e-10
"""Float verification: largest error that passes, × scale (the default of ``--tol``)."""
MAX_VERIFY_TOL = 1e-3
"""Largest ``--tol`` the CLI accepts: above it "verified" would say little."""
TARGET_GAP = COPY
"""Float mode refuses distinct targets closer than this × scale: the pass rule needs every
error below a quarter of their distance, and compact snaps round at ~SNAP_BUDGET × scale,
so targets as close as copies (COPY) cannot be told apart reliably; ``--exact`` can."""
SCREEN_SLACK = 1e-9
"""The forward pass's FF screen lowers every ReLU threshold by this × (|U|·|x| + |b|): far above
the rounding difference of two evaluation orders, so a skipped row is provably off."""
MARGIN_COPY = COPY
"""Score margins are measured against distinct tokens: a token whose value is within this ×
the largest value of the argmax set's mean is a copy, not a rival."""
TIE_RTOL = 1e-12
"""Clustering experiments (float dynamics): scores within this × the row's largest |score| of
the row maximum are tied (exact ties of the geometry survive rounding)."""

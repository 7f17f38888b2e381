"""Shared fixtures and dataset generators for the tests."""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
from collections import Counter
from fractions import Fraction
from typing import NamedTuple

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


def random_dataset(rng, N=5, n=(2, 6), d=3, m=(1, 2), scale=1.0):
    """Random real-valued sequences (all tokens distinct, means distinct)."""
    from exactformer import Dataset

    xs, ys = [], []
    for _ in range(N):
        nj = int(rng.integers(n[0], n[1] + 1))
        mj = int(rng.integers(m[0], min(m[1], nj) + 1))
        xs.append(rng.standard_normal((nj, d)) * scale)
        ys.append(rng.standard_normal((mj, d)) * scale)
    return Dataset.from_sequences(xs, ys)


def reference_feasible(inputs, targets) -> bool:
    """docs/design.md §3 written independently of the compiler: groups by empirical distribution."""
    groups: dict = {}
    for j, x in enumerate(inputs):
        c = Counter(tuple(map(float, row + 0.0)) for row in x)
        key = frozenset((v, Fraction(k, len(x))) for v, k in c.items())
        groups.setdefault(key, []).append(j)
    for members in groups.values():
        value_target: dict = {}
        sets = set()
        for j in members:
            s = set()
            for row, y in zip(inputs[j], targets[j]):
                v, t = tuple(map(float, row + 0.0)), tuple(map(float, y + 0.0))
                if value_target.setdefault(v, t) != t:
                    return False
                s.add(t)
            sets.add(frozenset(s))
        if len(sets) > 1:
            return False
    return True


def near_duplicates(ds, tol=1e-7) -> bool:
    """Distinct input values closer than tol × scale (brute force, small data only)."""
    X = np.unique(np.concatenate(ds.inputs) + 0.0, axis=0)
    scale = ds.scale
    d = np.linalg.norm(X[:, None] - X[None], axis=2) + np.eye(len(X)) * 1e300
    return bool(d.min() < tol * scale)


class CliResult(NamedTuple):
    """What a command printed and returned (the fields of a ``CompletedProcess``)."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(*args, cwd=None) -> CliResult:
    """Run ``exactformer ARGS`` in this process (typer's CliRunner): the same exit status and
    output as a user's shell shows, without the interpreter's start-up. An exception that
    escapes the command lands on stderr as its traceback, as it would in a real process.
    """
    from typer.testing import CliRunner

    from exactformer.cli import app

    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "120"})
    finally:
        os.chdir(old)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(*result.exc_info))
    return CliResult(result.exit_code, result.stdout, stderr)


def run_cli_process(*args, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    """Run ``python -m exactformer ARGS`` as a separate process, exactly as a user would.

    Costs ~1 s of start-up each: kept for one end-to-end test per command.
    """
    return subprocess.run([sys.executable, "-m", "exactformer", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "120", "MPLBACKEND": "Agg"})


@pytest.fixture
def rng():
    return np.random.default_rng(1234)

"""Datasets of sequences: N input sequences ``(n_j, d)`` and N targets ``(m_j, d)``.

File formats are fixed by docs/design.md §2: an ``.npz`` with the concatenated tokens and the
lengths, or a JSON twin with nested lists. Every problem found while reading is a
:class:`DatasetError` with one line naming the sequence and the rule.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DatasetError

__all__ = ["Dataset", "load_dataset", "save_dataset", "write_atomic"]


@dataclass
class Dataset:
    """N sequences: ``inputs[j]`` is ``(n_j, d)``, ``targets[j]`` is ``(m_j, d)`` (float64)."""

    inputs: list[np.ndarray]
    targets: list[np.ndarray]
    labels: np.ndarray | None = field(default=None)  # classification: one class per sequence
    codes: np.ndarray | None = field(default=None)  # classification: (C, d) code vectors
    classes: np.ndarray | None = field(default=None)  # classification: name of class c

    @classmethod
    def from_sequences(cls, inputs, targets) -> Dataset:
        """Build and check a dataset from array-likes (one ``(n_j, d)`` array per sequence)."""
        ins = [_as_sequence(x, f"input sequence {j}") for j, x in enumerate(inputs)]
        outs = [_as_sequence(y, f"target sequence {j}") for j, y in enumerate(targets)]
        ds = cls(ins, outs)
        ds.check()
        return ds

    # -- basic facts -------------------------------------------------------------------
    @property
    def n_sequences(self) -> int:
        return len(self.inputs)

    @property
    def d(self) -> int:
        return int(self.inputs[0].shape[1]) if self.inputs else 0

    @property
    def input_lengths(self) -> np.ndarray:
        return np.array([len(x) for x in self.inputs], dtype=np.int64)

    @property
    def output_lengths(self) -> np.ndarray:
        return np.array([len(y) for y in self.targets], dtype=np.int64)

    @property
    def n_tokens(self) -> int:
        return int(self.input_lengths.sum())

    @property
    def scale(self) -> float:
        """Largest absolute value of inputs and targets (1 if all zero): the error scale."""
        m = max(
            max((float(np.max(np.abs(x))) for x in self.inputs if x.size), default=0.0),
            max((float(np.max(np.abs(y))) for y in self.targets if y.size), default=0.0),
        )
        return m if m > 0 else 1.0

    @property
    def input_scale(self) -> float:
        """Largest absolute value of the inputs (else :attr:`scale`): the geometry's scale.

        Distinct inputs are told apart relative to it (docs/limits.md): targets 10¹² away
        do not make inputs 1 apart "too close".
        """
        m = max((float(np.max(np.abs(x))) for x in self.inputs if x.size), default=0.0)
        return m if m > 0 else self.scale

    def __len__(self) -> int:
        return self.n_sequences

    def __repr__(self) -> str:
        return (
            f"Dataset(N={self.n_sequences}, d={self.d}, tokens={self.n_tokens}, "
            f"sum_m={int(self.output_lengths.sum())})"
        )

    # -- rules of docs/design.md §2-§3 that need no geometry -----------------------------------
    def check_inputs(self) -> None:
        """The rules on inputs alone: at least one sequence, equal d, non-empty, finite."""
        if len(self.inputs) == 0:
            raise DatasetError("the dataset has no sequences")
        self._check_not_empty()
        d = self.inputs[0].shape[1]
        for j, x in enumerate(self.inputs):
            if x.shape[1] != d:
                raise DatasetError(
                    f"sequence {j}: input tokens have dimension {x.shape[1]}, not {d}"
                )
            if not np.all(np.isfinite(x)):
                raise DatasetError(f"sequence {j}: the input contains NaN or inf")

    def _check_not_empty(self, targets: bool = False) -> None:
        """Empty sequences first: a JSON `[]` has no dimension to compare (it read as d = 0)."""
        for j, x in enumerate(self.inputs):
            if len(x) == 0:
                raise DatasetError(f"sequence {j}: the input sequence is empty")
        for j, y in enumerate(self.targets if targets else []):
            if len(y) == 0:
                raise DatasetError(f"sequence {j}: the target sequence is empty (m_j = 0)")

    def check(self) -> None:
        """Raise :class:`DatasetError` on the first broken rule (d ≥ 2, finite, 1 ≤ m ≤ n)."""
        if len(self.inputs) == 0:
            raise DatasetError("the dataset has no sequences")
        if len(self.inputs) != len(self.targets):
            raise DatasetError(
                f"{len(self.inputs)} input sequences but {len(self.targets)} target sequences"
            )
        self._check_not_empty(targets=True)
        d = self.inputs[0].shape[1]
        if d < 2:
            raise DatasetError(f"tokens have dimension d = {d}; the construction needs d >= 2")
        for j, (x, y) in enumerate(zip(self.inputs, self.targets)):
            if x.shape[1] != d:
                raise DatasetError(
                    f"sequence {j}: input tokens have dimension {x.shape[1]}, not {d}"
                )
            if y.shape[1] != d:
                raise DatasetError(
                    f"sequence {j}: target tokens have dimension {y.shape[1]}, not {d}"
                )
            if len(y) > len(x):
                raise DatasetError(
                    f"sequence {j}: target length m = {len(y)} exceeds input length n = {len(x)}"
                )
            if not np.all(np.isfinite(x)):
                raise DatasetError(f"sequence {j}: the input contains NaN or inf")
            if not np.all(np.isfinite(y)):
                raise DatasetError(f"sequence {j}: the target contains NaN or inf")

    # -- concatenated view (docs/design.md §2) -------------------------------------------------
    def concatenated(self) -> dict[str, np.ndarray]:
        return {
            "inputs": np.concatenate(self.inputs).astype(np.float64),
            "input_lengths": self.input_lengths,
            "outputs": np.concatenate(self.targets).astype(np.float64),
            "output_lengths": self.output_lengths,
        }


def _as_sequence(x, what: str) -> np.ndarray:
    """A ``(tokens, d)`` float64 array from real numbers (not bools, text, complex, times)."""
    try:
        a = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{what}: not a numeric array ({str(exc).splitlines()[0]})") from None
    if a.dtype.kind not in "fiu":
        raise DatasetError(f"{what}: must hold real numbers, got dtype {a.dtype}")
    if a.ndim != 2:
        raise DatasetError(f"{what}: expected a 2-D (tokens, d) array, got shape {a.shape}")
    return as_float64(a, what)


def as_float64(a: np.ndarray, what: str) -> np.ndarray:
    """``a`` as float64, refusing values the conversion would change (docs/limits.md).

    Data are read as float64 (docs/design.md §2): an integer beyond 2⁵³ that float64 cannot
    hold (2⁵³ + 1) or a long double with more bits would silently become another number —
    two distinct tokens could become one. Values beyond float64's range become ±inf, which
    the finiteness check refuses with its own line.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        x = a.astype(np.float64)
    if a.dtype.kind in "iu" and a.size and a.dtype.itemsize >= 8:
        big = np.abs(x) >= 2.0**53  # below 2⁵³ every integer is a float64
        if big.any():
            vals, xs = a[big], x[big]
            top = 2.0 ** (64 if a.dtype.kind == "u" else 63)
            same = np.zeros(len(vals), dtype=bool)
            fits = xs < top  # 2^63 (2^64) itself is beyond the integer type: not equal
            same[fits] = xs[fits].astype(a.dtype) == vals[fits]
            if not same.all():
                v = int(vals[~same][0])
                raise DatasetError(f"{what}: the integer {v} is not a float64 number (it would "
                                   f"be read as {int(xs[~same][0])}); data are read as float64")
    elif a.dtype.kind == "f" and a.dtype.itemsize > 8 and a.size:
        with np.errstate(over="ignore", invalid="ignore"):
            changed = np.isfinite(x) & (x.astype(a.dtype) != a)
        if changed.any():
            raise DatasetError(f"{what}: {a.dtype} values with more bits than float64 "
                               f"(e.g. {a[changed][0]}) would be rounded; give float64 data")
    return x


def _split(tokens: np.ndarray, lengths: np.ndarray, what: str) -> list[np.ndarray]:
    if lengths.ndim != 1:
        raise DatasetError(f"{what}_lengths must be 1-D (one length per sequence), "
                           f"got shape {lengths.shape}")
    if np.any(lengths < 0):
        j = int(np.argmax(lengths < 0))
        raise DatasetError(f"sequence {j}: negative {what} length {int(lengths[j])}")
    if np.any(lengths > len(tokens)) or sum(lengths.tolist()) != len(tokens):  # no overflow
        total = sum(int(v) for v in lengths.tolist())
        raise DatasetError(
            f"{what}_lengths sum to {total} but {what}s has {len(tokens)} tokens"
        )
    return [a.copy() for a in np.split(tokens, np.cumsum(lengths)[:-1])]


# -- .npz: headers first, then the arrays (docs/limits.md) ---------------------------------
_KINDS = {  # member → accepted dtype kinds (f float, i/u integer, U text)
    "inputs": "fiu", "outputs": "fiu", "codes": "fiu",
    "input_lengths": "iu", "output_lengths": "iu", "labels": "iuU",
}
_KIND_NAMES = {"fiu": "real numbers", "iu": "integers", "iuU": "integers or names"}
_SEQUENCE_BYTES = 1_000
"""Bytes per sequence beyond its numbers (two arrays, list entries, the compiler's per-sequence
objects): reading 10⁶ one-token sequences took 570 B each (docs/limits.md)."""
_JSON_FACTOR = 80
"""Bytes of Python objects and arrays per byte of JSON: 64 measured for 10⁶ one-token
sequences (`[[0,0]]`, the densest), ~10 for long sequences (docs/limits.md)."""
_LOAD_FACTOR = 8
"""Float64 copies of the data alive while a dataset is read and compiled (an estimate):
reading and validating 10⁸ tokens peaked at 7.4× (docs/limits.md), a compact compile of 10⁶
tokens at 8.6× (README, Performance)."""


def available_memory() -> int | None:
    """Bytes of memory the operating system reports as available (None if it does not say)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB", "EB"):
        if n < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} ZB"


LARGE_TOKENS = 10**6
"""From this many input tokens on, reading a dataset sends a size note (:func:`set_note_sink`)."""

_note_sink = None


def set_note_sink(sink) -> None:
    """Where readers send one-line notes (``sink(message)``), e.g. the CLI's ``note:`` line on
    stderr; ``None`` (the default, the Python API): no notes."""
    global _note_sink
    _note_sink = sink


def _size_note(path, tokens: int, d: int, needed: int) -> None:
    """A dataset of LARGE_TOKENS or more: say so before the long work (docs/limits.md).

    A compressed .npz of 1.5 MB can declare 10⁸ tokens: it fits in memory, so nothing is
    refused, but every command on it runs for minutes; the note gives the sizes up front.
    """
    if _note_sink is None or tokens < LARGE_TOKENS:
        return
    try:
        on_disk = f", {_bytes(Path(path).stat().st_size)} on disk"
    except OSError:
        on_disk = ""
    _note_sink(f"{path}: a large dataset, {tokens:,} input tokens in d = {d} "
               f"({_bytes(8 * tokens * d)} as float64{on_disk}): expect a long run and about "
               f"{_bytes(needed)} of memory or more (README, Performance: 10⁶ tokens take tens "
               "of seconds to compile)")


def check_memory(path, needed: int, what: str, error: type[Exception] = DatasetError) -> None:
    """Refuse before allocating when ``needed`` bytes exceed the memory available.

    Raises ``error`` (one line: ``path``, when given, then ``what`` and the estimate). The
    readers raise :class:`DatasetError`, the model reader its ModelFileError, ``train``
    a ResourceError (docs/limits.md).
    """
    free = available_memory()
    if free is not None and needed > free:
        where = f"{path}: " if path else ""
        raise error(
            f"{where}{what}: about {_bytes(needed)} of memory needed, more than the "
            f"{_bytes(free)} available (docs/limits.md)"
        )


def npz_arrays(path: Path, wanted: dict[str, str] = _KINDS) -> dict[str, np.ndarray]:
    """The members of an .npz that ``wanted`` names (member → accepted dtype kinds, by
    default the dataset format's), each checked by its header first.

    A member's header declares dtype and shape; both are checked (kind, size consistent
    with the member, memory) before the array is allocated, so a header claiming 10¹³ rows
    is refused in microseconds instead of failing inside numpy. Also the TD-TF series
    reader's (docs/tdtf.md).
    """
    from numpy.lib import format as npy

    try:
        zf = zipfile.ZipFile(path)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DatasetError(f"{path}: not a readable .npz file ({exc})") from None
    with zf:
        names = [info.filename for info in zf.infolist()]
        if len(set(names)) < len(names):
            seen: set[str] = set()
            twice = next(n for n in names if n in seen or seen.add(n))
            raise DatasetError(f"{path}: the archive holds a member named {twice[:60]!r} twice "
                               "(ambiguous: which one is the array?)")
        members = {}
        for info in zf.infolist():
            key = info.filename[:-4] if info.filename.endswith(".npy") else None
            if key in wanted:
                members[key] = info
        headers, needed = {}, 0
        for key, info in members.items():
            try:
                with zf.open(info) as fh:
                    version = npy.read_magic(fh)
                    reader = npy.read_array_header_1_0 if version == (1, 0) else \
                        npy.read_array_header_2_0
                    shape, _, dtype = reader(fh, max_header_size=10_000)
                    offset = fh.tell()
            except (OSError, ValueError, SyntaxError, TypeError, zipfile.BadZipFile,
                    EOFError, RuntimeError) as exc:
                raise DatasetError(f"{path}: member '{key}' is not a readable array "
                                   f"({str(exc).splitlines()[0] if str(exc) else exc!r})"
                                   ) from None
            kinds = wanted[key]
            if dtype.hasobject or dtype.kind not in kinds or dtype.fields is not None:
                raise DatasetError(f"{path}: '{key}' must hold {_KIND_NAMES[kinds]}, "
                                   f"got dtype {dtype}")
            count = 1
            for n in shape:
                count *= int(n)
            nbytes = count * dtype.itemsize
            headers[key] = (info, tuple(shape), offset + nbytes)
            needed += count * max(8, dtype.itemsize) * (_LOAD_FACTOR if kinds == "fiu" else 1)
            if key == "input_lengths":  # one entry per sequence: its arrays and objects
                needed += count * _SEQUENCE_BYTES
        shapes = ", ".join(f"{k} {s}" for k, (_, s, _) in headers.items())
        check_memory(path, needed, f"the declared arrays ({shapes})")
        for key, (info, shape, size) in headers.items():
            if info.file_size != size:
                raise DatasetError(f"{path}: member '{key}' is truncated or corrupt (its header "
                                   f"declares shape {shape}, the member holds "
                                   f"{_bytes(info.file_size)} instead of {_bytes(size)})")
        shape = headers["inputs"][1] if "inputs" in headers else ()
        if len(shape) == 2:  # before decompressing: the size of what is coming
            _size_note(path, shape[0], shape[1], needed)
        arrays = {}
        for key, (info, _, _) in headers.items():
            try:
                with zf.open(info) as fh:
                    arrays[key] = npy.read_array(fh, allow_pickle=False)
            except (OSError, ValueError, zipfile.BadZipFile, EOFError, RuntimeError) as exc:
                raise DatasetError(f"{path}: member '{key}' is not a readable array "
                                   f"({exc})") from None
    return arrays


def _numeric(a: np.ndarray, path, key: str, ndim: int) -> np.ndarray:
    if a.ndim != ndim:
        want = {1: "a 1-D", 2: "a 2-D (tokens, d)"}[ndim]
        raise DatasetError(f"{path}: '{key}' must be {want} array, got shape {a.shape}")
    if key.endswith("lengths"):
        return a
    return as_float64(a, f"{path}: '{key}'")


def _from_npz(path: Path, require_targets: bool = True) -> Dataset:
    arrays = npz_arrays(path)
    has_outputs = "outputs" in arrays
    need = ["inputs", "input_lengths"] + (["outputs", "output_lengths"] if has_outputs else [])
    missing = [k for k in need if k not in arrays]
    if not has_outputs and "labels" not in arrays and require_targets:
        missing.append("outputs")
    if missing:
        raise DatasetError(f"{path}: missing key(s) {', '.join(missing)} (see docs/design.md §2)")
    inputs = _numeric(arrays["inputs"], path, "inputs", 2)
    lengths = _numeric(arrays["input_lengths"], path, "input_lengths", 1)
    xs = _split(inputs, lengths, "input")
    labels = None
    if has_outputs:
        outputs = _numeric(arrays["outputs"], path, "outputs", 2)
        olen = _numeric(arrays["output_lengths"], path, "output_lengths", 1)
        if len(olen) != len(lengths):
            raise DatasetError(
                f"{path}: {len(lengths)} input lengths but {len(olen)} output lengths"
            )
        ys = _split(outputs, olen, "output")
    elif "labels" in arrays:
        labels = _check_labels(arrays["labels"], len(xs), path)
        ys = [np.zeros((0, inputs.shape[1])) for _ in xs]
        if "codes" in arrays:
            codes = _numeric(arrays["codes"], path, "codes", 2)
            return Dataset(xs, ys, labels=labels, codes=codes)
    else:
        ys = [np.zeros((0, inputs.shape[1])) for _ in xs]
    return Dataset(xs, ys, labels=labels)


def _check_labels(labels, n: int, path) -> np.ndarray:
    """One label per sequence: integers or names (text); they are names of classes."""
    if isinstance(labels, list):  # JSON: a flat list of integers or of strings
        kinds = {type(v) for v in labels}
        if kinds <= {int} and any(abs(v) >= 2**63 for v in labels):
            raise DatasetError(f"{path}: integer labels must lie within ±2⁶³ (or be names)")
        if kinds <= {int} or kinds <= {str}:
            labels = np.array(labels, dtype=np.int64 if kinds <= {int} else str)
        else:
            raise DatasetError(f"{path}: 'labels' must be a flat list of integers or of names "
                               "(one per sequence)")
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n:
        raise DatasetError(f"{path}: 'labels' must hold one label per sequence ({n}), "
                           f"got shape {labels.shape}")
    if labels.dtype.kind == "u" and labels.size and int(labels.max()) > np.iinfo(np.int64).max:
        raise DatasetError(f"{path}: labels must be below 2⁶³")
    if labels.dtype.kind not in "iuU":
        raise DatasetError(f"{path}: 'labels' must be integers or names, got {labels.dtype}")
    return labels if labels.dtype.kind == "U" else labels.astype(np.int64)


# -- JSON: checked structurally (no strings, booleans or ragged rows taken as numbers) -----
class _JsonLimit(ValueError):
    """A JSON text that parses but breaks a limit or is ambiguous (one line, docs/limits.md)."""


def json_object(pairs: list) -> dict:
    """``object_pairs_hook`` of the strict readers: a key given twice is refused, not "last
    one wins" (the two values make the file ambiguous; docs/design.md §2)."""
    obj = dict(pairs)
    if len(obj) < len(pairs):
        seen = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise _JsonLimit(f"duplicate key {json.dumps(key)[:60]} in a JSON object: "
                         "ambiguous, a key may appear once")
    return obj


def strict_json(text):
    """``json.loads`` for input files: duplicate keys refused (:func:`json_object`), integer
    literals beyond float64 refused before conversion, NaN / Infinity refused. Raises a
    ValueError (``_JsonLimit`` or ``JSONDecodeError``) or RecursionError. Decimals beyond
    float64's range (``1e400``, ``1e-400``) are refused too (:func:`_json_float`)."""
    return json.loads(text, parse_int=_json_int, parse_float=_json_float,
                      parse_constant=_json_constant, object_pairs_hook=json_object)


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > 309:  # beyond float64 (and slow to convert): refuse early
        raise _JsonLimit(f"integer literal with {len(text.lstrip('-'))} digits is beyond "
                         "float64 (at most ~1.8e308)")
    value = int(text)
    if abs(value) > 1.7976931348623157e308:
        raise _JsonLimit(f"integer literal {text[:12]}… is beyond float64")
    return value


def _json_float(text: str) -> float:
    """A JSON decimal read as float64, refusing literals beyond its range: ``1e400`` (inf)
    and ``1e-400`` (a non-zero number that would be read as 0)."""
    value = float(text)
    if value in (math.inf, -math.inf):
        raise _JsonLimit(f"number {text[:24]} is beyond float64 (at most ~1.8e308)")
    mantissa = text.lower().split("e")[0]
    if value == 0 and any(c in "123456789" for c in mantissa):
        raise _JsonLimit(f"number {text[:24]} is below float64's smallest (~4.9e-324): it "
                         "would be read as 0")
    return value


# The strict spellings of numbers in input files (docs/design.md §2, docs/tdtf.md): int(),
# float() and Fraction() also read spaces, underscores ("1_0") and any Unicode digits ("１２"),
# which no writer of these formats produces.
DIGITS = re.compile(r"[0-9]+")
DECIMAL = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
FLOAT = re.compile(DECIMAL.pattern + r"|[-+]?(?:inf|nan)")  # also repr() of inf and nan
_SIGNED_DIGITS = re.compile(r"[-+]?[0-9]+")


def decimal_float64(text: str) -> float:
    """A number spelled as an ASCII decimal (:data:`DECIMAL`, e.g. a CSV cell) as float64,
    under the JSON dataset reader's rules: an integer that float64 cannot hold (2⁵³ + 1)
    or beyond its range, and a decimal beyond its range (``1e400``, ``1e-400``) are refused.
    Raises ValueError: "not a number", or the reason."""
    if not DECIMAL.fullmatch(text):
        raise ValueError("not a number")
    value = float(text)
    if 0 < abs(value) < 2.0**53:  # within range, and any integer literal float64 holds
        return value
    if _SIGNED_DIGITS.fullmatch(text):
        return _float64_int(_json_int(text))
    return _json_float(text)


def _float64_int(value: int) -> float:
    """An integer as float64, refused when float64 would read it as another integer."""
    x = float(value)
    if abs(value) >= 2**53 and int(x) != value:
        raise _JsonLimit(f"the integer {value} is not a float64 number (it would be read as "
                         f"{int(x)}); data are read as float64")
    return x


def _json_constant(name: str):
    raise _JsonLimit(f"{name} is not a finite number")


_JSON_NUMBER = (int, float)


def _json_sequence(x, what: str) -> np.ndarray:
    """A ``(tokens, d)`` list of lists of numbers (ints or floats, not bools or strings)."""
    if not isinstance(x, list) or not all(isinstance(row, list) for row in x):
        raise DatasetError(f"{what}: expected a list of tokens, each a list of numbers")
    d = len(x[0]) if x else 0
    for k, row in enumerate(x):
        if len(row) != d:
            raise DatasetError(f"{what}: token {k} has {len(row)} numbers, token 0 has {d}")
        if not {type(v) for v in row} <= {int, float}:
            bad = next(v for v in row if type(v) not in _JSON_NUMBER)
            raise DatasetError(f"{what}: token {k} holds {json.dumps(bad)[:40]}, not a number")
    a = np.array(x, dtype=np.float64).reshape(len(x), d)
    if a.size and np.abs(a).max() >= 2.0**53:  # integers that float64 cannot hold
        try:
            for row in x:
                for v in row:
                    if type(v) is int:
                        _float64_int(v)
        except _JsonLimit as exc:
            raise DatasetError(f"{what}: {exc}") from None
    return a


def _json_sequences(data: dict, key: str, what: str, path) -> list[np.ndarray]:
    if not isinstance(data[key], list):
        raise DatasetError(f"{path}: '{key}' must be a list of sequences")
    return [_json_sequence(x, f"{what} sequence {j}") for j, x in enumerate(data[key])]


def _from_json(path: Path, require_targets: bool = True) -> Dataset:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DatasetError(f"{path}: not a readable JSON file ({exc.strerror})") from None
    check_memory(path, _JSON_FACTOR * size, "parsing this JSON file")
    try:
        data = strict_json(path.read_bytes())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: not a readable JSON file ({exc})") from None
    except RecursionError:
        raise DatasetError(f"{path}: JSON nested too deeply (a dataset is nested 3 deep)"
                           ) from None
    except _JsonLimit as exc:
        raise DatasetError(f"{path}: {exc}") from None
    if not isinstance(data, dict) or "inputs" not in data or (
        "outputs" not in data and "labels" not in data and require_targets
    ):
        raise DatasetError(f"{path}: expected an object with keys 'inputs' and 'outputs' "
                           "(or 'labels', for classification)")
    xs = _json_sequences(data, "inputs", "input", path)
    if "outputs" in data:
        ys = _json_sequences(data, "outputs", "target", path)
        return Dataset(xs, ys)
    labels = _check_labels(data["labels"], len(xs), path) if "labels" in data else None
    d = xs[0].shape[1] if xs else 0
    codes = None
    if "codes" in data:
        codes = _json_sequence(data["codes"], f"{path}: 'codes'")
    return Dataset(xs, [np.zeros((0, d)) for _ in xs], labels=labels, codes=codes)


def load_dataset(path, require_targets: bool = True) -> Dataset:
    """Read a dataset from ``.npz`` or ``.json`` (docs/design.md §2) and check the basic rules.

    With ``require_targets=False`` a file with inputs only is accepted (targets empty), e.g.
    for ``exactformer run``. A file that carries ``labels`` instead of ``outputs`` gives a
    labelled dataset (targets empty, ``labels`` set). Limits (memory, nesting, number
    range) are in docs/limits.md.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file")
    if path.is_dir():
        raise DatasetError(f"{path}: is a directory, not a dataset file")
    if not path.is_file():
        raise DatasetError(f"{path}: not a regular file")
    try:
        return _load(path, require_targets)
    except DatasetError as exc:
        msg = str(exc)
        raise DatasetError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None


def _load(path: Path, require_targets: bool) -> Dataset:
    suffix = path.suffix.lower()
    if suffix == ".json":
        ds = _from_json(path, require_targets)
        _size_note(path, ds.n_tokens, ds.d, 8 * _LOAD_FACTOR * ds.n_tokens * ds.d)
    elif suffix == ".npz":
        ds = _from_npz(path, require_targets)
    elif suffix == ".safetensors":
        raise DatasetError(f"{path}: is a model file, not a dataset (.npz or .json)")
    else:
        raise DatasetError(f"{path}: unknown dataset extension '{suffix}' (use .npz or .json)")
    if ds.labels is None and require_targets:
        ds.check()
    else:
        ds.check_inputs()
    return ds


def temp_name(name: str) -> str:
    """Prefix of the temporary file written beside ``name`` (short: long names still fit)."""
    return f".{name[:48]}."


def write_atomic(path, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a half-written file.

    The file gets the mode a plain ``open()`` would give it: a new file the umask's (0644
    typically, not mkstemp's 0600), a replaced file keeps its own.

    Only a regular file (or nothing) at ``path`` is replaced: a directory, a device such as
    /dev/null or a FIFO is refused with :class:`DatasetError`.
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        raise DatasetError(f"{path}: exists and is not a regular file (refusing to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_name(path.name), suffix=".tmp" + path.suffix[:16],
                               dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _file_mode(path: Path) -> int:
    """The permission bits ``open(path, "w")`` would leave: the old file's, else the umask's."""
    try:
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode):
            return stat.S_IMODE(st.st_mode)
    except OSError:
        pass
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def save_dataset(dataset: Dataset, path) -> None:
    """Write ``.npz`` or ``.json`` atomically (labels and codes too, when present)."""
    path = Path(path)
    extra = {}
    if dataset.labels is not None:
        extra["labels"] = np.asarray(dataset.labels)
        if dataset.codes is not None:
            extra["codes"] = np.asarray(dataset.codes)
    if path.suffix.lower() == ".json":
        payload = {
            "inputs": [x.tolist() for x in dataset.inputs],
            "outputs": [y.tolist() for y in dataset.targets],
            **{k: v.tolist() for k, v in extra.items()},
        }
        if not any(len(y) for y in dataset.targets):
            del payload["outputs"]

        def write(tmp):
            Path(tmp).write_text(json.dumps(payload))

    else:
        arrays = dataset.concatenated() if any(len(y) for y in dataset.targets) else {
            k: v for k, v in dataset.concatenated().items() if "output" not in k}
        arrays.update(extra)

        def write(tmp):
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)

    write_atomic(path, write)

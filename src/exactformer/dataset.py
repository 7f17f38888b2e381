"""Datasets of sequences: N input sequences ``(n_j, d)`` and N targets ``(m_j, d)``.

File formats are fixed by docs/design.md §2: an ``.npz`` with the concatenated tokens and the
lengths, or a JSON twin with nested lists. Every problem found while reading is a
:class:`DatasetError` with one line naming the sequence and the rule.
"""

from __future__ import annotations

import json
import os
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
        d = self.inputs[0].shape[1]
        for j, x in enumerate(self.inputs):
            if x.shape[1] != d:
                raise DatasetError(
                    f"sequence {j}: input tokens have dimension {x.shape[1]}, not {d}"
                )
            if len(x) == 0:
                raise DatasetError(f"sequence {j}: the input sequence is empty")
            if not np.all(np.isfinite(x)):
                raise DatasetError(f"sequence {j}: the input contains NaN or inf")

    def check(self) -> None:
        """Raise :class:`DatasetError` on the first broken rule (d ≥ 2, finite, 1 ≤ m ≤ n)."""
        if len(self.inputs) == 0:
            raise DatasetError("the dataset has no sequences")
        if len(self.inputs) != len(self.targets):
            raise DatasetError(
                f"{len(self.inputs)} input sequences but {len(self.targets)} target sequences"
            )
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
            if len(x) == 0:
                raise DatasetError(f"sequence {j}: the input sequence is empty")
            if len(y) == 0:
                raise DatasetError(f"sequence {j}: the target sequence is empty (m_j = 0)")
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
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{what}: not a numeric array ({exc})") from None
    if a.ndim != 2:
        raise DatasetError(f"{what}: expected a 2-D (tokens, d) array, got shape {a.shape}")
    return a


def _split(tokens: np.ndarray, lengths: np.ndarray, what: str) -> list[np.ndarray]:
    if lengths.ndim != 1:
        raise DatasetError(f"{what}_lengths must be 1-D, got shape {lengths.shape}")
    if np.any(lengths < 0):
        j = int(np.argmax(lengths < 0))
        raise DatasetError(f"sequence {j}: negative {what} length {int(lengths[j])}")
    if int(lengths.sum()) != len(tokens):
        raise DatasetError(
            f"{what}_lengths sum to {int(lengths.sum())} but {what} has {len(tokens)} tokens"
        )
    return [a.copy() for a in np.split(tokens, np.cumsum(lengths)[:-1])]


def _from_npz(path: Path, require_targets: bool = True) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DatasetError(f"{path}: not a readable .npz file ({exc})") from None
    has_outputs = "outputs" in arrays
    need = ["inputs", "input_lengths"] + (["outputs", "output_lengths"] if has_outputs else [])
    missing = [k for k in need if k not in arrays]
    if not has_outputs and "labels" not in arrays and require_targets:
        missing.append("outputs")
    if missing:
        raise DatasetError(f"{path}: missing key(s) {', '.join(missing)} (see docs/design.md §2)")
    inputs = arrays["inputs"]
    if inputs.ndim != 2 or not np.issubdtype(inputs.dtype, np.number):
        raise DatasetError(f"{path}: 'inputs' must be a numeric (T, d) array, got {inputs.shape}")
    lengths = arrays["input_lengths"]
    if not np.issubdtype(lengths.dtype, np.integer):
        raise DatasetError(f"{path}: 'input_lengths' must be integers, got {lengths.dtype}")
    xs = _split(inputs.astype(np.float64), lengths.astype(np.int64), "input")
    labels = None
    if has_outputs:
        outputs = arrays["outputs"]
        if outputs.ndim != 2 or not np.issubdtype(outputs.dtype, np.number):
            raise DatasetError(
                f"{path}: 'outputs' must be a numeric (M, d) array, got {outputs.shape}"
            )
        olen = arrays["output_lengths"]
        if not np.issubdtype(olen.dtype, np.integer):
            raise DatasetError(f"{path}: 'output_lengths' must be integers, got {olen.dtype}")
        if len(olen) != len(lengths):
            raise DatasetError(
                f"{path}: {len(lengths)} input lengths but {len(olen)} output lengths"
            )
        ys = _split(outputs.astype(np.float64), olen.astype(np.int64), "output")
    elif "labels" in arrays:
        labels = _check_labels(arrays["labels"], len(xs), path)
        ys = [np.zeros((0, inputs.shape[1])) for _ in xs]
        if "codes" in arrays:
            return Dataset(xs, ys, labels=labels, codes=np.asarray(arrays["codes"], float))
    else:
        ys = [np.zeros((0, inputs.shape[1])) for _ in xs]
    return Dataset(xs, ys, labels=labels)


def _check_labels(labels, n: int, path) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n:
        raise DatasetError(f"{path}: 'labels' must hold one integer per sequence ({n})")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{path}: 'labels' must be integers, got {labels.dtype}")
    return labels.astype(np.int64)


def _from_json(path: Path, require_targets: bool = True) -> Dataset:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict) or "inputs" not in data or (
        "outputs" not in data and "labels" not in data and require_targets
    ):
        raise DatasetError(f"{path}: expected an object with keys 'inputs' and 'outputs'")
    if not isinstance(data["inputs"], list):
        raise DatasetError(f"{path}: 'inputs' must be a list of sequences")
    xs = [_as_sequence(x, f"input sequence {j}") for j, x in enumerate(data["inputs"])]
    if "outputs" in data:
        if not isinstance(data["outputs"], list):
            raise DatasetError(f"{path}: 'outputs' must be a list of sequences")
        ys = [_as_sequence(y, f"target sequence {j}") for j, y in enumerate(data["outputs"])]
        return Dataset(xs, ys)
    labels = _check_labels(data["labels"], len(xs), path) if "labels" in data else None
    d = xs[0].shape[1] if xs else 0
    codes = None
    if "codes" in data:
        try:
            codes = np.asarray(data["codes"], dtype=np.float64)
        except (TypeError, ValueError):
            raise DatasetError(f"{path}: 'codes' must be a (C, d) list of numbers") from None
    return Dataset(xs, [np.zeros((0, d)) for _ in xs], labels=labels, codes=codes)


def load_dataset(path, require_targets: bool = True) -> Dataset:
    """Read a dataset from ``.npz`` or ``.json`` (docs/design.md §2) and check the basic rules.

    With ``require_targets=False`` a file with inputs only is accepted (targets empty), e.g.
    for ``exactformer run``. A file that carries ``labels`` instead of ``outputs`` gives a
    labelled dataset (targets empty, ``labels`` set).
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file")
    if path.is_dir():
        raise DatasetError(f"{path}: is a directory, not a dataset file")
    try:
        return _load(path, require_targets)
    except DatasetError as exc:
        msg = str(exc)
        raise DatasetError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None


def _load(path: Path, require_targets: bool) -> Dataset:
    suffix = path.suffix.lower()
    if suffix == ".json":
        ds = _from_json(path, require_targets)
    elif suffix == ".npz":
        ds = _from_npz(path, require_targets)
    else:
        raise DatasetError(f"{path}: unknown dataset extension '{suffix}' (use .npz or .json)")
    if ds.labels is None and require_targets:
        ds.check()
    else:
        ds.check_inputs()
    return ds


def write_atomic(path, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a half-written file.

    The file gets the mode a plain ``open()`` would give it: a new file the umask's (0644
    typically, not mkstemp's 0600), a replaced file keeps its own.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix,
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

"""Exact classification: labelled sequences compiled as targets that are class code vectors.

A special case of the construction (docs/design.md §4): every sequence reads out one token, the
code of its class; destinations are shared by target across groups, so the model needs
``N + C + 1`` blocks when the sequences' means differ (one broadcast, one leader move per
sequence with the collapse folded into the last, one snap per class), against O(N) with a
larger constant in the authors' *Exact Sequence Classification with Hardmax Transformers*.
"""

from __future__ import annotations

import numpy as np

from .dataset import Dataset
from .errors import DatasetError


def default_codes(n_classes: int, d: int) -> np.ndarray:
    """One-hot codes, padded: class c ↦ (1 + c // d)·e_{c mod d} (distinct for any C)."""
    codes = np.zeros((n_classes, d))
    c = np.arange(n_classes)
    codes[c, c % d] = 1.0 + c // d
    return codes


def _short(name, limit: int = 40) -> str:
    """A class name for a message: its repr, cut to ``limit`` characters."""
    text = repr(name)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def class_index(labels: np.ndarray, names: np.ndarray) -> np.ndarray:
    """Position of every label in ``names`` (vectorised); a label not in ``names`` is an error."""
    names = np.asarray(names)
    if labels.dtype.kind != names.dtype.kind and not (
            labels.dtype.kind in "iu" and names.dtype.kind in "iu"):
        kind = {True: "names", False: "integers"}
        raise DatasetError(f"labels are {kind[labels.dtype.kind == 'U']} but the classes are "
                           f"{kind[names.dtype.kind == 'U']}")
    order = np.argsort(names, kind="stable")
    pos = np.minimum(np.searchsorted(names[order], labels), len(names) - 1)
    idx = order[pos]
    bad = np.flatnonzero(names[idx] != labels)
    if len(bad):
        j = int(bad[0])
        shown = ", ".join(_short(n) for n in names[:8].tolist()) + (", …" if len(names) > 8
                                                                      else "")
        raise DatasetError(f"sequence {j}: label {_short(labels[j].item())} is not one of the "
                           f"{len(names)} classes ({shown})")
    return idx


def with_codes(dataset: Dataset, codes=None, classes=None) -> Dataset:
    """The labelled dataset with targets filled in: one code vector per sequence (m = 1).

    Labels are names of classes (integers or text): without ``codes`` the distinct labels,
    sorted, become classes 0…C−1 with :func:`default_codes`; with ``codes`` (C, d) a label
    is a row of ``codes`` (an integer in 0…C−1) unless ``classes`` names the rows. The
    result's ``labels`` are class indices and ``classes`` their names.
    """
    if dataset.labels is None:
        raise DatasetError("the dataset carries no labels")
    labels = np.asarray(dataset.labels)
    if len(labels) == 0:
        raise DatasetError("the dataset has no sequences")
    d = dataset.d
    if codes is None:
        names, idx = np.unique(labels, return_inverse=True)
        idx = idx.ravel()
        codes = default_codes(len(names), d)
    else:
        codes = np.asarray(codes)
        if codes.dtype.kind not in "fiu" or codes.ndim != 2 or codes.shape[1] != d \
                or len(codes) == 0:
            raise DatasetError(f"codes must be a (C, {d}) array of numbers, got "
                               f"{codes.dtype} {codes.shape}")
        codes = codes.astype(np.float64)
        if classes is not None:
            names = np.asarray(classes)
            if names.ndim != 1 or len(names) != len(codes):
                raise DatasetError(f"{len(codes)} codes but {names.size} class names")
            idx = class_index(labels, names)
        else:
            if labels.dtype.kind not in "iu":
                raise DatasetError("with 'codes', labels must be integers 0…C−1 (rows of codes)")
            if np.any((labels < 0) | (labels >= len(codes))):
                j = int(np.argmax((labels < 0) | (labels >= len(codes))))
                raise DatasetError(f"sequence {j}: label {int(labels[j])} is not a row of the "
                                   f"{len(codes)} codes (labels index them: 0…{len(codes) - 1})")
            names, idx = np.arange(len(codes)), labels.astype(np.int64)
    if not np.all(np.isfinite(codes)):
        raise DatasetError("codes contain NaN or inf")
    if len(np.unique(codes, axis=0)) < len(codes):
        raise DatasetError("two classes share one code vector")
    out = Dataset(list(dataset.inputs), list(codes[idx][:, None, :]), labels=idx,
                  codes=codes, classes=names)
    out.check()
    return out


def resolve_targets(dataset: Dataset, codes=None, classes=None) -> Dataset:
    """``dataset`` itself, or, when it carries labels and no targets, its classes' codes as
    targets (:func:`with_codes`): the dataset's own codes first, else ``codes`` named by
    ``classes`` (a model's), else the default ones. The one place where labels become
    targets: compile, verify and the CLI.
    """
    if dataset.labels is None or any(len(y) for y in dataset.targets):
        return dataset
    if dataset.codes is not None:
        return with_codes(dataset, dataset.codes)
    return with_codes(dataset, codes, classes)


def from_labels(inputs, labels, codes=None) -> Dataset:
    """A classification dataset from arrays: one ``(n_j, d)`` input and one label per sequence."""
    ins = Dataset.from_sequences(inputs, [np.zeros((1, np.shape(x)[1])) for x in inputs]).inputs
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iuU" or labels.ndim != 1 or len(labels) != len(ins):
        raise DatasetError(f"labels must be one integer or name per sequence ({len(ins)})")
    return with_codes(Dataset(ins, [np.zeros((0, ins[0].shape[1])) for _ in ins],
                              labels=labels), codes)


def nearest_code(first: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the code nearest to each row of ``first`` and that distance over the scale.

    Distances are taken after dividing by the largest absolute value (codes of 1e308 do not
    overflow); a non-finite read-out has distance inf and class 0.
    """
    codes = np.asarray(codes, dtype=np.float64)
    scale = max(float(np.max(np.abs(codes))), 1e-300)
    finite = np.all(np.isfinite(first), axis=1)
    if np.any(finite):
        scale = max(scale, float(np.max(np.abs(first[finite]))))
    a, b = np.where(finite[:, None], first, 0.0) / scale, codes / scale
    dist = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2)
    idx = np.argmin(dist, axis=1)
    return idx, np.where(finite, dist[np.arange(len(idx)), idx], np.inf)


def predict(model, inputs, codes, return_distance: bool = False):
    """Class index of each sequence: the code nearest to its first output token.

    With ``return_distance`` also that distance relative to the scale of codes and outputs
    (≈ 1e-15 on the data the model was compiled for).
    """
    from .numeric import to_float

    first = np.stack([to_float(y[0]) for y in model.run(inputs)])
    idx, dist = nearest_code(first, codes)
    return (idx, dist) if return_distance else idx

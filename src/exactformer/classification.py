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
    for c in range(n_classes):
        codes[c, c % d] = 1.0 + c // d
    return codes


def with_codes(dataset: Dataset, codes=None) -> Dataset:
    """The labelled dataset with targets filled in: one code vector per sequence (m = 1)."""
    if dataset.labels is None:
        raise DatasetError("the dataset carries no labels")
    labels = np.asarray(dataset.labels)
    if np.any(labels < 0):
        raise DatasetError(f"sequence {int(np.argmax(labels < 0))}: labels must be >= 0")
    n_classes = int(labels.max()) + 1
    d = dataset.d
    if codes is None:
        codes = default_codes(n_classes, d)
    codes = np.asarray(codes, dtype=np.float64)
    if codes.ndim != 2 or codes.shape[1] != d or len(codes) < n_classes:
        raise DatasetError(f"codes must be a ({n_classes}, {d}) array, got shape {codes.shape}")
    if not np.all(np.isfinite(codes)):
        raise DatasetError("codes contain NaN or inf")
    if len(np.unique(codes[:n_classes], axis=0)) < n_classes:
        raise DatasetError("two classes share one code vector")
    out = Dataset([x for x in dataset.inputs], [codes[[c]] for c in labels], labels=labels)
    out.codes = codes[:n_classes]
    out.check()
    return out


def from_labels(inputs, labels, codes=None) -> Dataset:
    """A classification dataset from arrays: one ``(n_j, d)`` input and one label per sequence."""
    ins = Dataset.from_sequences(inputs, [np.zeros((1, np.shape(x)[1])) for x in inputs]).inputs
    return with_codes(Dataset(ins, [np.zeros((0, ins[0].shape[1])) for _ in ins],
                              labels=np.asarray(labels, dtype=np.int64)), codes)


def predict(model, inputs, codes) -> np.ndarray:
    """Class of each sequence: the code nearest to its first output token."""
    from .numeric import to_float

    codes = np.asarray(codes, dtype=np.float64)
    first = np.stack([to_float(y[0]) for y in model.run(inputs)])
    dist = np.linalg.norm(first[:, None, :] - codes[None, :, :], axis=2)
    return np.argmin(dist, axis=1)

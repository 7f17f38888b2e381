"""The interpretable sentiment classifier built on pure-attention clustering.

Architecture after Alcalde, Fantuzzi and Zuazua, *Clustering in pure-attention hardmax
transformers and its role in sentiment analysis* (SIAM J. Math. Data Sci., 2025,
arXiv:2407.01602): word embedding → **one** attention layer with shared weights applied
``K`` times with the normalisation of :mod:`exactformer.dynamics`,
``z ← (z + α·attention(z)) / (1 + α)`` (value = identity, scores ``⟨A z_i, z_j⟩`` with
``A = BᵀB`` positive semidefinite) → mean pooling → linear → sigmoid. Because the layer is
the clustering dynamics, a sentence is read as: a few *leader* words (their own argmax)
stay put, every other word drifts towards the leader it attends to, and the linear read-out
scores the resulting clusters. That is what the interpretability outputs show.

Data: sentence polarity dataset v1.0 (Pang & Lee 2005), shipped in
``exactformer/data/rt-polarity`` (see the README there). Per seed: 90/10 train/test split; a
validation part carved out of the training split is used for every choice (the
hyper-parameters of :data:`SEARCH`, the epoch count, the starting bag of words and every L2
strength), then model and baselines are refitted on the whole training split and the test
split is evaluated once. Training starts from a mean-pooled unigram logistic regression,
plain or NB-weighted (:class:`UnigramInit`, :func:`make_model`), so the untrained model is
that bag of words and attention can only add to it. The attention geometry is trained
against out-of-fold polarities (``Settings.polarity_folds``) with the bag of words frozen,
and the epoch count is chosen by the one-standard-error rule
(:func:`one_standard_error_choice`): 0 epochs — the bag of words — unless training beats it
on validation by more than the validation part's noise. The best trained model on
validation is refitted and tested too, as a diagnostic (``trained_attention`` in
``results.json``, never selected on test).

Hardmax has no useful gradient, so hardmax models are trained with a straight-through
estimator (forward: exact hardmax; backward: gradient of softmax at temperature ``τ``);
evaluation uses the exact hardmax forward pass. ``results.json`` records which.

Everything that needs PyTorch imports it lazily, so ``import exactformer`` works without it.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import ExactformerError

PAD, UNK = 0, 1
TOKEN_RE = re.compile(r"\w+(?:['\-]\w+)*|[^\w\s]")


# --------------------------------------------------------------------------- data


def data_dir() -> Path:
    """Directory of the shipped corpus (package data)."""
    return Path(str(resources.files("exactformer") / "data" / "rt-polarity"))


def read_lines(raw: bytes) -> list[str]:
    """Sentences of a latin-1 file: split on ``\\n`` only, strip, skip empty lines.

    ``bytes.split(b"\\n")`` rather than ``str.splitlines``: the corpus contains byte 0x85,
    which latin-1 decodes to U+0085 (NEL), a line break for ``splitlines``.
    """
    lines = (line.decode("latin-1").strip() for line in raw.split(b"\n"))
    return [line for line in lines if line]


def load_corpus(directory: Path | None = None) -> tuple[list[str], np.ndarray]:
    """All sentences and their labels (1 = positive, 0 = negative), positives first."""
    directory = data_dir() if directory is None else Path(directory)
    try:
        pos = read_lines((directory / "rt-polarity.pos").read_bytes())
        neg = read_lines((directory / "rt-polarity.neg").read_bytes())
    except OSError as exc:
        raise ExactformerError(f"cannot read the rt-polarity corpus: {exc}") from None
    labels = np.r_[np.ones(len(pos), dtype=np.int64), np.zeros(len(neg), dtype=np.int64)]
    return pos + neg, labels


def tokenize(text: str) -> list[str]:
    """Lowercase, then words (letters/digits, inner ``'`` or ``-`` kept) and single
    punctuation marks: ``"Don't stop-motion!"`` → ``["don't", "stop-motion", "!"]``."""
    return TOKEN_RE.findall(text.lower())


@dataclass
class Vocabulary:
    """Word ↔ id map built on the training split only (ids 0 and 1 are padding and unknown)."""

    itos: list[str]
    counts: dict[str, int] = field(repr=False)

    def __post_init__(self):
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    @classmethod
    def build(cls, sentences: list[list[str]], min_count: int = 1) -> Vocabulary:
        counts = Counter(w for s in sentences for w in s)
        # most frequent first, ties alphabetically: deterministic ids
        words = sorted((w for w, c in counts.items() if c >= min_count),
                       key=lambda w: (-counts[w], w))
        return cls(["<pad>", "<unk>", *words], dict(counts))

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: list[str]) -> list[int]:
        return [self.stoi.get(w, UNK) for w in tokens]


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # used for fitting
    val: np.ndarray  # carved from the 90 % training split: model selection only
    test: np.ndarray  # the 10 % test split: evaluated, never selected on


def split_indices(n: int, seed: int, test_frac: float = 0.1, val_frac: float = 0.1) -> Split:
    """Seeded 90/10 train/test split; ``val_frac`` of the training split becomes validation."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = int(round(test_frac * n))
    test, rest = perm[:n_test], perm[n_test:]
    n_val = int(round(val_frac * len(rest)))
    return Split(train=np.sort(rest[n_val:]), val=np.sort(rest[:n_val]), test=np.sort(test))


# ---------------------------------------------------------------------- baselines


def bag_of_words(sentences: list[list[str]], vocab: dict[str, int]):
    """Binary document-term matrix (scipy CSR) over ``vocab``; unknown terms are dropped."""
    from scipy.sparse import csr_matrix

    rows, cols = [], []
    for r, s in enumerate(sentences):
        ids = {vocab[t] for t in s if t in vocab}
        rows += [r] * len(ids)
        cols += sorted(ids)
    data = np.ones(len(rows))
    return csr_matrix((data, (rows, cols)), shape=(len(sentences), len(vocab)))


def with_bigrams(tokens: list[str]) -> list[str]:
    return tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:], strict=False)]


def fit_logistic(X, y: np.ndarray, l2: float) -> np.ndarray:
    """L2-regularised logistic regression by L-BFGS; returns ``[w, b]`` (bias not penalised)."""
    from scipy.optimize import minimize
    from scipy.special import expit, log_expit

    s = 2.0 * y - 1.0
    n = X.shape[0]

    def loss(theta):
        w, b = theta[:-1], theta[-1]
        m = s * (X @ w + b)
        f = -log_expit(m).mean() + 0.5 * l2 * w @ w
        g = -s * expit(-m) / n
        return f, np.r_[X.T @ g + l2 * w, g.sum()]

    res = minimize(loss, np.zeros(X.shape[1] + 1), jac=True, method="L-BFGS-B",
                   options={"maxiter": 1000})
    return res.x


def logistic_baseline(
    tokens: list[list[str]], labels: np.ndarray, split: Split, bigrams: bool = False,
    grid: tuple[float, ...] = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
) -> dict:
    """Bag-of-words logistic regression: L2 strength chosen on validation, then refitted on
    the whole training split (train + validation) and scored once on the test split.
    ``weights`` maps every term of the refitted model to its coefficient."""
    feats = [with_bigrams(t) for t in tokens] if bigrams else tokens

    def fit_eval(fit_idx, eval_idx, l2):
        vocab = {}
        for i in fit_idx:
            for t in feats[i]:
                vocab.setdefault(t, len(vocab))
        X = bag_of_words([feats[i] for i in fit_idx], vocab)
        theta = fit_logistic(X, labels[fit_idx], l2)
        Xe = bag_of_words([feats[i] for i in eval_idx], vocab)
        pred = (Xe @ theta[:-1] + theta[-1]) > 0
        return float(np.mean(pred == labels[eval_idx])), dict(zip(vocab, theta[:-1].tolist()))

    val_acc = {l2: fit_eval(split.train, split.val, l2)[0] for l2 in grid}
    best = max(grid, key=lambda l2: (val_acc[l2], l2))
    test_acc, weights = fit_eval(np.r_[split.train, split.val], split.test, best)
    return {"test_acc": test_acc, "l2": best,
            "val_acc": {repr(k): v for k, v in val_acc.items()}, "weights": weights}


# -------------------------------------------------------------------------- model


@dataclass
class Settings:
    """Everything that defines a run (stored in results.json). The fields named in
    :data:`SEARCH` are the defaults that the validation search overrides."""

    seed: int = 0
    quick: bool = False
    attention: str = "hardmax"  # hardmax (trained straight-through) or softmax
    dim: int = 16  # width d of the embedding; B is d×d, A = BᵀB
    iterations: int = 2  # K: the shared layer is applied K times
    alpha: float = 1.0  # z ← (z + α·attention(z)) / (1 + α): the residual keeps 1/(1+α)
    temperature: float = 1.0  # softmax temperature (also the straight-through surrogate)
    weight_decay: float = 0.0  # L2 on the embedding
    epochs: int = 4  # most epochs tried; 0 epochs = the unigram initialisation itself
    batch_size: int = 64
    lr: float = 2e-3
    dropout: float = 0.0  # on embeddings
    word_dropout: float = 0.1  # drop whole tokens during training
    min_count: int = 1
    #: keep the bag of words (embedding coordinate 0 and the read-out) fixed while training:
    #: only the attention geometry (B and coordinates 1…d−1) learns who leads whom
    freeze_polarity: bool = False
    #: > 1: train the attention geometry against *out-of-fold* polarities — each training
    #: sentence reads coordinate 0 from a bag of words fitted without its fold, so the
    #: attention sees the bag of words' real generalisation errors; implies a frozen
    #: polarity, and B ignores coordinate 0 so the full-data bag of words can be swapped in
    polarity_folds: int = 5
    #: where words sit for the attention scores (coordinates 1…d−1): "learned" (a random
    #: point of the sphere, trained) or "lsa" (the direction of the word's latent semantic
    #: vector — truncated SVD of the training sentences' term frequencies — fixed, so only
    #: B, d² numbers, learns which words lead)
    geometry: str = "learned"
    init: str = "unigram"  # unigram (polarity axis from the mean-pooled unigram LR) or random
    init_noise: float = 0.3  # std of the other embedding coordinates under unigram init
    subset: int | None = None  # use only this many sentences (quick mode)
    threads: int = 1  # small matrices: a second thread barely helps, and spins under load


#: Hyper-parameters chosen on the validation part (every combination, every epoch count
#: from 0 to ``Settings.epochs``); nothing is chosen on the test split.
SEARCH = {"geometry": ("lsa", "learned"), "iterations": (1, 2), "alpha": (0.3, 1.0),
          "temperature": (0.3, 1.0)}
QUICK_SEARCH = {"geometry": ("lsa", "learned")}


def quick_settings(seed: int = 0) -> Settings:
    return Settings(seed=seed, quick=True, dim=16, epochs=2, subset=2000)


def search_configs(grid: dict) -> list[dict]:
    """Every combination of the grid, in a fixed order (the tie-break of the search)."""
    import itertools

    keys = list(grid)
    return [dict(zip(keys, values, strict=True))
            for values in itertools.product(*(grid[k] for k in keys))]


def require_torch():
    """Import torch or raise a one-line user error (the CLI turns it into exit status 2)."""
    try:
        import torch
    except ImportError:
        raise ExactformerError(
            "this experiment needs PyTorch: pip install 'exactformer[torch]'"
        ) from None
    return torch


def term_frequencies(encoded: list[list[int]], n_words: int):
    """Sparse ``(sentences, n_words)`` matrix of count / length: the mean of one-hot words,
    i.e. what mean pooling sees of a sentence when the embedding is one-dimensional."""
    from scipy.sparse import csr_matrix

    rows = [r for r, s in enumerate(encoded) for _ in s]
    cols = [t for s in encoded for t in s]
    data = [1.0 / len(s) for s in encoded for _ in s]
    return csr_matrix((data, (rows, cols)), shape=(len(encoded), n_words))


def nb_log_ratios(encoded, labels, idx, n_words: int, smoothing: float) -> np.ndarray:
    """Naive-Bayes log-count ratio of every word on the sentences ``idx`` (Wang & Manning,
    *Baselines and bigrams*, ACL 2012): ``log(p/|p|₁) − log(q/|q|₁)`` with ``p`` (``q``)
    the number of positive (negative) sentences containing the word plus ``smoothing``.
    Padding gets 0."""
    p = np.full(n_words, float(smoothing))
    q = np.full(n_words, float(smoothing))
    for i in idx:
        np.add.at(p if labels[i] else q, np.unique(encoded[i]), 1.0)
    r = np.log(p / p.sum()) - np.log(q / q.sum())
    r[PAD] = 0.0
    return r


@dataclass
class UnigramInit:
    """Mean-pooled unigram logistic regression: ``logit = mean_i c[word_i] + b``.

    It is the classifier with one embedding coordinate and no attention (α = 0), so it is
    where training starts: the embedding's coordinate 0 is ``c``, the read-out is that
    coordinate, the bias ``b``. With ``nb_smoothing`` the regression is NB-weighted
    (NBSVM without interpolation, Wang & Manning 2012): it is fitted on the features
    ``tf ⊙ r`` with ``r`` the naive-Bayes log-count ratios (:func:`nb_log_ratios`), and
    ``c = weights ⊙ r`` — the same classifier form, with the L2 penalty shrinking words of
    small ``|r|`` harder. :meth:`fit_average` averages several such regressions
    coefficient by coefficient, which is again one ``(c, b)`` of the same form.
    """

    c: np.ndarray
    b: float
    l2: float | None
    nb_smoothing: float | None = None
    #: an average: the ``(nb_smoothing, l2)`` of every part, so :meth:`refit` can redo it
    parts: tuple = ()
    #: out-of-fold refits already made for cross-fitted training (same for every config)
    fold_cache: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def fit(cls, encoded, labels, idx, n_words: int, l2: float,
            nb_smoothing: float | None = None) -> UnigramInit:
        X = term_frequencies([encoded[i] for i in idx], n_words)
        r = None
        if nb_smoothing is not None:
            r = nb_log_ratios(encoded, labels, idx, n_words, nb_smoothing)
            X = X.multiply(r[None, :]).tocsr()
        theta = fit_logistic(X, labels[idx], l2)
        c = theta[:-1].copy() if r is None else theta[:-1] * r
        c[PAD] = 0.0
        return cls(c=c, b=float(theta[-1]), l2=l2, nb_smoothing=nb_smoothing)

    @classmethod
    def fit_average(cls, encoded, labels, idx, n_words: int, parts) -> UnigramInit:
        """The coefficient-wise mean of the regressions ``parts`` = ``((nb_smoothing, l2),
        …)`` fitted on ``idx``: the sign of its logit is that of their summed logits."""
        fits = [cls.fit(encoded, labels, idx, n_words, l2, nb) for nb, l2 in parts]
        return cls(c=np.mean([f.c for f in fits], axis=0),
                   b=float(np.mean([f.b for f in fits])), l2=None, parts=tuple(parts))

    def refit(self, encoded, labels, idx, n_words: int) -> UnigramInit:
        """The same recipe (L2, smoothing, average) fitted on other sentences."""
        if self.parts:
            return self.fit_average(encoded, labels, idx, n_words, self.parts)
        return self.fit(encoded, labels, idx, n_words, self.l2, self.nb_smoothing)

    def accuracy(self, encoded, labels, idx) -> float:
        X = term_frequencies([encoded[i] for i in idx], len(self.c))
        return float(np.mean(((X @ self.c + self.b) > 0) == labels[idx]))


#: The starting bag of words is the average of the plain and the NB-weighted regression,
#: each with its L2 strength (and NB smoothing) chosen on validation.
PLAIN_L2_GRID = (1e-7, 3e-7, 1e-6, 3e-6)
NB_GRID = tuple((nb, l2) for nb in (0.1, 0.25, 0.5, 1.0) for l2 in (3e-7, 1e-6, 3e-6))
QUICK_PLAIN_L2_GRID, QUICK_NB_GRID = (1e-6,), ((1.0, 1e-6),)


def lsa_directions(encoded, idx, n_words: int, k: int, seed: int) -> np.ndarray:
    """Unit vectors ``(n_words, k)``: each word's row of the rank-``k`` truncated SVD of the
    term-frequency matrix of the sentences ``idx`` (scaled by the singular values), made
    unit length; words absent from ``idx`` get a random direction."""
    from scipy.sparse.linalg import svds

    X = term_frequencies([encoded[i] for i in idx], n_words)
    rng = np.random.default_rng(seed)
    _, sv, vt = svds(X, k=k, v0=rng.standard_normal(min(X.shape)))
    V = vt.T * sv
    norm = np.linalg.norm(V, axis=1, keepdims=True)
    empty = norm[:, 0] < 1e-12
    V[empty] = rng.standard_normal((int(empty.sum()), k))
    return V / np.linalg.norm(V, axis=1, keepdims=True)


def make_model(settings: Settings, vocab_size: int, init: UnigramInit | None = None,
               directions: np.ndarray | None = None):
    """The classifier as a ``torch.nn.Module`` (class defined here so torch stays lazy).

    With ``init``: coordinate 0 of every word's embedding is its mean-pooled unigram
    coefficient, the other coordinates a random point of a sphere, the read-out is
    coordinate 0 and ``B`` projects coordinate 0 away. Scores then compare words on the
    sphere only, where every word strictly wins its own argmax (Cauchy–Schwarz; copies of a
    word tie with each other, and they are the same point): every word is its own leader,
    hardmax attention leaves the sentence unchanged and the untrained model *is* the
    mean-pooled unigram classifier. Training moves away from it only as far as the number
    of epochs chosen on validation (0 included) lets it. ``directions`` (unit rows, ``d−1``
    columns, e.g. :func:`lsa_directions`) replace the random points of the sphere.
    """
    torch = require_torch()
    nn = torch.nn

    class LeaderClassifier(nn.Module):
        """embedding → K × shared pure attention with normalisation → mean → linear."""

        def __init__(self):
            super().__init__()
            s = settings
            self.embed = nn.Embedding(vocab_size, s.dim, padding_idx=PAD)
            self.B = nn.Linear(s.dim, s.dim, bias=False)
            self.out = nn.Linear(s.dim, 1)
            self.drop = nn.Dropout(s.dropout)
            with torch.no_grad():
                if init is None:
                    nn.init.normal_(self.embed.weight, std=1.0 / s.dim**0.5)
                else:  # other coordinates: a sphere of radius init_noise·√(d−1)
                    noise = torch.randn(vocab_size, s.dim - 1)
                    if directions is not None:
                        noise = torch.from_numpy(directions).to(noise.dtype)
                    noise *= s.init_noise * (s.dim - 1) ** 0.5 / noise.norm(dim=1, keepdim=True)
                    self.embed.weight[:, 1:] = noise
                    self.embed.weight[:, 0] = torch.from_numpy(init.c)
                    self.B.weight.copy_(torch.eye(s.dim))
                    self.B.weight[0, 0] = 0.0
                    self.out.weight.zero_()
                    self.out.weight[0, 0] = 1.0
                    self.out.bias.fill_(init.b)
                self.embed.weight[PAD].zero_()

        def attention(self, z, pad, mode):
            q = self.B(z)
            s = q @ q.transpose(1, 2)  # ⟨A z_i, z_j⟩ with A = BᵀB
            s = s.masked_fill(pad[:, None, :], float("-inf"))
            soft = torch.softmax(s / settings.temperature, dim=-1)
            if mode == "softmax":
                return soft
            top = s.max(dim=-1, keepdim=True).values
            scale = s.masked_fill(pad[:, None, :], 0).abs().amax(dim=-1, keepdim=True)
            hard = (s >= top - 1e-6 * scale).to(z.dtype)
            hard = hard / hard.sum(dim=-1, keepdim=True)
            if mode == "hardmax":
                return hard
            return hard + soft - soft.detach()  # straight-through

        def forward(self, ids, mode="hardmax", return_states=False, polarity=None):
            pad = ids == PAD
            z = self.drop(self.embed(ids))
            if polarity is not None:  # coordinate 0 given per token (cross-fitted training)
                z = torch.cat([polarity[..., None].to(z.dtype), z[..., 1:]], dim=-1)
            states = [z]
            a = settings.alpha
            for _ in range(settings.iterations):
                z = (z + a * self.attention(z, pad, mode) @ z) / (1 + a)
                states.append(z)
            keep = (~pad).to(z.dtype)[..., None]
            pooled = (z * keep).sum(1) / keep.sum(1).clamp(min=1)
            logit = self.out(pooled).squeeze(-1)
            return (logit, states) if return_states else logit

    return LeaderClassifier()


def _pad(batch: list[list[int]]) -> np.ndarray:
    n = max(1, max(len(s) for s in batch))
    out = np.zeros((len(batch), n), dtype=np.int64)
    for i, s in enumerate(batch):
        out[i, : len(s)] = s
    return out


def _length_batches(lengths: np.ndarray, batch_size: int, rng) -> list[np.ndarray]:
    """Shuffled batches of positions whose sentences have similar lengths (little padding):
    shuffle, sort within windows of 20 batches, cut, shuffle the batches."""
    order = rng.permutation(len(lengths))
    window = 20 * batch_size
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[k] for k in rng.permutation(len(batches))]


def _logits(model, encoded, mode, batch_size=512) -> np.ndarray:
    torch = require_torch()
    model.eval()
    order = np.argsort([len(s) for s in encoded], kind="stable")
    out = np.zeros(len(encoded))
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            ids = torch.from_numpy(_pad([encoded[i] for i in idx]))
            out[idx] = model(ids, mode=mode).double().numpy()
    return out


def _accuracy(model, encoded, labels, mode) -> float:
    return float(np.mean((_logits(model, encoded, mode) > 0) == labels)) if encoded else 0.0


def train_model(settings, n_words, encoded, labels, fit_idx, init=None, val_idx=None,
                on_epoch=None) -> tuple:
    """Train with Adam for ``settings.epochs`` epochs on ``fit_idx``. With ``val_idx`` the
    validation accuracy (in the mode that will be reported) is recorded before training
    and after every epoch. Returns ``(model, history)``."""
    torch = require_torch()
    torch.manual_seed(settings.seed)
    torch.set_num_threads(settings.threads)
    rng = np.random.default_rng(settings.seed)
    directions = None
    if settings.geometry == "lsa" and init is not None:
        key = ("lsa", np.asarray(fit_idx).tobytes(), settings.dim, settings.seed)
        if key not in init.fold_cache:
            init.fold_cache[key] = lsa_directions(encoded, fit_idx, n_words,
                                                  settings.dim - 1, settings.seed)
        directions = init.fold_cache[key]
    model = make_model(settings, n_words, init, directions)
    if directions is not None:
        model.embed.weight.requires_grad_(False)
    opt = torch.optim.Adam([
        {"params": [model.embed.weight], "weight_decay": settings.weight_decay},
        {"params": [model.B.weight, model.out.weight, model.out.bias], "weight_decay": 0.0},
    ], lr=settings.lr)
    frozen, oof = None, None
    if init is not None and (settings.freeze_polarity or settings.polarity_folds > 1):
        model.out.requires_grad_(False)
        frozen = model.embed.weight[:, 0].detach().clone()
    if settings.polarity_folds > 1 and init is not None:
        fold = rng.permutation(len(fit_idx)) % settings.polarity_folds
        key = (np.asarray(fit_idx).tobytes(), settings.seed, settings.polarity_folds)
        if key not in init.fold_cache:
            init.fold_cache[key] = np.stack([
                init.refit(encoded, labels, fit_idx[fold != f], n_words).c
                for f in range(settings.polarity_folds)])
        oof = init.fold_cache[key]
    loss_fn = torch.nn.BCEWithLogitsLoss()
    train_mode = "straight-through" if settings.attention == "hardmax" else "softmax"
    tr = [encoded[i] for i in fit_idx]
    y_tr = labels[fit_idx].astype(np.float32)
    lengths = np.array([len(s) for s in tr])
    va = [encoded[i] for i in val_idx] if val_idx is not None else None

    def record(epoch, loss):
        entry = {"epoch": epoch, "loss": loss}
        if va is not None:
            entry["val_acc"] = _accuracy(model, va, labels[val_idx], settings.attention)
        history.append(entry)

    history: list[dict] = []
    record(0, None)
    for epoch in range(settings.epochs):
        model.train()
        total = 0.0
        for idx in _length_batches(lengths, settings.batch_size, rng):
            batch = []
            for i in idx:  # word dropout: remove whole tokens, keep at least one
                s = tr[i]
                keep = [t for t, r in zip(s, rng.random(len(s)), strict=True)
                        if r >= settings.word_dropout]
                batch.append(keep or s[:1])
            ids = _pad(batch)
            polarity = None
            if oof is not None:  # each sentence's words with its fold's polarities
                polarity = torch.from_numpy(oof[fold[idx][:, None], ids])
            ids = torch.from_numpy(ids)
            loss = loss_fn(model(ids, mode=train_mode, polarity=polarity),
                           torch.from_numpy(y_tr[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if frozen is not None:  # undo the step (and weight decay) on the bag of words
                with torch.no_grad():
                    model.embed.weight[:, 0] = frozen
                    if oof is not None:  # attention must not read the polarity
                        model.B.weight[:, 0] = 0.0
            total += float(loss.detach()) * len(idx)
        record(epoch + 1, total / max(1, len(tr)))
        if on_epoch:
            on_epoch()
    model.eval()
    return model, history


def one_standard_error_choice(table: list[dict], n_val: int) -> dict:
    """The one-standard-error rule on a search table (rows ``{"config", "val_acc": [accuracy
    after 0, 1, … epochs]}``): ``best`` is the highest validation accuracy, ``se`` its
    binomial standard error ``√(best·(1−best)/n_val)``; among the (configuration, epochs)
    within ``se`` of ``best`` the fewest epochs win, then the higher accuracy, then the
    earlier configuration. Training gains smaller than the noise of the validation part
    are not taken (0 epochs is the bag of words itself)."""
    best = max(max(row["val_acc"]) for row in table)
    se = float(np.sqrt(best * (1 - best) / max(n_val, 1)))
    candidates = [(epochs, -acc, k) for k, row in enumerate(table)
                  for epochs, acc in enumerate(row["val_acc"]) if acc >= best - se - 1e-12]
    epochs, neg_acc, k = min(candidates)
    return {"row": k, "epochs": epochs, "val_acc": -neg_acc, "best_val_acc": best,
            "standard_error": se, "rule": "fewest epochs within one standard error of the"
            " best validation accuracy, then the higher accuracy, then the earlier"
            " configuration"}


def select_on_validation(settings, grid, n_words, encoded, labels, split, init,
                         on_epoch=None) -> tuple[dict, dict, list]:
    """Train every configuration of ``grid`` on the training part, record the validation
    accuracy after every epoch (0 included) and choose by
    :func:`one_standard_error_choice`. Returns ``(config, choice, table)``."""
    from dataclasses import replace

    table = []
    for config in search_configs(grid):
        _, history = train_model(replace(settings, **config), n_words, encoded, labels,
                                 split.train, init, split.val, on_epoch)
        table.append({"config": config, "val_acc": [h["val_acc"] for h in history]})
    choice = one_standard_error_choice(table, len(split.val))
    return table[choice["row"]]["config"], choice, table


# ------------------------------------------------------------------ interpretation


@dataclass
class SentenceReading:
    """How the trained layer reads one sentence (numpy, exact hardmax dynamics).

    ``leader[i]`` — word ``i`` is a leader (wins its own argmax, so it never moves);
    ``cluster_of[i]`` — index of the leader word that word ``i`` converges to when the layer
    is iterated to convergence (``-1``: held at a tie); ``contribution[i]`` — the word's share
    of the logit after the model's ``K`` layers, ``⟨w, z_i^K⟩ / n``; ``main_leader`` — the
    word that receives the most attention (:func:`main_leader`).
    """

    words: list[str]
    leader: list[bool]
    cluster_of: list[int]
    contribution: list[float]
    logit: float
    label: int
    main_leader: int


def read_sentence(words, ids, label, E, A, w, b, settings) -> SentenceReading:
    from ..dynamics import leaders, limit_configuration, simulate, step

    Z0 = E[ids]
    Z = Z0
    for _ in range(settings.iterations):
        Z = step(Z, A, settings.alpha, settings.attention, settings.temperature)
    contrib = (Z @ w) / len(ids)
    traj = simulate(Z0, A, alpha=settings.alpha, max_steps=400, tol=1e-9)
    lc = limit_configuration(traj, atol=1e-5)
    lead = set(leaders(Z0, A).tolist())
    moved = np.linalg.norm(traj.final - Z0, axis=1)
    anchor = {}
    for c in range(lc.n_clusters):
        members = np.flatnonzero(lc.labels == c)
        anchor[c] = -1 if lc.kind[c] == "tie" else int(members[np.argmin(moved[members])])
    return SentenceReading(
        words=list(words),
        leader=[i in lead for i in range(len(ids))],
        cluster_of=[i if i in lead else anchor[c] for i, c in enumerate(lc.labels)],
        contribution=contrib.tolist(),
        logit=float(contrib.sum() + b),
        label=int(label),
        main_leader=main_leader(Z0, A, settings),
    )


def main_leader(Z0: np.ndarray, A: np.ndarray, settings: Settings) -> int:
    """The token that receives the most attention: largest column sum of the attention
    matrices of the model's ``K`` applications. Ties (e.g. every word its own leader) go
    to the largest self-score ``⟨A z_j, z_j⟩`` of the embedded word, then to the first."""
    from ..dynamics import attention_weights, step

    Z, received = Z0, np.zeros(len(Z0))
    for _ in range(settings.iterations):
        received += attention_weights(Z, A, settings.attention, settings.temperature).sum(0)
        Z = step(Z, A, settings.alpha, settings.attention, settings.temperature)
    top = np.flatnonzero(received >= received.max() - 1e-9 * settings.iterations * len(Z0))
    self_score = np.einsum("id,de,ie->i", Z0[top], A, Z0[top])
    return int(top[np.argmax(self_score)])


def leader_rates(leaders: list[str], sentences: list[list[str]], predictions: list[bool],
                 polarity: dict[str, float], top_frac: float = 0.1) -> dict:
    """How the main leaders relate to the unigram model's word polarities.

    ``polarity`` maps words to unigram logistic-regression coefficients; the top
    ``top_frac`` of its words by ``|coefficient|`` are the *polar* words. Returns the rate
    of sentences whose main leader is polar, the rate whose prediction (True = positive)
    has the sign of the leader's coefficient (a word unknown to the unigram model has
    coefficient 0 and never agrees), and both rates for a uniformly random token of the
    sentence instead of the leader (chance levels)."""
    ranked = sorted(polarity, key=lambda wd: (-abs(polarity[wd]), wd))
    polar = set(ranked[: int(np.ceil(top_frac * len(ranked)))])

    def agrees(word, positive):
        return np.sign(polarity.get(word, 0.0)) == (1 if positive else -1)

    return {
        "leader_in_top10": float(np.mean([wd in polar for wd in leaders])),
        "prediction_agrees_with_leader": float(np.mean(
            [agrees(wd, p) for wd, p in zip(leaders, predictions, strict=True)])),
        "chance_in_top10": float(np.mean([np.mean([wd in polar for wd in s])
                                          for s in sentences])),
        "chance_agrees": float(np.mean([np.mean([agrees(wd, p) for wd in s])
                                        for s, p in zip(sentences, predictions, strict=True)])),
        "top_frac": top_frac,
        "n_polar_words": len(polar),
        "n_sentences": len(leaders),
    }


def _html_page(readings: list[SentenceReading]) -> str:
    import html

    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
               "#7f7f7f", "#bcbd22", "#17becf"]
    parts = [
        "<!doctype html><meta charset='utf-8'><title>leaders</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        ".s{margin:1.2em 0;line-height:2.6}.w{padding:2px 3px;border-radius:3px;"
        "border-bottom:4px solid}.L{font-weight:bold;outline:2px solid #000}"
        "sub{color:#555}</style>",
        "<h1>Leaders and clusters in test sentences</h1>",
        "<p>Each word is underlined in the colour of its cluster; <b>boxed bold</b> words are"
        " leaders (they win their own argmax and never move); the subscript names the leader a"
        " word converges to; ★ marks the main leader (the word receiving the most attention)."
        " Background: the word's share of the logit after the model's"
        " layers (green = positive, red = negative).</p>",
    ]
    for r in readings:
        scale = max(1e-9, max(abs(c) for c in r.contribution))
        heads = sorted({c for c in r.cluster_of if c >= 0})
        colour = {c: palette[k % len(palette)] for k, c in enumerate(heads)}
        spans = []
        for i, word in enumerate(r.words):
            c = r.cluster_of[i]
            x = r.contribution[i] / scale
            bg = f"rgba(0,160,0,{0.45 * x:.2f})" if x > 0 else f"rgba(220,0,0,{-0.45 * x:.2f})"
            sub = "" if r.leader[i] or c < 0 else f"<sub>→{html.escape(r.words[c])}</sub>"
            cls = "w L" if r.leader[i] else "w"
            star = "<sup>★</sup>" if i == r.main_leader else ""
            spans.append(f"<span class='{cls}' style='background:{bg};border-color:"
                         f"{colour.get(c, '#000')}'>{html.escape(word)}</span>{star}{sub}")
        verdict = "positive" if r.logit > 0 else "negative"
        truth = "positive" if r.label else "negative"
        parts.append(f"<div class='s'>{' '.join(spans)}<br><small>predicted {verdict}"
                     f" (logit {r.logit:+.2f}), true {truth}</small></div>")
    return "\n".join(parts)


def _save_figure(fig, path: Path) -> None:
    from ..dataset import write_atomic

    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110))


def _plots(out: Path, vocab, E, w, top_leaders, train_counts):
    from ..figures import pyplot

    plt = pyplot()

    # top leader words per class
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    for ax, cls in zip(axes, ["negative", "positive"], strict=True):
        items = top_leaders[cls][:15][::-1]
        ax.barh([x["word"] for x in items], [x["count"] for x in items],
                color="tab:red" if cls == "negative" else "tab:green")
        ax.set_title(f"leaders in test sentences predicted {cls}")
        ax.set_xlabel("sentences where the word is a leader\n(words that lead ≥ 50 % of the time)")
    fig.tight_layout()
    _save_figure(fig, out / "leaders_per_class.png")
    plt.close(fig)

    # PCA of the embeddings of frequent words, leaders highlighted
    frequent = [i for i in range(2, len(vocab)) if train_counts.get(vocab.itos[i], 0) >= 20]
    frequent = frequent[:600]
    X = E[frequent]
    Xc = X - X.mean(axis=0)
    _, _, Vt = np.linalg.svd(Xc, full_matrices=False)
    P = Xc @ Vt[:2].T
    pol = X @ w
    lead_words = {x["word"] for cls in top_leaders for x in top_leaders[cls][:12]}
    fig, ax = plt.subplots(figsize=(8, 7))
    lim = np.abs(pol).max()
    sc = ax.scatter(P[:, 0], P[:, 1], c=pol, cmap="RdYlGn", vmin=-lim, vmax=lim, s=10)
    for k, i in enumerate(frequent):
        if vocab.itos[i] in lead_words:
            ax.scatter(P[k, 0], P[k, 1], s=60, facecolor="none", edgecolor="k")
            ax.annotate(vocab.itos[i], P[k], fontsize=8, xytext=(3, 3),
                        textcoords="offset points")
    fig.colorbar(sc, label="read-out ⟨w, e(word)⟩ (green: positive)")
    ax.set_title("word embeddings (PCA, words seen ≥ 20 times); circled: frequent leaders")
    fig.tight_layout()
    _save_figure(fig, out / "embeddings_pca.png")
    plt.close(fig)


# ---------------------------------------------------------------------------- run


def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` → ``[0, 1, 2, 3, 4]``; ``"0,2,7"`` → ``[0, 2, 7]``; ranges and lists mix
    (``"0-2,9"``). Seeds are non-negative, distinct, kept in the given order."""
    seeds: list[int] = []
    for part in text.replace(" ", "").split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ExactformerError(
                f"--seeds: expected a list like 0,1,2 or a range like 0-4, got {text!r}")
        lo, hi = int(m[1]), int(m[2] if m[2] is not None else m[1])
        if hi < lo:
            raise ExactformerError(f"--seeds: empty range {part!r}")
        seeds += range(lo, hi + 1)
    if len(set(seeds)) != len(seeds):
        raise ExactformerError(f"--seeds: a seed is repeated in {text!r}")
    return seeds


def summarize(values) -> dict:
    """Per-seed values with their mean and sample standard deviation (None for one seed)."""
    v = np.asarray(values, dtype=float)
    return {"per_seed": v.tolist(), "mean": float(v.mean()),
            "std": float(v.std(ddof=1)) if len(v) > 1 else None}


def paired_difference(a, b, level: float = 0.95) -> dict:
    """``a − b`` seed by seed (both measured on the same split), its mean, standard
    deviation and the Student-t interval of the mean (None for one seed)."""
    from scipy.stats import t

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    out = summarize(d)
    if len(d) > 1:
        half = t.ppf(0.5 + level / 2, len(d) - 1) * out["std"] / np.sqrt(len(d))
        out["interval"] = [out["mean"] - half, out["mean"] + half]
    else:
        out["interval"] = None
    out["level"] = level
    return out


def leader_summary(rates: list[dict]) -> dict:
    """Per-seed :func:`leader_rates` → both rates summarised over seeds, and their chance
    levels averaged."""
    return {
        "leader_in_top10": summarize([r["leader_in_top10"] for r in rates]),
        "prediction_agrees_with_leader": summarize(
            [r["prediction_agrees_with_leader"] for r in rates]),
        "chance": {"in_top10": float(np.mean([r["chance_in_top10"] for r in rates])),
                   "agrees": float(np.mean([r["chance_agrees"] for r in rates]))}}


def results_table(results: dict) -> str:
    """The README's markdown table, generated from ``results.json``."""
    seeds = results["seeds"]
    trained = results.get("trained_attention")
    cols = [("model (test)", results["model"]), ("validation", results["model_val"]),
            ("epochs chosen", results["epochs_chosen"]),
            ("unigram LR", results["unigram"]), ("uni+bigram LR", results["bigram"]),
            ("attention off", results["unigram_mean_pooled"]),
            ("model − unigram", results["model_minus_unigram"])]
    if trained is not None:
        cols += [("trained attention (test)", trained["test_acc"]),
                 ("its leader in top 10 %", trained["leader_in_top10"]),
                 ("agrees with its leader", trained["prediction_agrees_with_leader"])]
    else:
        cols += [("leader in top 10 %", results["leader_in_top10"]),
                 ("agrees with leader", results["prediction_agrees_with_leader"])]

    def fmt(x, name):
        if x is None:
            return "—"
        if name == "epochs chosen":
            return f"{x:.2f}".rstrip("0").rstrip(".")
        return f"{x:.3f}"

    lines = ["| seed | " + " | ".join(c for c, _ in cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    for k, seed in enumerate(seeds):
        lines.append(f"| {seed} | " + " | ".join(fmt(v["per_seed"][k], c) for c, v in cols)
                     + " |")
    lines.append("| mean | " + " | ".join(fmt(v["mean"], c) for c, v in cols) + " |")
    lines.append("| std | " + " | ".join(fmt(v["std"], c) for c, v in cols) + " |")
    lines.append("")

    def interval(name, d):
        if d["interval"] is not None:
            lo, hi = d["interval"]
            lines.append(f"Paired difference {name}: {d['mean']:+.4f}, "
                         f"{100 * d['level']:.0f} % interval [{lo:+.4f}, {hi:+.4f}] "
                         f"(Student t over {len(seeds)} seeds).")
            lines.append("")

    interval("model − unigram LR", results["model_minus_unigram"])
    if trained is not None:
        interval("trained attention − attention off", trained["minus_attention_off"])
    chance = (trained or results)["chance"]
    lines.append(f"Chance levels (a random token of the sentence instead of its main leader): "
                 f"in top 10 % {chance['in_top10']:.3f}, agrees {chance['agrees']:.3f}.")
    return "\n".join(lines) + "\n"


def _write_text(path: Path, text: str) -> None:
    from ..dataset import write_atomic

    write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def run_seed(settings: Settings, texts, labels, grid: dict, on_epoch=None) -> tuple:
    """One seed: baselines, validation search, refit on train + validation, test once.
    Returns ``(entry for results.json, artefacts for the pictures)``."""
    from dataclasses import replace

    cpu0, wall0 = time.process_time(), time.perf_counter()
    if settings.subset is not None and settings.subset < len(texts):
        keep = np.sort(np.random.default_rng(settings.seed).permutation(len(texts))[
            : settings.subset])
        texts, labels = [texts[i] for i in keep], labels[keep]
    tokens = [tokenize(t) for t in texts]
    split = split_indices(len(texts), settings.seed)
    full = np.r_[split.train, split.val]

    # quick mode checks the pipeline: one regularisation strength, no selection
    lr_grid = (1e-3,) if settings.quick else (3e-5, 1e-4, 3e-4, 1e-3, 3e-3)
    base = logistic_baseline(tokens, labels, split, grid=lr_grid)
    base2 = logistic_baseline(tokens, labels, split, bigrams=True, grid=lr_grid)
    polarity = base.pop("weights")
    base2.pop("weights")

    # selection on validation: vocabulary and initialisation from the training part only
    vocab = Vocabulary.build([tokens[i] for i in split.train], settings.min_count)
    encoded = [vocab.encode(t) for t in tokens]
    plain_grid = QUICK_PLAIN_L2_GRID if settings.quick else PLAIN_L2_GRID
    nb_grid = QUICK_NB_GRID if settings.quick else NB_GRID
    init_val = {(nb, l2): UnigramInit.fit(encoded, labels, split.train, len(vocab), l2, nb)
                .accuracy(encoded, labels, split.val)
                for nb, l2 in [(None, x) for x in plain_grid] + list(nb_grid)}
    # ties: the strongest L2, then the largest smoothing
    parts = tuple(max(grid_part, key=lambda k: (init_val[k], k[1], k[0] or 0))
                  for grid_part in ([(None, x) for x in plain_grid], nb_grid))
    init = UnigramInit.fit_average(encoded, labels, split.train, len(vocab), parts)
    init_val["average"] = init.accuracy(encoded, labels, split.val)
    if settings.init == "random":
        init = None
    config, choice, table = select_on_validation(settings, grid, len(vocab), encoded, labels,
                                                 split, init, on_epoch)
    epochs = choice["epochs"]
    chosen = replace(settings, **config, epochs=epochs)

    # refit on train + validation (as the baselines do), evaluate the test split once
    vocab = Vocabulary.build([tokens[i] for i in full], settings.min_count)
    encoded = [vocab.encode(t) for t in tokens]
    init_full = init.refit(encoded, labels, full, len(vocab))
    te = [encoded[i] for i in split.test]

    def refit_and_test(chosen: Settings) -> tuple:
        model, history = train_model(chosen, len(vocab), encoded, labels, full,
                                     None if settings.init == "random" else init_full,
                                     on_epoch=on_epoch)
        pred = _logits(model, te, chosen.attention) > 0
        E, A, _, _ = model_arrays(model)
        leaders = [tokens[i][main_leader(E[encoded[i]], A, chosen)] for i in split.test]
        return model, {
            "test_acc": float(np.mean(pred == labels[split.test])),
            "leaders": leader_rates(leaders, [tokens[i] for i in split.test], pred.tolist(),
                                    polarity),
            "refit_history": history}

    chosen = replace(settings, **config, epochs=choice["epochs"])
    model, result = refit_and_test(chosen)
    other = "softmax" if chosen.attention == "hardmax" else "hardmax"
    # diagnostic, never selected on test: the attention model trained at least one epoch
    # with the best validation accuracy (the chosen model itself when it trained)
    k, t_epochs = max(((k, e) for k in range(len(table))
                       for e in range(1, len(table[k]["val_acc"]))),
                      key=lambda ke: (table[ke[0]]["val_acc"][ke[1]], -ke[1], -ke[0]),
                      default=(None, 0))
    trained, trained_model = None, model
    if k is not None:
        trained_settings = replace(settings, **table[k]["config"], epochs=t_epochs)
        if trained_settings == chosen:
            trained = {**result, "config": table[k]["config"], "epochs": t_epochs,
                       "val_acc": table[k]["val_acc"][t_epochs], "same_as_chosen": True}
        else:
            trained_model, r = refit_and_test(trained_settings)
            trained = {**r, "config": table[k]["config"], "epochs": t_epochs,
                       "val_acc": table[k]["val_acc"][t_epochs], "same_as_chosen": False}
        chosen_for_pictures = trained_settings
    else:
        chosen_for_pictures = chosen
    entry = {
        "seed": settings.seed,
        "test_acc": result["test_acc"],
        "test_acc_other_attention": {
            other: _accuracy(model, te, labels[split.test], other)},
        "val_acc": choice["val_acc"],
        "chosen": {**config, "epochs": choice["epochs"]},
        "selection": {k: v for k, v in choice.items() if k != "row"},
        "baseline": base["test_acc"],
        "baseline_bigram": base2["test_acc"],
        "unigram_mean_pooled": {"test_acc": init_full.accuracy(encoded, labels, split.test),
                                "parts": [{"nb_smoothing": nb, "l2": l2} for nb, l2 in parts],
                                "val_acc": {str(k): v for k, v in init_val.items()}},
        "leaders": result["leaders"],
        "trained_attention": trained,
        "sizes": {"train": len(split.train), "val": len(split.val),
                  "test": len(split.test), "vocab": len(vocab)},
        "baseline_details": {"unigram": base, "bigram": base2},
        "search": table,
        "refit_history": result["refit_history"],
        "cpu_seconds": time.process_time() - cpu0,
        "wall_seconds": time.perf_counter() - wall0,
    }
    # the pictures show how trained attention reads sentences
    return entry, (trained_model, chosen_for_pictures, vocab, tokens, encoded, labels, split)


def model_arrays(model) -> tuple:
    """``(E, A, w, b)`` of a trained model in float64 numpy (``A = BᵀB``)."""
    E = model.embed.weight.detach().double().numpy()
    Bm = model.B.weight.detach().double().numpy()
    w = model.out.weight.detach().double().numpy()[0]
    return E, Bm.T @ Bm, w, float(model.out.bias.detach())


def write_readings(out: Path, artefacts, n_examples: int = 8) -> dict:
    """The HTML page of leaders and clusters, the per-class leader words and the PCA
    picture, for one trained model (exact hardmax dynamics in numpy)."""
    model, settings, vocab, tokens, encoded, labels, split = artefacts
    E, A, w, b = model_arrays(model)
    readings = []
    leader_counts = {"negative": Counter(), "positive": Counter()}
    occurrences = {"negative": Counter(), "positive": Counter()}
    for j, i in enumerate(split.test):
        ids = encoded[i]
        r = read_sentence(tokens[i], ids, labels[i], E, A, w, b, settings)
        cls = "positive" if r.logit > 0 else "negative"
        leader_counts[cls].update({r.words[k] for k in range(len(ids)) if r.leader[k]})
        occurrences[cls].update(set(r.words))
        if j < n_examples or (len(readings) < n_examples and 6 <= len(ids) <= 25):
            readings.append(r)
    readings = [r for r in readings if 4 <= len(r.words) <= 30][:n_examples] or readings[:1]
    _write_text(out / "sentences.html", _html_page(readings))
    # words that usually lead when they occur, ranked by how often they lead
    top = {
        cls: [
            {"word": wd, "count": c, "rate": c / occurrences[cls][wd],
             "readout": float(E[vocab.stoi.get(wd, UNK)] @ w)}
            for wd, c in leader_counts[cls].most_common()
            if c / occurrences[cls][wd] >= 0.5
        ][:30]
        for cls in leader_counts
    }
    _plots(out, vocab, E, w, top, vocab.counts)
    return {cls: top[cls][:15] for cls in top}


def run(out: Path, settings: Settings, seeds: list[int] | None = None, progress=None,
        grid: dict | None = None) -> dict:
    """Every seed: train, select on validation, evaluate; write ``results.json``,
    ``table.md`` and (for the first seed) the interpretability outputs into ``out``."""
    from dataclasses import replace

    torch = require_torch()
    seeds = [settings.seed] if seeds is None else list(seeds)
    grid = (QUICK_SEARCH if settings.quick else SEARCH) if grid is None else grid
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    load_before = _loadavg()
    texts, labels = load_corpus()
    n_trainings = len(search_configs(grid)) * settings.epochs + 2 * max(settings.epochs, 1)
    task = progress.add_task("training", total=len(seeds) * n_trainings) if progress else None
    entries, top = [], None
    for k, seed in enumerate(seeds):
        if progress:
            progress.update(task, description=f"seed {seed}")
        entry, artefacts = run_seed(replace(settings, seed=seed), texts, labels, grid,
                                    (lambda: progress.advance(task)) if progress else None)
        entries.append(entry)
        if k == 0:
            top = write_readings(out, artefacts)

    def col(f):
        return [f(e) for e in entries]

    model = col(lambda e: e["test_acc"])
    unigram = col(lambda e: e["baseline"])
    results = {
        "seeds": seeds,
        "model": summarize(model),
        "model_val": summarize(col(lambda e: e["val_acc"])),
        "unigram": summarize(unigram),
        "bigram": summarize(col(lambda e: e["baseline_bigram"])),
        "unigram_mean_pooled": summarize(col(lambda e: e["unigram_mean_pooled"]["test_acc"])),
        "model_minus_unigram": paired_difference(model, unigram),
        "epochs_chosen": summarize(col(lambda e: e["chosen"]["epochs"])),
        **leader_summary([e["leaders"] for e in entries]),
        "trained_attention": None if any(e["trained_attention"] is None for e in entries) else {
            "test_acc": summarize(col(lambda e: e["trained_attention"]["test_acc"])),
            "val_acc": summarize(col(lambda e: e["trained_attention"]["val_acc"])),
            **leader_summary([e["trained_attention"]["leaders"] for e in entries]),
            "minus_attention_off": paired_difference(
                col(lambda e: e["trained_attention"]["test_acc"]),
                col(lambda e: e["unigram_mean_pooled"]["test_acc"]))},
        "training": ("hardmax forward, straight-through softmax gradient (temperature chosen"
                     " on validation); evaluated with exact hardmax")
        if settings.attention == "hardmax" else "softmax, evaluated with softmax",
        "search_grid": grid,
        "per_seed": entries,
        "top_leaders_first_seed": top,
        "settings": asdict(settings),
        "cpu_seconds": time.process_time() - cpu0,
        "wall_seconds": time.perf_counter() - wall0,
        "load_average": {"before": load_before, "after": _loadavg()},
        "torch": torch.__version__,
    }
    _write_text(out / "results.json", json.dumps(results, indent=2))
    _write_text(out / "table.md", results_table(results))
    return results


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None

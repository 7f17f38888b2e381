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
``exactformer/data/rt-polarity`` (see the README there). Seeded 90/10 train/test split; a
validation part carved out of the training split is used for every choice (epoch, baseline
regularisation) — the test split is only evaluated, once per reported number.

Hardmax has no useful gradient, so hardmax models are trained with a straight-through
estimator (forward: exact hardmax; backward: gradient of softmax at temperature ``τ``);
evaluation uses the exact hardmax forward pass. ``results.json`` records which.

Everything that needs PyTorch imports it lazily, so ``import exactformer`` works without it.
"""

from __future__ import annotations

import json
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
    the whole training split (train + validation) and scored once on the test split."""
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
        return float(np.mean(pred == labels[eval_idx]))

    val_acc = {l2: fit_eval(split.train, split.val, l2) for l2 in grid}
    best = max(grid, key=lambda l2: (val_acc[l2], l2))
    full = np.r_[split.train, split.val]
    return {"test_acc": fit_eval(full, split.test, best), "l2": best,
            "val_acc": {repr(k): v for k, v in val_acc.items()}}


# -------------------------------------------------------------------------- model


@dataclass
class Settings:
    """Everything that defines a run (stored in results.json)."""

    seed: int = 0
    quick: bool = False
    attention: str = "hardmax"  # hardmax (trained straight-through) or softmax
    dim: int = 64
    rank: int = 64  # rows of B, A = BᵀB
    iterations: int = 2  # K: the shared layer is applied K times
    alpha: float = 1.0
    temperature: float = 1.0  # softmax temperature (also the straight-through surrogate)
    epochs: int = 12
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.0
    dropout: float = 0.5  # on embeddings
    word_dropout: float = 0.1  # drop whole tokens during training
    min_count: int = 1
    subset: int | None = None  # use only this many sentences (quick mode)
    threads: int = 1  # small matrices: a second thread barely helps, and spins under load


def quick_settings(seed: int = 0) -> Settings:
    return Settings(seed=seed, quick=True, dim=32, rank=32, epochs=10, lr=5e-3,
                    subset=2000, threads=1)


def require_torch():
    """Import torch or raise a one-line user error (the CLI turns it into exit status 2)."""
    try:
        import torch
    except ImportError:
        raise ExactformerError(
            "this experiment needs PyTorch: pip install 'exactformer[torch]'"
        ) from None
    return torch


def make_model(settings: Settings, vocab_size: int):
    """The classifier as a ``torch.nn.Module`` (class defined here so torch stays lazy)."""
    torch = require_torch()
    nn = torch.nn

    class LeaderClassifier(nn.Module):
        """embedding → K × shared pure attention with normalisation → mean → linear."""

        def __init__(self):
            super().__init__()
            s = settings
            self.embed = nn.Embedding(vocab_size, s.dim, padding_idx=PAD)
            self.B = nn.Linear(s.dim, s.rank, bias=False)
            self.out = nn.Linear(s.dim, 1)
            self.drop = nn.Dropout(s.dropout)
            nn.init.normal_(self.embed.weight, std=1.0 / s.dim**0.5)
            with torch.no_grad():
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

        def forward(self, ids, mode="hardmax", return_states=False):
            pad = ids == PAD
            z = self.drop(self.embed(ids))
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


def _accuracy(model, encoded, labels, mode, batch_size=512) -> float:
    torch = require_torch()
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            ids = torch.from_numpy(_pad(encoded[start : start + batch_size]))
            pred = (model(ids, mode=mode) > 0).numpy()
            correct += int((pred == labels[start : start + batch_size]).sum())
    return correct / max(1, len(encoded))


def train_model(settings, vocab, encoded, labels, split, progress=None) -> tuple:
    """Train with Adam, keep the epoch with the best validation accuracy (evaluated in the
    mode that will be reported). Returns ``(model, history, seconds)``."""
    torch = require_torch()
    torch.manual_seed(settings.seed)
    torch.set_num_threads(settings.threads)
    rng = np.random.default_rng(settings.seed)
    model = make_model(settings, len(vocab))
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr,
                           weight_decay=settings.weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    train_mode = "straight-through" if settings.attention == "hardmax" else "softmax"
    eval_mode = settings.attention
    tr = [encoded[i] for i in split.train]
    y_tr = labels[split.train].astype(np.float32)
    va = [encoded[i] for i in split.val]
    best, best_state, history = -1.0, None, []
    t0 = time.perf_counter()
    n_batches = -(-len(tr) // settings.batch_size)
    task = progress.add_task("training", total=settings.epochs * n_batches) if progress else None
    for epoch in range(settings.epochs):
        model.train()
        order = rng.permutation(len(tr))
        total = 0.0
        for start in range(0, len(tr), settings.batch_size):
            idx = order[start : start + settings.batch_size]
            batch = []
            for i in idx:  # word dropout: remove whole tokens, keep at least one
                s = tr[i]
                keep = [t for t in s if rng.random() >= settings.word_dropout]
                batch.append(keep or s[:1])
            ids = torch.from_numpy(_pad(batch))
            loss = loss_fn(model(ids, mode=train_mode), torch.from_numpy(y_tr[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            if progress:
                progress.advance(task)
        val_acc = _accuracy(model, va, labels[split.val], eval_mode)
        history.append({"epoch": epoch + 1, "loss": total / len(tr), "val_acc": val_acc})
        if val_acc > best:
            best = val_acc
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    seconds = time.perf_counter() - t0
    model.load_state_dict(best_state)
    model.eval()
    return model, history, seconds


# ------------------------------------------------------------------ interpretation


@dataclass
class SentenceReading:
    """How the trained layer reads one sentence (numpy, exact hardmax dynamics).

    ``leader[i]`` — word ``i`` is a leader (wins its own argmax, so it never moves);
    ``cluster_of[i]`` — index of the leader word that word ``i`` converges to when the layer
    is iterated to convergence (``-1``: held at a tie); ``contribution[i]`` — the word's share
    of the logit after the model's ``K`` layers, ``⟨w, z_i^K⟩ / n``.
    """

    words: list[str]
    leader: list[bool]
    cluster_of: list[int]
    contribution: list[float]
    logit: float
    label: int


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
    )


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
        " word converges to. Background: the word's share of the logit after the model's"
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
            spans.append(f"<span class='{cls}' style='background:{bg};border-color:"
                         f"{colour.get(c, '#000')}'>{html.escape(word)}</span>{sub}")
        verdict = "positive" if r.logit > 0 else "negative"
        truth = "positive" if r.label else "negative"
        parts.append(f"<div class='s'>{' '.join(spans)}<br><small>predicted {verdict}"
                     f" (logit {r.logit:+.2f}), true {truth}</small></div>")
    return "\n".join(parts)


def _plots(out: Path, vocab, E, w, top_leaders, train_counts):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # top leader words per class
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    for ax, cls in zip(axes, ["negative", "positive"], strict=True):
        items = top_leaders[cls][:15][::-1]
        ax.barh([x["word"] for x in items], [x["count"] for x in items],
                color="tab:red" if cls == "negative" else "tab:green")
        ax.set_title(f"leaders in test sentences predicted {cls}")
        ax.set_xlabel("sentences where the word is a leader\n(words that lead ≥ 50 % of the time)")
    fig.tight_layout()
    fig.savefig(out / "leaders_per_class.png", dpi=110)
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
    fig.savefig(out / "embeddings_pca.png", dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------- run


def run(out: Path, settings: Settings, progress=None, n_examples: int = 8) -> dict:
    """Train, evaluate, write ``results.json`` and the interpretability outputs into ``out``."""
    torch = require_torch()
    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    texts, labels = load_corpus()
    if settings.subset is not None and settings.subset < len(texts):
        keep = np.sort(np.random.default_rng(settings.seed).permutation(len(texts))[
            : settings.subset])
        texts, labels = [texts[i] for i in keep], labels[keep]
    tokens = [tokenize(t) for t in texts]
    split = split_indices(len(texts), settings.seed)
    vocab = Vocabulary.build([tokens[i] for i in split.train], settings.min_count)
    encoded = [vocab.encode(t) for t in tokens]

    t0 = time.perf_counter()
    # quick mode checks the pipeline: one regularisation strength, no selection
    grid = (1e-3,) if settings.quick else (3e-5, 1e-4, 3e-4, 1e-3, 3e-3)
    base = logistic_baseline(tokens, labels, split, grid=grid)
    base2 = logistic_baseline(tokens, labels, split, bigrams=True, grid=grid)
    baseline_seconds = time.perf_counter() - t0

    model, history, train_seconds = train_model(settings, vocab, encoded, labels, split,
                                                progress)
    te = [encoded[i] for i in split.test]
    test_acc = _accuracy(model, te, labels[split.test], settings.attention)
    other = "softmax" if settings.attention == "hardmax" else "hardmax"
    test_acc_other = _accuracy(model, te, labels[split.test], other)

    # interpretation in numpy with the exact hardmax dynamics of the trained layer
    E = model.embed.weight.detach().double().numpy()
    Bm = model.B.weight.detach().double().numpy()
    A = Bm.T @ Bm
    w = model.out.weight.detach().double().numpy()[0]
    b = float(model.out.bias.detach())
    readings = []
    leader_counts = {"negative": Counter(), "positive": Counter()}
    occurrences = {"negative": Counter(), "positive": Counter()}
    for j, i in enumerate(split.test):
        ids = encoded[i]
        if not ids:
            continue
        r = read_sentence([vocab.itos[t] if t != UNK else tokens[i][k]
                           for k, t in enumerate(ids)], ids, labels[i], E, A, w, b, settings)
        cls = "positive" if r.logit > 0 else "negative"
        leader_counts[cls].update({r.words[k] for k in range(len(ids)) if r.leader[k]})
        occurrences[cls].update(set(r.words))
        if j < n_examples or (len(readings) < n_examples and 6 <= len(ids) <= 25):
            readings.append(r)
    readings = [r for r in readings if 4 <= len(r.words) <= 30][:n_examples] or readings[:1]
    (out / "sentences.html").write_text(_html_page(readings), encoding="utf-8")
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

    results = {
        "test_acc": test_acc,
        "baseline": base["test_acc"],
        "baseline_bigram": base2["test_acc"],
        "test_acc_other_attention": {other: test_acc_other},
        "val_acc": max(h["val_acc"] for h in history),
        "best_epoch": int(np.argmax([h["val_acc"] for h in history])) + 1,
        "train_seconds": train_seconds,
        "baseline_seconds": baseline_seconds,
        "total_seconds": time.perf_counter() - t_start,
        "training": ("hardmax forward, straight-through softmax gradient "
                     f"(temperature {settings.temperature}); evaluated with exact hardmax")
        if settings.attention == "hardmax" else "softmax, evaluated with softmax",
        "sizes": {"train": len(split.train), "val": len(split.val), "test": len(split.test),
                  "vocab": len(vocab)},
        "baseline_details": {"unigram": base, "bigram": base2},
        "history": history,
        "top_leaders": {cls: top[cls][:15] for cls in top},
        "settings": asdict(settings),
        "torch": torch.__version__,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results

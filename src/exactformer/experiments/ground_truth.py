"""Ground truth for interpretability methods: can they find the mechanism we compiled?

A compiled model's mechanism is known exactly (:mod:`exactformer.mechanism`): the leaders
of every sequence, the collapse block, the destinations. Two standard methods run on the
PyTorch twin through its hook points (:mod:`exactformer.hooks`), without the annotation,
and are scored against it (docs/export.md, "Ground truth"):

* **attention inspection** — the attention layer whose patterns are most concentrated
  (largest mean top weight) is taken as the mechanism's layer; the keys that are some
  query's top key there are the recovered leaders;
* **activation patching** — for pairs of equal-length sequences (clean A, corrupted B),
  each block's added terms (``hook_mlp_out``, ``hook_attn_out``) in A's run are replaced
  by B's; the block's effect is the mean ``‖Y_patched − Y_A‖ / ‖Y_B − Y_A‖`` over
  pairs. Then, at the most effective attention block, each token's input state
  (``hook_resid_mid``) is replaced alone by the same position's state in B's run: the
  tokens whose patch changes *another* token's output are the recovered leaders.

Scores: precision and recall of the recovered leaders (over all tokens of all
sequences), and the rank of the collapse block (1 = top) under each method's block score.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

DATASETS = {  # name: (attention, compact, how the inputs are drawn, targets per sequence)
    "gaussian": ("hardmax", False, "gaussian", 1),
    "vocabulary": ("hardmax", False, "vocabulary", 1),
    "two-targets": ("hardmax", False, "gaussian", 2),
    "gaussian-softmax": ("softmax", False, "gaussian", 1),
    "gaussian-compact": ("hardmax", True, "gaussian", 1),
}


def make_dataset(kind: str, m: int, N: int, n: int, d: int, seed: int):
    import exactformer as ef

    rng = np.random.default_rng(seed)
    if kind == "vocabulary":  # tokens from 3N words: copies within and across sequences
        words = rng.integers(-3, 4, size=(3 * N, d)).astype(float)
        ins = [words[rng.choice(len(words), size=n)] for _ in range(N)]
    else:
        ins = [rng.normal(size=(n, d)) for _ in range(N)]
    return ef.Dataset.from_sequences(ins, [rng.normal(size=(m, d)) for _ in range(N)])


def attention_inspection(net, seqs) -> dict:
    """Per attention block its concentration; leaders from the most concentrated one."""
    import torch

    concentration, tops = {}, {}
    for j, x in enumerate(seqs):
        _, c = net.run_with_cache(torch.as_tensor(x), names_filter=lambda n: n.endswith(
            "hook_pattern"))
        for name, P in c.items():
            l = int(name.split(".")[1])
            P = P.reshape(P.shape[-2:]).numpy()
            if np.allclose(P, P[:, :1]):  # uniform: no key is singled out
                continue
            concentration.setdefault(l, []).append(float(P.max(axis=1).mean()))
            tops.setdefault(l, {})[j] = set(np.argmax(P, axis=1).tolist())
    score = {l: float(np.mean(v)) for l, v in concentration.items()}
    best = max(score, key=score.get) if score else None
    return {"block_score": score, "block": best,
            "leaders": [sorted(tops.get(best, {}).get(j, set())) for j in range(len(seqs))]}


def activation_patching(net, seqs, pairs) -> dict:
    """Block effects of patching added terms A ← B, then token patching at the top block."""
    import torch

    def run(x, hooks=()):
        return net.run_with_hooks(torch.as_tensor(x), fwd_hooks=list(hooks)).detach().numpy()

    names = [n for n in net.hook_dict if n.endswith(("hook_mlp_out", "hook_attn_out"))]
    effect = np.zeros(len(net.blocks))
    for a, b in pairs:
        ya, yb = run(seqs[a]), run(seqs[b])
        _, cb = net.run_with_cache(torch.as_tensor(seqs[b]), names_filter=names)
        span = max(np.linalg.norm(yb - ya), 1e-300)
        for l in range(len(net.blocks)):
            own = [n for n in names if n.startswith(f"blocks.{l}.")]
            if not own:
                continue
            hooks = [(n, (lambda v, hook, n=n, cb=cb: cb[n])) for n in own]
            effect[l] += np.linalg.norm(run(seqs[a], hooks) - ya) / span
    effect /= max(1, len(pairs))
    attn_blocks = [l for l, b in enumerate(net.blocks) if b.sa is not None and b.sa.rank > 0]
    top = max(attn_blocks, key=lambda l: effect[l]) if attn_blocks else None
    leaders = []
    site = f"blocks.{top}.hook_resid_mid"
    for j, x in enumerate(seqs):
        y = run(x)
        other = seqs[(j + 1) % len(seqs)]  # the corrupted run: the next sequence (same n)
        _, co = net.run_with_cache(torch.as_tensor(other), names_filter=[site])
        found = []
        for i in range(len(x)):
            def patch(v, hook, i=i, b=co[site]):
                v = v.clone()
                v[..., i, :] = b[..., i % b.shape[-2], :]
                return v
            yp = run(x, [(site, patch)])
            changed = np.abs(yp - y).max(axis=1) > 1e-9 * max(1.0, np.abs(y).max())
            changed[i] = False  # a token's own output always follows its own state
            if changed.any():
                found.append(i)
        leaders.append(found)
    return {"block_score": {int(l): float(e) for l, e in enumerate(effect)}, "block": top,
            "leaders": leaders}


def score(recovered, truth) -> dict:
    tp = sum(len(set(r) & set(t)) for r, t in zip(recovered, truth))
    n_rec, n_true = sum(len(r) for r in recovered), sum(len(t) for t in truth)
    return {"precision": tp / n_rec if n_rec else 0.0, "recall": tp / n_true if n_true else 0.0}


def rank_of(block_score: dict, block: int) -> int | None:
    if block not in block_score:
        return None
    return 1 + sum(1 for v in block_score.values() if v > block_score[block])


def run(out: Path, quick: bool = False, seed: int = 0, progress=None) -> dict:
    """Every dataset of :data:`DATASETS`: compile, inspect, patch, score; figure + JSON."""
    import exactformer as ef
    from exactformer.torch import TorchTransformer

    from ..dataset import write_atomic

    N, n, d = (6, 5, 4) if quick else (16, 8, 6)
    results = {}
    for k, (name, (attention, compact, kind, m)) in enumerate(DATASETS.items()):
        data = make_dataset(kind, m, N, n, d, seed + k)
        model = ef.compile(data, attention=attention, compact=compact)
        truth = model.info["mechanism"]
        net = TorchTransformer.from_model(model)
        seqs = data.inputs
        pairs = [(j, j + 1) for j in range(0, len(seqs) - 1, 2)]
        insp = attention_inspection(net, seqs)
        patch = activation_patching(net, seqs, pairs)
        c = truth["collapse_block"]
        results[name] = {
            "attention": attention, "mode": "compact" if compact else "strict",
            "inputs": kind, "targets_per_sequence": m,
            "N": N, "n": n, "d": d, "blocks": model.n_blocks, "collapse_block": c,
            "leaders_true": sum(len(t) for t in truth["leaders"]),
            "attention_inspection": {"block": insp["block"],
                                     "collapse_rank": rank_of(insp["block_score"], c),
                                     "of_blocks": len(insp["block_score"]),
                                     **score(insp["leaders"], truth["leaders"])},
            "activation_patching": {"block": patch["block"],
                                    "collapse_rank": rank_of(patch["block_score"], c),
                                    "of_blocks": model.n_blocks,
                                    **score(patch["leaders"], truth["leaders"])},
            "patching_effect": patch["block_score"],
            "block_kinds": [b.kind for b in model.blocks],
        }
        if progress is not None:
            progress("datasets", k + 1, len(DATASETS))
    _figure(results, out / "ground_truth.png")
    text = json.dumps(results, indent=1)
    write_atomic(out / "results.json", lambda tmp: Path(tmp).write_text(text))
    return results


def _figure(results: dict, path: Path) -> None:
    from ..figures import pyplot

    plt = pyplot()

    from ..dataset import write_atomic

    fig, axes = plt.subplots(len(results), 1, figsize=(8, 2.2 * len(results)), squeeze=False)
    for ax, (name, r) in zip(axes[:, 0], results.items()):
        eff = [r["patching_effect"][str(l)] if str(l) in r["patching_effect"] else
               r["patching_effect"].get(l, 0.0) for l in range(r["blocks"])]
        colours = ["C3" if l == r["collapse_block"] else "C0" for l in range(r["blocks"])]
        ax.bar(range(r["blocks"]), eff, color=colours)
        ap, ai = r["activation_patching"], r["attention_inspection"]
        ax.set_title(f"{name}: collapse block {r['collapse_block']} (red) ranks "
                     f"{ap['collapse_rank']}/{ap['of_blocks']} by patching; leaders P/R "
                     f"patching {ap['precision']:.2f}/{ap['recall']:.2f}, attention "
                     f"{ai['precision']:.2f}/{ai['recall']:.2f}", fontsize=8)
        ax.set_ylabel("patching effect", fontsize=8)
    axes[-1, 0].set_xlabel("block")
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)

"""Hook points and caches in TransformerLens's conventions (exactformer.hooks, trace.cache)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from exactformer.torch import TorchTransformer, pad_sequences  # noqa: E402
from exactformer.trace import cache  # noqa: E402
from test_torch_twin import random_model, random_sequences  # noqa: E402


def names_of(model, l):
    blk = model.blocks[l]
    p = f"blocks.{l}."
    names = [p + "hook_resid_pre"]
    if blk.ff is not None:
        names += [p + "mlp.hook_pre", p + "mlp.hook_post", p + "hook_mlp_out"]
    names.append(p + "hook_resid_mid")
    if blk.sa is not None:
        names += [p + f"attn.hook_{h}" for h in ("q", "k", "attn_scores", "pattern", "v", "z")]
        names.append(p + "hook_attn_out")
    return names + [p + "hook_resid_post"]


@pytest.mark.parametrize("attention", ["hardmax", "softmax"])
def test_numpy_and_torch_caches_agree_name_by_name(attention):
    model = random_model(12, n_blocks=6, attention=attention)
    seqs = random_sequences(12, [4, 1, 6])
    a = cache(model, seqs)
    b = cache(TorchTransformer.from_model(model), seqs)
    expected = [n for l in range(model.n_blocks) for n in names_of(model, l)]
    assert list(a) == expected and list(b) == expected
    for name in expected:
        for x, y in zip(a[name], b[name], strict=True):
            assert x.shape == y.shape, name
            scale = max(1.0, np.max(np.abs(x), initial=0))
            assert np.max(np.abs(x - y), initial=0) <= 1e-12 * scale, name
    last = f"blocks.{model.n_blocks - 1}.hook_resid_post"
    for y, s in zip(model.run(seqs), a[last], strict=True):
        assert np.array_equal(y, s)
    for l in range(model.n_blocks):
        for P in a.get(f"blocks.{l}.attn.hook_pattern", []):
            assert np.allclose(P.sum(axis=2), 1.0)


def test_hooks_see_and_patch_values_and_leave_no_trace():
    model = random_model(13, n_blocks=5)
    net = TorchTransformer.from_model(model)
    X, pad = pad_sequences(random_sequences(13, [5, 3]))
    plain = net(X, key_padding_mask=pad)
    out, c = net.run_with_cache(X, key_padding_mask=pad)
    assert torch.equal(out, plain)  # hooks change no bit
    assert set(c) == set(net.hook_dict)
    assert c["blocks.0.hook_resid_pre"].shape == X.shape
    l = next(i for i, b in enumerate(model.blocks) if b.sa is not None)
    assert c[f"blocks.{l}.attn.hook_pattern"].shape == (2, 1, 5, 5)
    # patching the residual stream after block 1 with zeros = running blocks 2.. on zeros
    zero = net.run_with_hooks(X, key_padding_mask=pad, fwd_hooks=[
        ("blocks.1.hook_resid_post", lambda v, hook: torch.zeros_like(v))])
    rest = TorchTransformer(copy.deepcopy(list(net.blocks)[2:]), net.d, net.attention,
                            net.temperature)
    assert torch.equal(zero, rest(torch.zeros_like(X), key_padding_mask=pad))
    assert torch.equal(net(X, key_padding_mask=pad), plain)  # temporary hooks are gone
    seen = []
    net.run_with_hooks(X, key_padding_mask=pad, fwd_hooks=[
        (lambda name: name.endswith("hook_pattern"), lambda v, hook: seen.append(hook.name))])
    assert seen == [n for n in net.hook_dict if n.endswith("hook_pattern")] and seen
    with pytest.raises(KeyError):
        net.run_with_hooks(X, fwd_hooks=[("blocks.0.hook_nothing", lambda v, hook: v)])


def test_patching_a_hardmax_score_moves_the_argmax_set():
    """A patched score decides the pattern: the hook sits before the hardmax."""
    from exactformer.model import Block, SelfAttention, Transformer

    d = 2
    sa = SelfAttention(np.eye(d), np.eye(d), V=np.eye(d), rho=0.0)
    net = TorchTransformer.from_model(Transformer([Block(None, sa)], d))
    X = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.5, 0.5]], dtype=torch.float64)

    def favour_first(scores, hook):
        scores = scores.clone()
        scores[..., 0] = 1e9
        return scores

    out = net.run_with_hooks(X, fwd_hooks=[("blocks.0.attn.hook_attn_scores", favour_first)])
    assert torch.equal(out, X[0].expand(3, d))

"""TransformerLens: the twin on HookedRootModule (3.x/4.x) and the HookedTransformer export
(3.x). Skipped without the ``lens`` extra (CI installs only test+torch)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformer_lens")

from exactformer.export import export  # noqa: E402
from exactformer.lens import hooked  # noqa: E402
from exactformer.torch import TorchTransformer, pad_sequences  # noqa: E402
from test_export import compiled, smooth_model  # noqa: E402
from test_torch_twin import random_model, random_sequences  # noqa: E402

HAS_HOOKED_TRANSFORMER = importlib.util.find_spec("transformer_lens.HookedTransformer") is not None


def test_twin_on_hooked_root_module_caches_and_patches_like_ours():
    from transformer_lens.hook_points import HookPoint

    model = random_model(3, n_blocks=5)
    net, ref = hooked(model), TorchTransformer.from_model(model)
    assert all(isinstance(m, HookPoint) for m in net.hook_dict.values())
    assert set(net.hook_dict) == set(ref.hook_dict) and set(net.state_dict()) == set(
        ref.state_dict())
    X, pad = pad_sequences(random_sequences(3, [3, 5]))
    y, c = net.run_with_cache(X, key_padding_mask=pad)
    y2, c2 = ref.run_with_cache(X, key_padding_mask=pad)
    assert torch.equal(y, y2) and all(torch.equal(c[k], c2[k]) for k in c2)
    zero = [("blocks.1.hook_resid_post", lambda v, hook: torch.zeros_like(v))]
    assert torch.equal(net.run_with_hooks(X, key_padding_mask=pad, fwd_hooks=zero),
                       ref.run_with_hooks(X, key_padding_mask=pad, fwd_hooks=zero))


@pytest.mark.skipif(not HAS_HOOKED_TRANSFORMER, reason="HookedTransformer needs TL < 4")
@pytest.mark.parametrize("attention", ["hardmax", "softmax"])
@pytest.mark.parametrize("compact", [False, True])
def test_hooked_transformer_export_equals_numpy(tmp_path, attention, compact):
    from exactformer.to_lens import forward, load

    model, data = compiled(attention, compact)
    report = export(model, "transformer-lens", tmp_path / "m.pt", data)
    assert report.max_rel_error <= 1e-12
    assert report.n_params_exported >= model.n_params
    tl = load(tmp_path / "m.pt")
    assert type(tl).__name__ == "HookedTransformer"
    seqs = data.inputs
    X, pad = pad_sequences(seqs)
    Y = forward(tl, X, pad).numpy()
    ref = model.run(seqs)
    scale = max(np.abs(r).max() for r in ref)
    assert max(np.abs(Y[j, : len(r)] - r).max() for j, r in enumerate(ref)) <= 1e-12 * scale


@pytest.mark.skipif(not HAS_HOOKED_TRANSFORMER, reason="HookedTransformer needs TL < 4")
def test_hooked_transformer_plain_load_without_exactformer(tmp_path):
    """The documented one-liner (softmax: no hook needed) gives the same outputs."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    model = smooth_model("softmax")
    export(model, "transformer-lens", tmp_path / "s.pt")
    ckpt = torch.load(tmp_path / "s.pt", weights_only=True)
    tl = HookedTransformer(HookedTransformerConfig(**ckpt["config"]))
    tl.load_state_dict(ckpt["state_dict"], strict=False)
    x = np.random.default_rng(0).normal(size=(5, model.d))
    resid = torch.nn.functional.pad(torch.as_tensor(x)[None], (0, tl.cfg.d_model - model.d))
    y = tl(resid, start_at_layer=0).detach().numpy()[0]
    assert np.max(np.abs(y - model(x))) <= 1e-12 * np.max(np.abs(model(x)))

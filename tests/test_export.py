"""Exports to ONNX and TransformerLens, checked before writing (exactformer.export, issue 16).

The ONNX tests need the ``onnx`` extra and skip without it (CI installs only test+torch).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from typer.testing import CliRunner

import exactformer as ef
from exactformer.cli import app
from exactformer.export import ExportError, MissingExtraError, export
from exactformer.model import Block, FeedForward, SelfAttention, Transformer

HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="needs the onnx extra")


def compiled(attention="hardmax", compact=False, N=12, seed=0):
    rng = np.random.default_rng(seed)
    ins = [rng.normal(size=(int(rng.integers(3, 9)), 4)) for _ in range(N)]
    ins[1] = ins[0][[0, 0, 1, 2]]  # copies of tokens: ties in the hardmax layers
    data = ef.Dataset.from_sequences(ins, [rng.normal(size=(1, 4)) for _ in range(N)])
    return ef.compile(data, attention=attention, compact=compact), data


def onnx_outputs(path, model, seqs):
    import onnx

    from exactformer.export import pad_numpy
    from exactformer.to_onnx import session

    sess = session(onnx.load(str(path)))
    X, pad = pad_numpy(seqs, model.d)
    Y = sess.run(["Y"], {"X": X, "key_padding_mask": pad})[0]
    return [Y[j, : len(x)] for j, x in enumerate(seqs)]


@needs_onnx
@pytest.mark.parametrize("attention", ["hardmax", "softmax"])
@pytest.mark.parametrize("compact", [False, True])
def test_onnx_export_of_compiled_models_equals_numpy(tmp_path, attention, compact):
    model, data = compiled(attention, compact)
    report = export(model, "onnx", tmp_path / "m.onnx", data)
    assert report.max_rel_error <= 1e-12 and report.n_sequences == data.n_sequences
    assert report.n_params_exported == model.n_params
    # the written file, read back by onnxruntime, reproduces the targets (dynamic batch/n)
    out = onnx_outputs(tmp_path / "m.onnx", model, data.inputs)
    ref = model.run(data.inputs)
    scale = max(np.abs(r).max() for r in ref)
    assert max(np.abs(o - r).max() for o, r in zip(out, ref)) <= 1e-12 * scale
    for o, y in zip(out, data.targets):
        assert np.allclose(o[: len(y)], y, rtol=0, atol=1e-10 * data.scale)
    import onnx

    assert [o.name for o in onnx.load(str(tmp_path / "m.onnx")).graph.output] == ["Y"]


@needs_onnx
def test_onnx_hardmax_copies_tie_under_a_certified_tolerance(tmp_path):
    model, data = compiled("hardmax")
    report = export(model, "onnx", None, data)
    assert report.tie_tolerances and all(0 < t <= 1e-9 for t in report.tie_tolerances.values())
    assert report.path is None


def smooth_model(attention="softmax", d=3, n_blocks=4, seed=4):
    rng = np.random.default_rng(seed)
    blocks = [Block(FeedForward(rng.normal(size=(2, d)), rng.normal(size=2),
                                rng.normal(size=(d, 2)), 1.0),
                    SelfAttention(rng.normal(size=(2, d)), rng.normal(size=(2, d)),
                                  V=0.5 * rng.normal(size=(d, d)), rho=1.0), f"k{l}")
              for l in range(n_blocks)]
    return Transformer(blocks, d, attention, 0.5)


@needs_onnx
def test_random_probe_and_rejection_names_the_block(tmp_path, monkeypatch):
    model = smooth_model()
    assert export(model, "onnx", tmp_path / "p.onnx").checked_on.startswith("a random probe")
    # a runtime that departs from numpy in block 2 is refused, and nothing is written
    from exactformer import to_onnx

    real = to_onnx.build

    def tampered(m, *a, **k):
        m = Transformer([Block(b.ff, b.sa, b.kind) for b in m.blocks], m.d, m.attention,
                        m.temperature)
        ff = m.blocks[2].ff
        m.blocks[2].ff = FeedForward(ff.U, ff.b, ff.W, 1.0 + 1e-6)
        return real(m, *a, **k)

    monkeypatch.setattr(to_onnx, "build", tampered)
    with pytest.raises(ExportError, match=r"^block 2 \(k2\): onnx departs"):
        export(model, "onnx", tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()


@needs_onnx
def test_cli_export(tmp_path):
    model, data = compiled("hardmax", N=5)
    model.save(tmp_path / "m.safetensors")
    ef.save_dataset(data, tmp_path / "d.npz")
    r = CliRunner().invoke(app, ["export", str(tmp_path / "m.safetensors"), "--to", "onnx",
                                 "--data", str(tmp_path / "d.npz")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m.onnx").exists() and "max rel error" in r.output
    r = CliRunner().invoke(app, ["export", str(tmp_path / "m.safetensors"), "--to", "keras"])
    assert r.exit_code == 2 and "onnx, transformer-lens" in r.output
    r = CliRunner().invoke(app, ["export", str(tmp_path / "none.safetensors"), "--to", "onnx"])
    assert r.exit_code == 2 and "no such file" in r.output


def test_missing_extra_names_it(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    model, _ = compiled("hardmax", N=3)
    with pytest.raises(MissingExtraError, match=r"pip install 'exactformer\[onnx\]'"):
        export(model, "onnx", tmp_path / "m.onnx")
    model.save(tmp_path / "m.safetensors")
    r = CliRunner().invoke(app, ["export", str(tmp_path / "m.safetensors"), "--to", "onnx"])
    assert r.exit_code == 2 and "exactformer[onnx]" in r.output
    assert len(r.output.strip().splitlines()) == 1


@needs_onnx
def test_hand_built_model_with_every_layer_variant(tmp_path):
    """η ≠ 1, ρ ∉ {0, 1}, factored V, uniform attention, identity layers."""
    rng = np.random.default_rng(4)
    d = 3
    ff = FeedForward(rng.normal(size=(2, d)), rng.normal(size=2), rng.normal(size=(d, 2)), 0.7)
    sa = SelfAttention(rng.normal(size=(2, d)), rng.normal(size=(2, d)),
                       Vo=rng.normal(size=(d, 1)), Vi=rng.normal(size=(1, d)), rho=0.3)
    uni = SelfAttention(np.zeros((0, d)), np.zeros((0, d)), V=np.eye(d), rho=1.0)
    for attention in ("hardmax", "softmax"):
        model = Transformer([Block(ff, None), Block(None, sa), Block(ff, uni)], d, attention,
                            0.5)
        report = export(model, "onnx", tmp_path / "h.onnx")
        assert report.max_rel_error <= 1e-12

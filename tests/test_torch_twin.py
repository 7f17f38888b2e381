"""The PyTorch twin (exactformer.torch) against the numpy reference model (issue 5)."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from safetensors import safe_open  # noqa: E402

import exactformer as ef  # noqa: E402
from exactformer import numeric as nm  # noqa: E402
from exactformer.model import Block, FeedForward, SelfAttention, Transformer  # noqa: E402
from exactformer.torch import TorchTransformer, pad_sequences  # noqa: E402

# -- hand-built test models ------------------------------------------------------------------


def random_model(seed: int, d: int = 3, n_blocks: int = 5, attention: str = "hardmax",
                 temperature: float = 0.7) -> Transformer:
    """Random blocks covering every layer variant of docs/design.md §1-§2.

    Per block, drawn at random: identity or random FF; identity SA, uniform SA (h = 0),
    all-ties SA (Q = K = 0 with h = 2: every score exactly 0), or a random rank-1/2 SA;
    V whole or as the factor pair Vo·Vi.
    """
    rng = np.random.default_rng(seed)
    blocks = []
    for l in range(n_blocks):
        ff = sa = None
        if rng.random() < 0.8:
            w = int(rng.integers(1, 5))
            ff = FeedForward(rng.normal(size=(w, d)), rng.normal(size=w),
                             0.5 * rng.normal(size=(d, w)), float(rng.uniform(0.5, 1.5)))
        variant = rng.integers(0, 4)
        if variant > 0:
            h = {1: 0, 2: 2, 3: int(rng.integers(1, 3))}[int(variant)]
            Q = rng.normal(size=(h, d)) if variant == 3 else np.zeros((h, d))
            K = rng.normal(size=(h, d)) if variant == 3 else np.zeros((h, d))
            rho = float(rng.uniform(0.0, 1.0))
            if rng.random() < 0.5:
                sa = SelfAttention(Q, K, V=0.5 * rng.normal(size=(d, d)), rho=rho)
            else:
                r = int(rng.integers(1, d + 1))
                sa = SelfAttention(Q, K, Vo=rng.normal(size=(d, r)),
                                   Vi=0.5 * rng.normal(size=(r, d)), rho=rho)
        blocks.append(Block(ff, sa, kind=f"k{l % 3}"))
    return Transformer(blocks, d, attention, temperature, info={"seed": seed, "note": "test"})


def random_sequences(seed: int, lengths, d: int = 3):
    """Sequences with duplicated tokens, so hardmax argmax sets contain exact ties."""
    rng = np.random.default_rng(seed + 1)
    seqs = []
    for n in lengths:
        base = rng.normal(size=(max(1, (n + 1) // 2), d))
        seqs.append(base[rng.integers(0, len(base), size=n)])
    return seqs


def rel_error(ref, out) -> float:
    ref = np.concatenate([np.asarray(r, dtype=np.float64) for r in ref])
    out = np.concatenate([np.asarray(o, dtype=np.float64) for o in out])
    return float(np.max(np.abs(ref - out)) / max(np.max(np.abs(ref)), 1e-300))


def torch_outputs(tm, seqs):
    return [y.detach().cpu().double().numpy() for y in tm.run(seqs)]


# -- forward ---------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1),
       lengths=st.lists(st.integers(1, 7), min_size=1, max_size=5),
       attention=st.sampled_from(["hardmax", "softmax"]))
def test_float64_twin_equals_numpy(seed, lengths, attention):
    model = random_model(seed, attention=attention)
    seqs = random_sequences(seed, lengths)
    tm = TorchTransformer.from_model(model)
    assert rel_error(model.run(seqs), torch_outputs(tm, seqs)) <= 1e-12
    # one sequence, (n, d) in and out
    y = tm(seqs[0])
    assert y.shape == seqs[0].shape and y.dtype == torch.float64
    assert rel_error([model(seqs[0])], [y.detach().numpy()]) <= 1e-12


def test_hardmax_ties_are_the_exact_argmax_set():
    """Integer weights and tokens: scores are exact integers, so the argmax set is known.

    The reference is computed in rationals; the twin must give the same P, ties included,
    in float64 and float32, and padding keys must never enter the set.
    """
    rng = np.random.default_rng(3)
    d, n = 3, 6
    Q = rng.integers(-1, 2, size=(2, d)).astype(float)
    K = rng.integers(-1, 2, size=(2, d)).astype(float)
    X = rng.integers(-1, 2, size=(n, d)).astype(float)
    s = (nm.to_exact(X) @ nm.to_exact(Q).T) @ (nm.to_exact(X) @ nm.to_exact(K).T).T
    top = s.max(axis=1, keepdims=True)
    expected = (s == top) / (s == top).sum(axis=1, keepdims=True)
    assert np.any((s == top).sum(axis=1) > 1), "the example must contain ties"
    tm = TorchTransformer.from_model(
        Transformer([Block(None, SelfAttention(Q, K, V=np.eye(d), rho=0.0))], d))
    for dtype in (torch.float64, torch.float32):
        sa = tm.to(dtype).blocks[0].sa
        Xt = torch.as_tensor(X, dtype=dtype)[None]
        P = sa.weights(Xt, torch.zeros(1, n, dtype=torch.bool), "hardmax", 1.0)[0]
        P = P.double().numpy()
        assert np.array_equal(P > 0, expected > 0)  # the argmax sets, exactly
        assert np.allclose(P, nm.to_float(expected), rtol=1e-6, atol=0)
    # masking the last two keys: argmax over the first four only
    pad = torch.tensor([[False] * 4 + [True] * 2])
    P = tm.to(torch.float64).blocks[0].sa.weights(
        torch.as_tensor(X)[None], pad, "hardmax", 1.0)[0].numpy()
    s4 = s[:, :4]
    top4 = s4.max(axis=1, keepdims=True)
    assert np.array_equal(P[:, 4:], np.zeros((n, 2)))
    assert np.array_equal(P[:, :4], nm.to_float((s4 == top4) / (s4 == top4).sum(axis=1)[:, None]))


@pytest.mark.parametrize("attention", ["hardmax", "softmax"])
def test_batch_with_mask_equals_one_by_one(attention):
    model = random_model(11, n_blocks=6, attention=attention)
    seqs = random_sequences(11, [1, 5, 2, 7, 3])
    tm = TorchTransformer.from_model(model)
    X, pad = pad_sequences(seqs)
    Y = tm(X, key_padding_mask=pad)
    for j, x in enumerate(seqs):
        alone = tm(torch.as_tensor(x)).detach().numpy()
        assert rel_error([alone], [Y[j, : len(x)].detach().numpy()]) <= 1e-13
    # padding content is invisible: garbage in the padded rows changes no real output bit
    garbage = X.clone()
    garbage[pad] = 1e3 * torch.randn(int(pad.sum()), model.d, dtype=torch.float64)
    Yg = tm(garbage, key_padding_mask=pad)
    assert torch.equal(Yg[~pad], Y[~pad])
    # an all-False mask is the same as no mask
    full = torch.as_tensor(np.stack(random_sequences(5, [4, 4, 4])))
    assert torch.equal(tm(full), tm(full, key_padding_mask=torch.zeros(3, 4, dtype=torch.bool)))


def test_empty_sequence_in_batch_gives_no_nan():
    tm = TorchTransformer.from_model(random_model(2, attention="softmax"))
    X, pad = pad_sequences([np.ones((3, 3)), np.zeros((0, 3))])
    assert torch.isfinite(tm(X, key_padding_mask=pad)).all()


def test_float32_runs_and_stays_close_on_smooth_model():
    """float32 works end to end; on a model without near-ties the error is ~eps32."""
    model = random_model(7, n_blocks=6, attention="softmax")
    seqs = random_sequences(7, [4, 6, 2])
    tm = TorchTransformer.from_model(model).to(torch.float32)
    assert all(p.dtype == torch.float32 for p in tm.parameters())
    out = tm.run(seqs)
    assert out[0].dtype == torch.float32
    err = rel_error(model.run(seqs), [o.detach().double().numpy() for o in out])
    assert 0 < err < 1e-4


def test_parameters_and_state_dict_names_follow_the_file_format(tmp_path):
    model = random_model(4)
    tm = TorchTransformer.from_model(model)
    names = {name for name, _ in model.named_tensors()}
    assert set(tm.state_dict()) == names
    assert {n for n, _ in tm.named_parameters()} == names
    assert all(p.dtype == torch.float64 for p in tm.parameters())


def test_hardmax_surrogate_is_differentiable_and_tends_to_hardmax():
    model = random_model(21, n_blocks=4)
    seqs = [np.random.default_rng(0).normal(size=(6, 3))]  # distinct tokens: no ties
    tm = TorchTransformer.from_model(model)
    hard = tm.run(seqs)[0].detach()
    with tm.surrogate(1e-6):
        soft = tm.run(seqs)[0]
    assert tm.hardmax_surrogate is None
    assert rel_error([hard.numpy()], [soft.detach().numpy()]) < 1e-8
    tm.hardmax_surrogate = 0.5
    tm.run(seqs)[0].pow(2).sum().backward()
    grads = [b.sa.Q.grad for b in tm.blocks if b.sa is not None and b.sa.rank > 0]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)
    # softmax models keep their own temperature: the surrogate only stands in for hardmax
    sm = TorchTransformer.from_model(random_model(21, n_blocks=4, attention="softmax"))
    plain = sm.run(seqs)[0].detach()
    with sm.surrogate(1e-6):
        assert torch.equal(sm.run(seqs)[0].detach(), plain)


# -- files -----------------------------------------------------------------------------------


def read_file(path):
    with safe_open(str(path), framework="numpy") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    return meta, tensors


def assert_same_file(a, b):
    (ma, ta), (mb, tb) = read_file(a), read_file(b)
    assert ma == mb
    assert set(ta) == set(tb)
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and ta[k].shape == tb[k].shape
        assert ta[k].tobytes() == tb[k].tobytes(), k


@pytest.mark.parametrize("attention", ["hardmax", "softmax"])
def test_save_load_save_is_bit_identical(tmp_path, attention):
    model = random_model(9, n_blocks=7, attention=attention, temperature=0.1 / 3)
    model.save(tmp_path / "a.safetensors")
    tm = TorchTransformer.from_file(tmp_path / "a.safetensors")
    tm.save(tmp_path / "b.safetensors")
    TorchTransformer.from_file(tmp_path / "b.safetensors").save(tmp_path / "c.safetensors")
    assert_same_file(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert_same_file(tmp_path / "b.safetensors", tmp_path / "c.safetensors")
    meta, _ = read_file(tmp_path / "b.safetensors")
    assert json.loads(meta["block_kinds"]) == [b.kind for b in model.blocks]
    assert json.loads(meta["info"]) == model.info
    assert float(meta["temperature"]) == model.temperature


def test_exact_model_keeps_its_rationals_until_edited(tmp_path):
    exact = random_model(12).as_exact()
    blk = exact.blocks[0].ff or FeedForward(*(nm.to_exact(np.ones(s)) for s in [(1, 3), 1, (3, 1)]))
    blk.eta = Fraction(1, 3)  # not a float: the rational must survive the float twin
    exact.blocks[0].ff = blk
    exact.save(tmp_path / "a.safetensors")
    tm = TorchTransformer.from_file(tmp_path / "a.safetensors")
    tm.save(tmp_path / "b.safetensors")
    assert_same_file(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert Transformer.load(tmp_path / "b.safetensors").blocks[0].ff.eta == Fraction(1, 3)
    # after an edit the weights are plain floats: no rational claims are written
    with torch.no_grad():
        tm.blocks[0].ff.eta += 0.25
    tm.save(tmp_path / "c.safetensors")
    meta, tensors = read_file(tmp_path / "c.safetensors")
    assert "rational" not in meta
    assert tensors["blocks.0.ff.eta"][()] == 1 / 3 + 0.25


def test_trained_weights_are_written_back(tmp_path):
    tm = TorchTransformer.from_model(random_model(5, attention="softmax"))
    with torch.no_grad():
        for p in tm.parameters():
            p.mul_(1.5)
    tm.save(tmp_path / "m.safetensors")
    back = Transformer.load(tmp_path / "m.safetensors")
    seqs = random_sequences(5, [3, 4])
    assert rel_error(back.run(seqs), torch_outputs(tm, seqs)) <= 1e-12
    # to_model after .to(float32) gives float64 numpy weights
    m32 = tm.to(torch.float32).to_model()
    assert all(np.asarray(t).dtype == np.float64 for _, t in m32.named_tensors())


def test_bad_files_and_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(ef.ModelFileError):
        TorchTransformer.from_file(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    with pytest.raises(ef.ModelFileError):
        TorchTransformer.from_file(tmp_path / "junk.safetensors")
    tm = TorchTransformer.from_model(random_model(1))
    with pytest.raises(ValueError, match="expected shape"):
        tm(np.zeros((4, 5)))
    with pytest.raises(ValueError, match="key_padding_mask"):
        tm(np.zeros((2, 4, 3)), key_padding_mask=torch.zeros(2, 3, dtype=torch.bool))


# -- compiled models -------------------------------------------------------------------------


def small_dataset(seed: int, N: int = 8, d: int = 3):
    rng = np.random.default_rng(seed)
    ins = [rng.normal(size=(int(rng.integers(2, 6)), d)) for _ in range(N)]
    outs = [rng.normal(size=(int(rng.integers(1, len(x) + 1)), d)) for x in ins]
    return ef.Dataset.from_sequences(ins, outs)


def readout(outputs, ds):
    """The first m_j output tokens of every sequence (docs/design.md §3, prefix read-out)."""
    return [o[: len(y)] for o, y in zip(outputs, ds.targets, strict=True)]


def _compile(ds, **kw):
    if not hasattr(ef, "compile"):
        pytest.skip("exactformer.compile not available")
    try:
        return ef.compile(ds, **kw)
    except NotImplementedError as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("attention", ["hardmax", "softmax"])
@pytest.mark.parametrize("compact", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_compiled_models_float64_equal_numpy(attention, compact, seed, tmp_path):
    ds = small_dataset(seed)
    model = _compile(ds, attention=attention, compact=compact, seed=seed)
    model.save(tmp_path / "m.safetensors")
    tm = TorchTransformer.from_file(tmp_path / "m.safetensors")
    assert rel_error(model.run(ds.inputs), torch_outputs(tm, ds.inputs)) <= 1e-12
    # and the twin reads out the targets
    out = torch_outputs(tm, ds.inputs)
    assert rel_error(ds.targets, readout(out, ds)) <= 1e-10
    tm.save(tmp_path / "b.safetensors")
    assert_same_file(tmp_path / "m.safetensors", tmp_path / "b.safetensors")
    # float32 on a model this small: ~1e-5 measured (README: larger models break)
    out32 = torch_outputs(tm.to(torch.float32), ds.inputs)
    assert rel_error(ds.targets, readout(out32, ds)) <= 1e-4


def test_compiled_exact_model_round_trips_with_its_proof(tmp_path):
    ds = small_dataset(3, N=4)
    model = _compile(ds, exact=True)
    model.save(tmp_path / "m.safetensors")
    tm = TorchTransformer.from_file(tmp_path / "m.safetensors")
    tm.save(tmp_path / "b.safetensors")
    assert_same_file(tmp_path / "m.safetensors", tmp_path / "b.safetensors")
    out = torch_outputs(tm, ds.inputs)
    assert rel_error(ds.targets, readout(out, ds)) <= 1e-10

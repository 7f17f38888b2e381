"""The twin traces as one graph: torch.export with dynamic batch and length,
torch.compile(fullgraph=True), the meta device — hardmax and softmax (issue 16)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from exactformer.torch import TorchTransformer, pad_sequences  # noqa: E402
from test_torch_twin import random_model, random_sequences  # noqa: E402


def batch(seed, lengths):
    return pad_sequences(random_sequences(seed, lengths))


@pytest.mark.parametrize("attention", ["hardmax", "softmax"])
def test_meta_device_runs_without_data(attention):
    """On ``meta`` tensors have no values: any data-dependent Python branch would raise."""
    net = TorchTransformer.from_model(random_model(3, attention=attention)).to("meta")
    X, pad = batch(3, [3, 5, 0])  # an empty sequence too
    Y = net(X.to("meta"), key_padding_mask=pad.to("meta"))
    assert Y.device.type == "meta" and tuple(Y.shape) == tuple(X.shape)


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["hardmax", "softmax"])
def test_compile_fullgraph_has_no_graph_break(attention):
    """fullgraph=True raises on any graph break (the eager backend: dynamo alone, 5-10 s)."""
    net = TorchTransformer.from_model(random_model(5, attention=attention))
    compiled = torch.compile(net, fullgraph=True, backend="eager", dynamic=True)
    for lengths in ([3, 5, 2], [7, 1, 4, 6], [2]):
        X, pad = batch(5, lengths)
        assert torch.equal(compiled(X, key_padding_mask=pad), net(X, key_padding_mask=pad))


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["hardmax", "softmax"])
def test_compile_inductor_equals_eager(attention):
    net = TorchTransformer.from_model(random_model(5, attention=attention))
    compiled = torch.compile(net, fullgraph=True)
    X, pad = batch(6, [7, 1, 4, 6, 2])
    ref = net(X, key_padding_mask=pad)
    err = (compiled(X, key_padding_mask=pad) - ref).abs().max() / ref.abs().max()
    assert float(err) <= 1e-12


@pytest.mark.parametrize("attention", [pytest.param("hardmax", marks=pytest.mark.slow),
                                       "softmax"])
def test_torch_export_with_dynamic_batch_and_length(attention):
    """(2-4 s each: the softmax case, which used to fail, runs in the default lane.)"""
    model = random_model(7, n_blocks=2, attention=attention)
    net = TorchTransformer.from_model(model)
    X, pad = batch(7, [3, 5, 2])
    b, n = torch.export.Dim("batch"), torch.export.Dim("n")
    shapes = {"X": {0: b, 1: n}, "key_padding_mask": {0: b, 1: n}}
    program = torch.export.export(net, (X,), {"key_padding_mask": pad}, dynamic_shapes=shapes)
    run = program.module()
    for seed, lengths in ((8, [7, 1, 4, 6, 2]), (9, [4]), (10, [2, 9])):
        seqs = random_sequences(seed, lengths)
        X2, pad2 = pad_sequences(seqs)
        Y = run(X2, key_padding_mask=pad2)
        assert tuple(Y.shape) == tuple(X2.shape)
        ref = model.run(seqs)
        for j, r in enumerate(ref):
            got = Y[j, : len(r)].detach().numpy()
            assert np.max(np.abs(got - r)) <= 1e-12 * max(1.0, float(np.max(np.abs(r))))

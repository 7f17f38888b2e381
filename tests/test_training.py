"""Tikhonov training (issue 7, docs/design.md §6): loss, gradient, robustness, the experiment."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import exactformer as ef  # noqa: E402
from conftest import random_dataset, run_cli, run_cli_process  # noqa: E402
from exactformer import training as tr  # noqa: E402
from exactformer.torch import (  # noqa: E402
    TorchBlock,
    TorchFeedForward,
    TorchSelfAttention,
    TorchTransformer,
)


def tiny_problem(eta=2.0):
    """FF ``x ↦ η·x`` (W = 0), then uniform SA ``x_i ↦ x_i + ½·mean(X)``; two sequences."""
    ff = TorchFeedForward(np.zeros((1, 2)), np.zeros(1), np.zeros((2, 1)), eta)
    sa = TorchSelfAttention(np.zeros((0, 2)), np.zeros((0, 2)), V=0.5 * np.eye(2), rho=1.0)
    net = TorchTransformer([TorchBlock(ff, sa)], 2)
    data = ef.Dataset.from_sequences([[[1, 2], [3, 4]], [[1, 0]]], [[[0, 1]], [[1, 1]]])
    return net, data


def test_loss_and_gradient_by_hand():
    net, data = tiny_problem()
    loss = tr.readout_loss(net, tr.Batch.from_dataset(data))
    # seq 1: η(x0 + ½·mean) = 2·(2, 3.5) = (4, 7), minus (0, 1): |(4, 6)|² = 52
    # seq 2 (padded to length 2 — the mask keeps the mean (1, 0)): (3, 0) − (1, 1) → 5
    assert loss.item() == pytest.approx((52 + 5) / 2, abs=1e-12)
    loss.backward()
    # dL/dη = mean_j 2⟨r_j, x0 + ½·mean⟩ = (2·⟨(4,6),(2,3.5)⟩ + 2·⟨(2,−1),(1.5,0)⟩)/2
    assert net.blocks[0].ff.eta.grad.item() == pytest.approx((58 + 6) / 2, abs=1e-12)
    net.zero_grad()
    eps = 0.1
    J = tr.readout_loss(net, tr.Batch.from_dataset(data)) + eps * tr.sq_norm(net)
    assert tr.sq_norm(net).item() == pytest.approx(4 + 1 + 0.5, abs=1e-12)  # η², ρ², ‖V‖²
    J.backward()
    assert net.blocks[0].ff.eta.grad.item() == pytest.approx(32 + 2 * eps * 2, abs=1e-12)


def test_training_decreases_loss(rng):
    data = random_dataset(rng, N=4, n=(3, 5), d=3)
    net = tr.random_model(3, blocks=3, width=4, seed=0)
    res = tr.train(net, data, tr.TrainConfig(epochs=150, lr=1e-2, weight_decay=1e-4))
    assert res.loss[-1] < 0.1 * res.loss[0]
    assert res.penalty[0] == pytest.approx(1e-4 * res.sq_norm[0])
    assert res.best()["objective"] <= res.loss[0] + res.penalty[0]


def test_same_seed_same_losses(rng):
    data = random_dataset(rng, N=3, n=(3, 4), d=3)
    runs = [tr.train(tr.random_model(3, 2, 4, seed=s), data,
                     tr.TrainConfig(epochs=40, lr=1e-2, weight_decay=1e-3, seed=s)).loss
            for s in (5, 5, 6)]
    np.testing.assert_allclose(runs[0], runs[1], rtol=0, atol=1e-10)
    assert not np.allclose(runs[0], runs[2])


def test_compiled_init_starts_at_zero_loss(rng):
    data = random_dataset(rng, N=5, n=(3, 6), d=4)
    net, seconds = tr.compiled_model(data)
    batch = tr.Batch.from_dataset(data)
    with torch.no_grad(), net.surrogate(1.0):
        assert tr.readout_loss(net, batch).item() < 1e-20
        before = net(batch.X, key_padding_mask=batch.pad)
        n0 = tr.sq_norm(net).item()
        tr.balance(net)  # powers of two: bit-identical outputs, smaller norm
        assert torch.equal(net(batch.X, key_padding_mask=batch.pad), before)
        assert tr.sq_norm(net).item() < n0
        big = tr.embed(net, blocks=net.n_blocks + 2, width=6)
        assert big.n_blocks == net.n_blocks + 2 and all(b.ff.width == 6 for b in big.blocks)
        assert tr.readout_loss(big, batch).item() < 1e-20
    res = tr.train(net, batch, tr.TrainConfig(epochs=3, lr=1e-9))
    assert res.loss[0] < 1e-20
    with pytest.raises(ef.ExactformerError, match="smaller than the compiled"):
        tr.embed(net, blocks=1)


def _file_loss(path, data, surrogate=1.0):
    net = TorchTransformer.from_file(path)
    with torch.no_grad(), net.surrogate(surrogate):
        return tr.readout_loss(net, tr.Batch.from_dataset(data)).item()


def test_nan_keeps_last_good_checkpoint(rng, tmp_path):
    data = random_dataset(rng, N=3, n=(3, 4), d=3)
    net = tr.random_model(3, 2, 4, seed=0)

    def poison(epoch, res):  # an injected NaN after the step of epoch 5
        if epoch == 5:
            with torch.no_grad():
                net.blocks[1].ff.W[0, 0] = math.nan

    ckpt = tmp_path / "m.safetensors"
    with pytest.raises(tr.TrainingDiverged, match="NaN") as info:
        tr.train(net, data, tr.TrainConfig(epochs=50, checkpoint_every=2), checkpoint=ckpt,
                 log=tmp_path / "log.csv", callback=poison)
    res = info.value.result
    assert len(res.loss) == 6 and res.diverged
    # the file holds the parameters of the last finite epoch (5), not the poisoned ones
    assert _file_loss(ckpt, data) == pytest.approx(res.loss[-1], rel=1e-12)
    assert len((tmp_path / "log.csv").read_text().splitlines()) == 1 + 6


def test_nan_from_huge_lr_through_cli(rng, tmp_path):
    ef.save_dataset(random_dataset(rng, N=3, n=(3, 4), d=3), tmp_path / "d.npz")
    r = run_cli("train", tmp_path / "d.npz", "-o", tmp_path / "m.safetensors", "--epochs",
                "30", "--lr", "1e30", "-q")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "NaN" in r.stderr and "Traceback" not in r.stderr
    assert np.isfinite(_file_loss(tmp_path / "m.safetensors",
                                  ef.load_dataset(tmp_path / "d.npz")))
    bad = run_cli("train", tmp_path / "d.npz", "-o", tmp_path / "x.safetensors",
                  "--init", "nonsense")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def test_ctrl_c_saves_and_returns(rng, tmp_path):
    data = random_dataset(rng, N=3, n=(3, 4), d=3)
    net = tr.random_model(3, 2, 4, seed=1)

    def interrupt(epoch, res):
        if epoch == 7:
            raise KeyboardInterrupt

    ckpt, log = tmp_path / "m.safetensors", tmp_path / "log.json"
    res = tr.train(net, data, tr.TrainConfig(epochs=100, checkpoint_every=0), checkpoint=ckpt,
                   log=log, callback=interrupt)
    assert res.interrupted and not res.diverged and len(res.loss) == 8
    assert _file_loss(ckpt, data) == pytest.approx(res.final_loss, rel=1e-12)
    logged = json.loads(log.read_text())
    assert logged["interrupted"] and logged["loss"] == res.loss


def test_cli_train_compiled(rng, tmp_path):
    data = random_dataset(rng, N=4, n=(3, 5), d=3)
    ef.save_dataset(data, tmp_path / "d.npz")
    r = run_cli_process("train", tmp_path / "d.npz", "-o", tmp_path / "m.safetensors",
                        "--init", "compiled", "--epochs", "5", "--weight-decay", "1e-3")
    assert r.returncode == 0, r.stderr
    rows = (tmp_path / "m.log.csv").read_text().splitlines()
    assert rows[0] == "epoch,loss,penalty,sq_norm,lr,seconds" and len(rows) == 6
    assert float(rows[1].split(",")[1]) < 1e-20  # starts exact


@pytest.mark.slow
def test_experiment_tikhonov_quick_cli(tmp_path):
    """The quick experiment end to end as a process (~50 s of CPU: the slow lane)."""
    out = tmp_path / "tik"
    r = run_cli_process("experiment", "tikhonov", "--quick", "--out", out)
    assert r.returncode == 0, r.stderr
    assert (out / "fig1a_loss_curves.png").stat().st_size > 10_000
    assert (out / "fig1b_minimal_loss_vs_eps.png").stat().st_size > 10_000
    res = json.loads((out / "results.json").read_text())
    for key in ("slope", "theta_exact_sq_norm", "minimal_loss", "wall_time_s",
                "compile_seconds", "train_seconds", "train_over_compile_ratio"):
        assert key in res
    assert set(res["minimal_loss"]) == {"0.1", "0.01", "0.001"}
    assert 0.5 <= res["slope"] <= 1.5
    assert res["theta_exact_loss"] < 1e-20  # θ_exact is exact for the trained architecture
    for e, v in res["minimal_loss"].items():
        assert v <= float(e) * res["theta_exact_sq_norm"]
        terms = res["minimal_loss_terms"][e]
        assert v == pytest.approx(terms["loss"] + terms["penalty"])


@pytest.mark.slow
def test_experiment_tikhonov_full(tmp_path):
    """The full sweep (ε = 1e-1 … 1e-7, 3000 epochs; ~20 min on 2 busy cores)."""
    from exactformer.experiments import tikhonov

    res = tikhonov.run(tmp_path, quick=False)
    assert 0.8 <= res["slope"] <= 1.2
    assert all(res["below_bound"].values())

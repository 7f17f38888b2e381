"""Mechanism annotations (exactformer.mechanism) and `exactformer explain` (issue 16)."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

import exactformer as ef
from exactformer.cli import app
from exactformer.mechanism import annotations, final_blocks
from exactformer.trace import cache


def dataset(seed=0, N=6):
    rng = np.random.default_rng(seed)
    ins = [rng.normal(size=(int(rng.integers(3, 7)), 3)) for _ in range(N)]
    ins[1] = np.concatenate([ins[1], ins[1][:2]])  # copies
    return ef.Dataset.from_sequences(ins, [rng.normal(size=(1 + j % 2, 3)) for j in range(N)])


@pytest.mark.parametrize("kw", [{}, {"compact": True}, {"attention": "softmax"},
                                {"exact": True}])
def test_annotation_is_the_mechanism_the_model_runs(tmp_path, kw):
    data = dataset()
    model = ef.compile(data, **kw)
    model.save(tmp_path / "m.safetensors")
    loaded = ef.Transformer.load(tmp_path / "m.safetensors")
    mech = annotations(loaded)
    assert mech == model.info["mechanism"]
    c = mech["collapse_block"]
    assert "collapse" in loaded.blocks[c].kind
    pattern = cache(loaded.as_float(), data.inputs,
                    names_filter=[f"blocks.{c}.attn.hook_pattern"])[
        f"blocks.{c}.attn.hook_pattern"]
    for j, P in enumerate(pattern):
        dest, lead = mech["token_destination"][j], set(mech["leaders"][j])
        assert lead
        for i, row in enumerate(P[0]):
            top = set(np.flatnonzero(row >= row.max() * (1 - 1e-9)).tolist())
            # the collapse attends to leaders with the token's destination (or copies)
            assert any(k in lead and dest[k] == dest[i] for k in top), (j, i, top)
    # final blocks: after them the value never changes, and it is the model's output
    fb = final_blocks(loaded, data.inputs)
    assert [f.tolist() for f in fb] == mech["final_block"]
    for f in fb:
        assert np.all(f > c) and np.all(f < loaded.n_blocks)


def test_explain_prints_and_plots(tmp_path):
    data = dataset(1)
    model = ef.compile(data)
    model.save(tmp_path / "m.safetensors")
    ef.save_dataset(data, tmp_path / "d.npz")
    r = CliRunner().invoke(app, ["explain", str(tmp_path / "m.safetensors"),
                                 str(tmp_path / "d.npz"), "-o", str(tmp_path / "f.png")])
    assert r.exit_code == 0, r.output
    assert "collapse: block" in r.output and "sequence 0: leader" in r.output
    assert (tmp_path / "f.png").stat().st_size > 1000
    other = dataset(2, N=3)
    ef.save_dataset(other, tmp_path / "o.npz")
    r = CliRunner().invoke(app, ["explain", str(tmp_path / "m.safetensors"),
                                 str(tmp_path / "o.npz")])
    assert r.exit_code == 2 and "compiled from" in r.output


@pytest.mark.slow
def test_ground_truth_experiment(tmp_path):
    pytest.importorskip("torch")
    r = CliRunner().invoke(app, ["experiment", "ground-truth", "--quick", "--out",
                                 str(tmp_path)])
    assert r.exit_code == 0, r.output
    import json

    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results) >= 4 and (tmp_path / "ground_truth.png").exists()
    for res in results.values():
        for method in ("attention_inspection", "activation_patching"):
            m = res[method]
            assert 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1
            assert m["collapse_rank"] is None or 1 <= m["collapse_rank"] <= m["of_blocks"]

"""Sentiment experiment: corpus, tokenizer, vocabulary, split, baselines, model, CLI."""

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exactformer.experiments import sentiment as se


def test_shipped_corpus():
    texts, labels = se.load_corpus()
    assert len(texts) == 10662 and labels.sum() == 5331
    assert all(t == t.strip() and t for t in texts)
    readme = (se.data_dir() / "README.md").read_text(encoding="utf-8")
    assert "Pang" in readme and "Lee" in readme and "2005" in readme


def test_read_lines_latin1_and_empty_lines():
    raw = "caf\xe9 au lait\n\n   \nit's \x85 fine\r\nlast".encode("latin-1")
    lines = se.read_lines(raw)
    # 0x85 is NEL in latin-1: it must not split a sentence (str.splitlines would)
    assert lines == ["café au lait", "it's \x85 fine", "last"]


def test_load_corpus_from_directory(tmp_path):
    (tmp_path / "rt-polarity.pos").write_bytes(b"great fun\n\nna\xefve charm\n")
    (tmp_path / "rt-polarity.neg").write_bytes(b"dull\n")
    texts, labels = se.load_corpus(tmp_path)
    assert texts == ["great fun", "naïve charm", "dull"]
    assert labels.tolist() == [1, 1, 0]


def test_missing_corpus_is_a_user_error(tmp_path):
    from exactformer.errors import ExactformerError

    with pytest.raises(ExactformerError, match="rt-polarity"):
        se.load_corpus(tmp_path)


def test_tokenize():
    assert se.tokenize("Don't miss it -- a STOP-MOTION gem!") == [
        "don't", "miss", "it", "-", "-", "a", "stop-motion", "gem", "!",
    ]
    assert se.tokenize("Café, naïve... 2002's best") == [
        "café", ",", "naïve", ".", ".", ".", "2002's", "best",
    ]
    assert se.tokenize("   ") == []


def test_vocabulary_is_built_on_training_tokens_only():
    train = [["good", "film", "."], ["bad", "film"]]
    vocab = se.Vocabulary.build(train)
    assert vocab.itos[:3] == ["<pad>", "<unk>", "film"]  # most frequent first
    assert vocab.encode(["film", "unseen", "good"]) == [2, se.UNK, vocab.stoi["good"]]
    assert "unseen" not in vocab.stoi
    assert len(se.Vocabulary.build(train, min_count=2)) == 3


@settings(max_examples=30, deadline=None)
@given(st.integers(20, 3000), st.integers(0, 10**6))
def test_split_is_a_seeded_partition(n, seed):
    s = se.split_indices(n, seed)
    allidx = np.r_[s.train, s.val, s.test]
    assert sorted(allidx.tolist()) == list(range(n))
    assert abs(len(s.test) - 0.1 * n) <= 1
    assert abs(len(s.val) - 0.1 * (n - len(s.test))) <= 1
    s2 = se.split_indices(n, seed)
    assert np.array_equal(s.test, s2.test) and np.array_equal(s.val, s2.val)


def test_logistic_baseline_learns_a_separable_toy_problem():
    rng = np.random.default_rng(0)
    pos, neg = ["good", "great", "fine"], ["bad", "awful", "dull"]
    noise = ["the", "a", "film", "plot", "is"]
    tokens, labels = [], []
    for i in range(400):
        y = i % 2
        words = list(rng.choice(noise, 4)) + [str(rng.choice(pos if y else neg))]
        tokens.append(words)
        labels.append(y)
    split = se.split_indices(400, 1)
    res = se.logistic_baseline(tokens, np.array(labels), split, grid=(1e-3, 1e-2))
    assert res["test_acc"] == 1.0
    res2 = se.logistic_baseline(tokens, np.array(labels), split, bigrams=True, grid=(1e-3,))
    assert res2["test_acc"] == 1.0
    assert se.with_bigrams(["a", "b", "c"]) == ["a", "b", "c", "a b", "b c"]


def test_numpy_reading_matches_the_torch_model():
    torch = pytest.importorskip("torch")
    s = se.quick_settings()
    s.dropout = 0.0
    torch.manual_seed(0)
    model = se.make_model(s, 50).double().eval()
    E = model.embed.weight.detach().numpy()
    B = model.B.weight.detach().numpy()
    w, b = model.out.weight.detach().numpy()[0], float(model.out.bias.detach())
    rng = np.random.default_rng(0)
    for n in [1, 3, 9, 20]:
        ids = rng.integers(2, 50, n).tolist()
        r = se.read_sentence([str(i) for i in ids], ids, 1, E, B.T @ B, w, b, s)
        with torch.no_grad():
            logit = float(model(torch.tensor([ids]), mode="hardmax"))
        assert r.logit == pytest.approx(logit, abs=1e-9)
        assert any(r.leader)  # the word with the largest A-norm always leads
        assert all(r.cluster_of[i] == i for i in range(n) if r.leader[i])
        assert all(r.leader[c] or c < 0 for c in r.cluster_of) or len(set(ids)) < n


def test_straight_through_forward_is_hardmax():
    torch = pytest.importorskip("torch")
    s = se.quick_settings()
    s.dropout = 0.0
    model = se.make_model(s, 30).eval()
    ids = torch.tensor([[2, 5, 7, 9, 0, 0], [3, 3, 4, 0, 0, 0]])
    with torch.no_grad():
        assert torch.allclose(model(ids, mode="straight-through"), model(ids, mode="hardmax"))
        # padding never matters
        assert torch.allclose(model(ids[:, :4]), model(ids)[:])


def test_quick_run_through_the_cli(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "sent"
    res = subprocess.run(
        ["exactformer", "experiment", "sentiment", "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr
    r = json.loads((out / "results.json").read_text())
    for key in ["test_acc", "baseline", "baseline_bigram", "train_seconds", "settings",
                "training", "top_leaders", "history", "sizes"]:
        assert key in r
    assert 0.0 <= r["test_acc"] <= 1.0 and 0.5 < r["baseline"] <= 1.0
    assert r["settings"]["quick"] and r["settings"]["attention"] == "hardmax"
    assert "straight-through" in r["training"]
    assert r["sizes"]["train"] + r["sizes"]["val"] + r["sizes"]["test"] == 2000
    assert r["best_epoch"] == 1 + int(np.argmax([h["val_acc"] for h in r["history"]]))
    for name in ["sentences.html", "leaders_per_class.png", "embeddings_pca.png"]:
        assert (out / name).stat().st_size > 1000
    html = (out / "sentences.html").read_text(encoding="utf-8")
    assert html.count("class='s'") >= 3 and "class='w L'" in html
    assert "test accuracy" in res.stdout


def test_missing_torch_is_one_line_and_exit_2(tmp_path):
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "sys.argv = ['exactformer', 'experiment', 'sentiment', '--quick', '--out', "
        f"{str(tmp_path)!r}]\n"
        "from exactformer.cli import main; main()\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "torch" in res.stderr
    assert not (tmp_path / "results.json").exists()

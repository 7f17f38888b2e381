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


def test_parse_seeds():
    from exactformer.errors import ExactformerError

    assert se.parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert se.parse_seeds("3") == [3]
    assert se.parse_seeds("0, 2,7") == [0, 2, 7]
    assert se.parse_seeds("0-1,5") == [0, 1, 5]
    for bad in ["", "a", "4-2", "1,1", "-1", "0-"]:
        with pytest.raises(ExactformerError, match="--seeds"):
            se.parse_seeds(bad)


def test_summary_and_paired_interval():
    s = se.summarize([0.7, 0.8, 0.9])
    assert s["mean"] == pytest.approx(0.8) and s["std"] == pytest.approx(0.1)
    assert se.summarize([0.5])["std"] is None
    d = se.paired_difference([0.8, 0.9, 1.0], [0.7, 0.7, 0.7])
    assert d["per_seed"] == pytest.approx([0.1, 0.2, 0.3])
    # t(0.975, 2) = 4.3027; sd 0.1; half width 4.3027 * 0.1 / sqrt(3)
    half = 4.302652729749464 * 0.1 / 3**0.5
    assert d["interval"] == pytest.approx([0.2 - half, 0.2 + half])
    assert se.paired_difference([0.8], [0.7])["interval"] is None


def test_leader_rates_on_a_hand_made_case():
    # 20 words: the two most polar (10 %) are "great" and "awful"
    polarity = {f"w{k}": 0.01 * (k + 1) for k in range(18)} | {"great": 3.0, "awful": -2.5}
    sentences = [["the", "great", "w1"], ["awful", "w2"], ["w3", "great"], ["w4", "zzz"]]
    leaders = ["great", "awful", "w3", "zzz"]
    predictions = [True, True, True, False]
    r = se.leader_rates(leaders, sentences, predictions, polarity)
    assert r["n_polar_words"] == 2 and r["n_sentences"] == 4
    assert r["leader_in_top10"] == pytest.approx(2 / 4)
    # great/True agrees, awful/True no, w3 (+)/True agrees, zzz unknown never agrees
    assert r["prediction_agrees_with_leader"] == pytest.approx(2 / 4)
    assert r["chance_in_top10"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 2 + 0) / 4)
    assert r["chance_agrees"] == pytest.approx((2 / 3 + 1 / 2 + 1 + 0) / 4)


def test_main_leader_receives_the_most_attention():
    s = se.quick_settings()
    s.iterations = 1
    # A = I: every token attends to the token with the largest projection on itself
    A = np.eye(2)
    Z = np.array([[1.0, 0.0], [3.0, 0.1], [0.9, 0.2], [0.0, 0.5]])
    # token 1 wins the argmax of tokens 0, 1 and 2 (token 3 leads itself)
    assert se.main_leader(Z, A, s) == 1
    # all tokens their own leaders (orthogonal, equal received attention): the largest
    # self-score wins the tie
    Z = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert se.main_leader(Z, A, s) == 1
    s.iterations = 2
    assert se.main_leader(Z[::-1], A, s) == 0


def test_nb_log_ratios_on_a_hand_made_case():
    # word 2 in both positives, word 3 in one negative (twice: counted once), word 4 nowhere
    encoded = [[2, 3, 3], [2], [3, 3], [4]]
    labels = np.array([1, 1, 0, 0])
    r = se.nb_log_ratios(encoded, labels, [0, 1, 2], 5, smoothing=1.0)
    p = np.array([1, 1, 3, 2, 1.0])  # positives: 2 twice, 3 once, plus 1 everywhere
    q = np.array([1, 1, 1, 2, 1.0])  # negatives (sentence 3 is not in idx): 3 once
    expected = np.log(p / p.sum()) - np.log(q / q.sum())
    assert r[se.PAD] == 0.0 and np.allclose(r[1:], expected[1:])
    assert r[2] > 0 and r[4] == pytest.approx(np.log(q.sum() / p.sum()))


@pytest.mark.parametrize("nb_smoothing", [None, 1.0])
def test_unigram_initialisation_is_the_mean_pooled_bag_of_words(nb_smoothing):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    encoded = [rng.integers(1, 30, rng.integers(1, 9)).tolist() for _ in range(200)]
    labels = np.array([int(sum(s) > 15 * len(s)) for s in encoded])
    init = se.UnigramInit.fit(encoded, labels, np.arange(200), 30, 1e-4, nb_smoothing)
    X = se.term_frequencies(encoded, 30)
    if nb_smoothing is not None:  # c = (regression on tf ⊙ r) ⊙ r
        r = se.nb_log_ratios(encoded, labels, np.arange(200), 30, nb_smoothing)
        theta = se.fit_logistic(X.multiply(r[None, :]).tocsr(), labels, 1e-4)
        assert np.allclose(init.c[1:], theta[1:-1] * r[1:]) and init.b == theta[-1]
    assert np.allclose(X.sum(axis=1), 1.0)
    for dim in [2, 16]:
        s = se.quick_settings()
        s.dim, s.alpha, s.iterations = dim, 1.0, 2
        torch.manual_seed(0)
        model = se.make_model(s, 30, init).double().eval()
        # every word its own leader: the untrained model is the mean-pooled unigram model
        logits = se._logits(model, encoded, "hardmax")
        assert np.allclose(logits, X @ init.c + init.b, rtol=0, atol=1e-6)
        E = model.embed.weight.detach().numpy()
        assert np.allclose(np.linalg.norm(E[1:, 1:], axis=1), s.init_noise * (dim - 1) ** 0.5)
    assert 0.5 < init.accuracy(encoded, labels, np.arange(200)) <= 1.0


def test_lsa_directions_and_the_untrained_model_with_them():
    pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    encoded = [rng.integers(2, 25, rng.integers(2, 9)).tolist() for _ in range(120)]
    labels = np.array([int(sum(s) > 13 * len(s)) for s in encoded])
    V = se.lsa_directions(encoded, np.arange(120), 30, 5, seed=0)
    assert V.shape == (30, 5) and np.allclose(np.linalg.norm(V, axis=1), 1.0)
    assert np.array_equal(V, se.lsa_directions(encoded, np.arange(120), 30, 5, seed=0))
    # words 2…24 occur: rows of the top-5 right singular vectors times the singular
    # values, made unit length (each singular vector up to its sign)
    X = se.term_frequencies(encoded, 30).toarray()
    _, sv, vt = np.linalg.svd(X, full_matrices=False)
    W = (vt[:5].T[2:25] * sv[:5])[:, ::-1]  # svds: ascending singular values
    W /= np.linalg.norm(W, axis=1, keepdims=True)
    signs = np.sign(np.sum(V[2:25] * W, axis=0))
    assert np.allclose(V[2:25], W * signs, atol=1e-6)
    init = se.UnigramInit.fit(encoded, labels, np.arange(120), 30, 1e-4)
    s = se.quick_settings()
    s.dim = 6
    model = se.make_model(s, 30, init, V).double().eval()
    E = model.embed.weight.detach().numpy()
    assert np.allclose(E[1:, 1:] / np.linalg.norm(E[1:, 1:], axis=1, keepdims=True), V[1:])
    logits = se._logits(model, encoded, "hardmax")
    assert np.allclose(logits, X @ init.c + init.b, rtol=0, atol=1e-6)


def test_averaged_start_is_one_bag_of_words_and_refits_its_recipe():
    rng = np.random.default_rng(2)
    encoded = [rng.integers(1, 30, rng.integers(1, 9)).tolist() for _ in range(200)]
    labels = np.array([int(sum(s) > 15 * len(s)) for s in encoded])
    parts = ((None, 1e-4), (0.5, 1e-3))
    idx = np.arange(150)
    avg = se.UnigramInit.fit_average(encoded, labels, idx, 30, parts)
    fits = [se.UnigramInit.fit(encoded, labels, idx, 30, l2, nb) for nb, l2 in parts]
    assert np.allclose(avg.c, (fits[0].c + fits[1].c) / 2)
    assert avg.b == pytest.approx((fits[0].b + fits[1].b) / 2)
    assert avg.parts == parts and avg.c[se.PAD] == 0.0
    other = np.arange(50, 200)
    assert np.array_equal(avg.refit(encoded, labels, other, 30).c,
                          se.UnigramInit.fit_average(encoded, labels, other, 30, parts).c)
    assert np.array_equal(fits[1].refit(encoded, labels, other, 30).c,
                          se.UnigramInit.fit(encoded, labels, other, 30, 1e-3, 0.5).c)


def test_one_standard_error_rule():
    table = [{"config": {"a": 0}, "val_acc": [0.70, 0.74, 0.80]},
             {"config": {"a": 1}, "val_acc": [0.70, 0.79, 0.60]}]
    # best 0.80 on 100 sentences: se = 0.04; within it 0.79 (1 epoch) beats 0.80 (2 epochs)
    c = se.one_standard_error_choice(table, 100)
    assert c["standard_error"] == pytest.approx(0.04) and c["best_val_acc"] == 0.80
    assert (c["row"], c["epochs"], c["val_acc"]) == (1, 1, 0.79)
    # 0 epochs within the noise: the bag of words is kept (first configuration)
    assert se.one_standard_error_choice(table, 16)["epochs"] == 0  # se = 0.1
    # a large validation part: only the maximum qualifies
    assert se.one_standard_error_choice(table, 10**6)["epochs"] == 2


def test_search_applies_the_rule_to_every_epoch_of_every_configuration():
    pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    pos, neg, noise = [2, 3, 4], [5, 6, 7], list(range(8, 20))
    encoded, labels = [], []
    for i in range(300):
        y = i % 2
        encoded.append(rng.choice(noise, 3).tolist() + [int(rng.choice(pos if y else neg))])
        labels.append(y)
    labels = np.array(labels)
    split = se.split_indices(300, 0)
    init = se.UnigramInit.fit(encoded, labels, split.train, 20, 1e-4)
    s = se.quick_settings()
    s.epochs = 1
    config, choice, table = se.select_on_validation(s, {"alpha": (0.3, 1.0)}, 20, encoded,
                                                    labels, split, init)
    assert [row["config"] for row in table] == [{"alpha": 0.3}, {"alpha": 1.0}]
    assert all(len(row["val_acc"]) == 2 for row in table)
    # 0 epochs is the bag of words whatever the configuration
    assert table[0]["val_acc"][0] == table[1]["val_acc"][0]
    assert choice == {**se.one_standard_error_choice(table, len(split.val)),
                      "row": choice["row"]}
    assert table[choice["row"]]["config"] == config


def test_results_table_is_generated_from_the_results():
    def col(values):
        return se.summarize(values)

    rates = [{"leader_in_top10": 0.6, "prediction_agrees_with_leader": 0.8,
              "chance_in_top10": 0.2, "chance_agrees": 0.5},
             {"leader_in_top10": 0.5, "prediction_agrees_with_leader": 0.7,
              "chance_in_top10": 0.3, "chance_agrees": 0.54}]
    r = {"seeds": [0, 1], "model": col([0.78, 0.76]), "model_val": col([0.77, 0.75]),
         "epochs_chosen": col([0, 3]),
         "unigram": col([0.77, 0.75]), "bigram": col([0.76, 0.79]),
         "unigram_mean_pooled": col([0.775, 0.755]),
         "model_minus_unigram": se.paired_difference([0.78, 0.76], [0.77, 0.75]),
         **se.leader_summary(rates), "trained_attention": None}
    assert r["chance"] == pytest.approx({"in_top10": 0.25, "agrees": 0.52})
    table = se.results_table(r)
    lines = table.splitlines()
    assert lines[0].startswith("| seed | model (test) | validation | epochs chosen |")
    assert lines[2].startswith("| 0 | 0.780 | 0.770 | 0 | 0.770 | 0.760 | 0.775 | 0.010 | 0.600")
    assert lines[3].startswith("| 1 | 0.760 | 0.750 | 3 |")
    assert lines[4].startswith("| mean | 0.770 | 0.760 | 1.5 |")
    assert "+0.0100" in table and "chance" in table.lower() and "trained" not in table
    # with the trained-attention diagnostic: its accuracy, rates and paired difference
    r["trained_attention"] = {
        "test_acc": col([0.77, 0.74]), **se.leader_summary(rates[::-1]),
        "minus_attention_off": se.paired_difference([0.77, 0.74], [0.775, 0.755])}
    lines = se.results_table(r).splitlines()
    assert lines[0].endswith("| trained attention (test) | its leader in top 10 % |"
                             " agrees with its leader |")
    assert lines[2].endswith("| 0.010 | 0.770 | 0.500 | 0.700 |")
    assert any(x.startswith("Paired difference trained attention − attention off: -0.0100")
               for x in lines)


@pytest.mark.slow
def test_quick_run_through_the_cli(tmp_path):
    pytest.importorskip("torch")
    from typer.testing import CliRunner

    from exactformer.cli import app

    out = tmp_path / "sent"
    res = CliRunner().invoke(app, ["experiment", "sentiment", "--quick", "--seeds", "0,1",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    r = json.loads((out / "results.json").read_text())
    assert r["seeds"] == [0, 1] and len(r["per_seed"]) == 2
    for key in ["model", "unigram", "bigram", "unigram_mean_pooled", "leader_in_top10",
                "prediction_agrees_with_leader"]:
        assert len(r[key]["per_seed"]) == 2 and r[key]["std"] is not None
    d = r["model_minus_unigram"]
    assert d["interval"][0] <= d["mean"] <= d["interval"][1]
    for e in r["per_seed"]:
        assert 0.0 <= e["test_acc"] <= 1.0 and 0.5 < e["baseline"] <= 1.0
        assert e["sizes"]["train"] + e["sizes"]["val"] + e["sizes"]["test"] == 2000
        # the chosen configuration and epoch count follow the one-standard-error rule
        row = next(t for t in e["search"] if t["config"] == {
            k: v for k, v in e["chosen"].items() if k != "epochs"})
        assert e["val_acc"] == row["val_acc"][e["chosen"]["epochs"]]
        rule = se.one_standard_error_choice(e["search"], e["sizes"]["val"])
        assert e["chosen"]["epochs"] == rule["epochs"] and e["val_acc"] == rule["val_acc"]
        assert e["val_acc"] >= max(max(t["val_acc"]) for t in e["search"]) - rule[
            "standard_error"]
        t = e["trained_attention"]
        assert t["epochs"] >= 1 and t["val_acc"] == max(max(x["val_acc"][1:])
                                                        for x in e["search"])
        assert 0.0 <= e["leaders"]["leader_in_top10"] <= 1.0
    assert r["settings"]["quick"] and "straight-through" in r["training"]
    for name in ["sentences.html", "leaders_per_class.png", "embeddings_pca.png"]:
        assert (out / name).stat().st_size > 1000
    html = (out / "sentences.html").read_text(encoding="utf-8")
    assert html.count("class='s'") >= 3 and "class='w L'" in html and "★" in html
    assert (out / "table.md").read_text(encoding="utf-8") == se.results_table(r)
    assert "test accuracy" in res.output


def test_bad_seeds_is_one_line_and_exit_2(tmp_path):
    pytest.importorskip("torch")
    from typer.testing import CliRunner

    from exactformer.cli import app

    res = CliRunner().invoke(app, ["experiment", "sentiment", "--quick", "--seeds", "3-1",
                                   "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--seeds" in res.output
    assert not (tmp_path / "x").exists()


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

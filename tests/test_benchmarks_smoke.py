"""benchmarks/: every throughput variant runs on the tiny model, its checks hold; other scripts write reports."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from classlm import LMClassifier

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
throughput = pytest.importorskip("throughput")

TEXTS = [
    "Stocks fell sharply on Monday.",
    "The team won the match in the last minute of a long and tense game.",
    "A new phone was released today.",
    "Great movie!",
    "The quick brown fox jumps over the lazy dog.",
]


def write_ag_news(root, rows):
    """A stand-in ``ag_news`` folder under ``root``: the same rows as its train and test splits."""
    import json

    data = root / "ag_news"
    data.mkdir()
    for split in ("train", "test"):
        (data / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


@pytest.fixture(scope="module")
def clf(tiny_model_dir):
    return LMClassifier(
        model=str(tiny_model_dir), labels=throughput.NEWS_LABELS, instruction=throughput.INSTRUCTION, batch_size=2
    ).fit([])


def test_every_variant_runs_and_the_paths_agree(clf):
    results = {}
    # llama_server_* need the llama.cpp server (tests/test_remote_llama_cpp.py covers that client path); the int8
    # candidates their optional packages.
    local = [v for v, (_, dtype) in throughput.VARIANTS.items() if dtype != "gguf" and v not in throughput.INT8]
    assert {"shipped", "shipped_fp32", "no_reuse", "floor_fp32", "floor_bf16", "generate"} <= set(local)
    for name in local:
        fn, note = throughput.make_variant(name, clf)
        seconds, results[name] = throughput.time_passes(fn, TEXTS, batch_size=2, rounds=1)
        assert len(seconds) == 1 and note
        assert len(results[name]) == len(TEXTS)
        if name == "shipped":
            assert clf.method_.lm.cached_prefix is not None  # shipped really reused the prompt head
    np.testing.assert_allclose(results["shipped"], results["no_reuse"], atol=1e-4)
    np.testing.assert_allclose(results["shipped"], results["full_logits"], atol=1e-4)
    assert results["seqcls_raw"].shape == results["seqcls_prompt"].shape == (len(TEXTS), 4)
    assert set(results["generate"].tolist()) <= {-1, 0, 1, 2, 3}


def test_at_last_reads_each_rows_last_real_token():
    x = torch.arange(12).view(2, 3, 2)
    assert throughput.at_last(x, [[5, 6], [7, 8, 9]]).tolist() == [[2, 3], [10, 11]]


def test_target_rows_say_met_or_not_and_the_floors_ceiling():
    tps = {"shipped": 40.0, "seqcls_raw": 25.0, "llama_server_1": 5.2, "floor_fp32": 15.0, "floor_bf16": 42.0}
    run = {
        "variants": {v: {"texts_per_second": t} for v, t in tps.items()},
        "shipped_time_per_text_over_floor_bf16": 1.05,
    }
    rows = throughput.target_rows(run)
    assert rows[0] == "| shipped texts/s >= 1.3x seqcls_raw | 1.60x | yes | 1.68x |"
    assert rows[1] == "| shipped texts/s >= 2.5x floor_fp32 | 2.67x | yes | 2.80x |"
    assert rows[2] == "| shipped texts/s >= 8.0x llama_server_1 | 7.69x | **no** | 8.08x |"  # others absent: no row
    assert rows[3] == "| shipped time per text <= 1.1x floor_bf16 | 1.05x | yes | – |"


def test_merge_replaces_only_what_was_run():
    from classlm.machine import machine_block, machine_line

    old = {
        "command": "first",
        "runs": [
            {
                "model": "m",
                "variants": {"shipped": {"texts_per_second": 1.0}, "generate": {"texts_per_second": 0.5}},
                "checks": {"shipped_vs_no_reuse_max_abs_diff": 1e-6},
            }
        ],
        "quality": {"bf16": {"macro_f1_delta": 0.0}},
    }
    new = {
        "command": "second",
        "runs": [
            {
                "model": "m",
                "variants": {"shipped": {"texts_per_second": 2.0}},
                "checks": {"shipped_vs_no_reuse_max_abs_diff": None},  # no_reuse was not re-run
            }
        ],
    }
    args = type("Args", (), {"sections": ["variants"], "variants": ["shipped"]})()
    doc = throughput.merged(old, new, args)
    run = doc["runs"][0]
    assert run["variants"]["shipped"]["texts_per_second"] == 2.0  # re-run: replaced
    assert run["variants"]["generate"] == {"texts_per_second": 0.5, "ratio_to_shipped": 0.25}  # kept, ratio anew
    assert run["checks"] == {"shipped_vs_no_reuse_max_abs_diff": 1e-6}  # not measured again: kept
    assert doc["quality"] == old["quality"] and doc["command"] == "second"
    assert doc["merged"] == [{"command": "second", "sections": ["variants"], "variants": ["shipped"]}]
    # A training-only run (possibly on another machine) keeps the scoring rows' command and machine in the header;
    # its section carries its own, and the markdown says which machine measured it.
    old["machine"] = {"cpu": "scoring machine"}
    training = {"recipe": "r", "n_train": 8, "peak_rss": "p", "command": "third", "machine": machine_block()}
    new = {"command": "third", "machine": {"cpu": "training machine"}, "runs": [{"model": "m", "variants": {}}],
           "training": training}  # fmt: skip
    args = type("Args", (), {"sections": ["training"], "variants": []})()
    doc = throughput.merged(old, new, args)
    assert (doc["command"], doc["machine"]) == ("first", {"cpu": "scoring machine"})
    assert doc["training"]["command"] == "third" and doc["merged"][-1]["sections"] == ["training"]
    text = "\n".join(throughput.recipe_lines(doc["training"], None))
    assert f"Measured on {machine_line(training['machine'])}; reproduce: `third`." in text


def test_prefix_attention_benchmark_writes_its_report(tmp_path, monkeypatch):
    import json

    prefix_attention = pytest.importorskip("prefix_attention")
    monkeypatch.setattr(sys, "argv", ["prefix_attention.py", "--n", "2", "--rows", "2", "--out", str(tmp_path)])
    prefix_attention.main()
    doc = json.loads((tmp_path / "prefix_attention.json").read_text())
    assert doc["shape"]["rows"] == 2 and len(doc["ms_per_layer_call"]) == 3
    assert "| floor (f): own keys only" in (tmp_path / "prefix_attention.md").read_text()


def test_many_classes_report_names_the_default_head_and_the_speed_ratio():
    many_classes = pytest.importorskip("many_classes")
    from classlm.machine import machine_block

    row = {"accuracy": 0.5, "macro_f1": 0.4, "nll": 2.0, "ece": 0.03, "train_examples_per_second": 6.0,
           "texts_per_second": 100.0, "epochs": 8.0, "command": "python benchmarks/many_classes.py",
           "machine": "CPU (AMD EPYC), 2 cores"}  # fmt: skip
    doc = {
        "machine": machine_block(),
        "clinc150": {"1000": {"name_rows": {**row, "in_scope_ece": 0.02, "in_scope_accuracy": 0.9, "oos_recall": 0.25,
                                            "oos_share": 0.2, "known_share_ece": 0.04, "known_share_nll": 1.5,
                                            "known_share_accuracy": 0.7, "known_share_oos_recall": 0.6,
                                            "em_oos_share": 0.05},
                              "default": {**row, "resolves_to": "name_rows"}}},
        "speed": {"n_texts": 10, "texts_per_second_151": 80.0, "texts_per_second_4": 100.0, "scoring_151": "x",
                  "scoring_4": "first_token", "prompt_tokens_151": 700, "prompt_tokens_4": 60, "ratio_151_vs_4": 0.8,
                  "exact": {"trec_fine": {"k": 50, "answer_tokens": 195, "trie_nodes": 29, "trie_texts_per_second": 6.5,
                                          "trie_n_texts": 64, "k_rows_texts_per_second": 0.25, "k_rows_n_texts": 2,
                                          "trie_speedup": 26.0}}},
    }  # fmt: skip
    md = many_classes.to_markdown(doc)
    assert "## clinc150, 1000 training rows" in md and "| default → name_rows | 0.500 | 0.400 |" in md
    assert "ratio **0.80**" in md and "Made by `python benchmarks/many_classes.py`" in md
    assert "| name_rows | 0.020 | 0.900 | 0.250 |" in md  # clinc150 without its oos rows
    assert "| name_rows | 0.200 | 0.040 | 1.500 | 0.700 | 0.600 | 0.050 |" in md  # at the test's oos share
    assert "On CPU (AMD EPYC), 2 cores" in md  # each section names the machine its rows ran on
    assert "| trec_fine | 50 | 195 | 29 | 6.50 (64 texts) | 0.250 (2) | 26x |" in md


def test_many_classes_moves_the_probabilities_to_the_test_oos_share():
    many_classes = pytest.importorskip("many_classes")
    source = np.array([0.45, 0.45, 0.1])  # calibrated where oos was 10% of the rows; the test is half oos
    proba = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.5, 0.2, 0.3], [0.2, 0.5, 0.3]])
    r = many_classes.out_of_scope(np.array([0, 1, 2, 2]), proba, ["a", "b", "oos"], source)
    assert r["oos_share"] == 0.5 and r["oos_recall"] == 0.0 and r["in_scope_accuracy"] == 1.0
    # At 25/25/50 the weights are 0.556, 0.556 and 5: the oos rows turn to oos, and so do the in-scope ones
    # (0.8 * 0.556 = 0.444 against 0.1 * 5 = 0.5).
    assert r["known_share_oos_recall"] == 1.0 and r["known_share_accuracy"] == 0.5
    assert 0.1 < r["em_oos_share"] <= 1.0
    assert many_classes.out_of_scope(np.array([0, 1]), proba[:2, :2], ["a", "b"], source[:2]) == {}


def test_ece_floor_benchmark_puts_the_ece_beside_its_chance_floor_and_the_test_balance():
    from types import SimpleNamespace

    ece_floor = pytest.importorskip("ece_floor")
    texts = [f"{w} {i}" for i in range(40) for w in ("spam offer win", "hello see you")]
    labels = ["spam" if i % 2 == 0 else "ham" for i in range(80)]
    clf = LMClassifier(method="tfidf", labels=["ham", "spam"]).fit(texts[:60], labels[:60])
    test = SimpleNamespace(texts=texts[60:] + texts[60:70:2], labels=labels[60:] + labels[60:70:2])  # 15 spam, 10 ham
    cell = ece_floor.measure(clf, test)
    assert cell["n_test"] == 25 and cell["test_priors"] == {"ham": 0.4, "spam": 0.6}
    assert set(cell["adapted"]) == {"auto", "em", "bbse"} and cell["adapted"]["em"]["ran"] == "em"
    assert 0.0 <= cell["floor"]["median"] <= cell["floor"]["p90"] and 0.0 <= cell["test_balance"]["ece"] <= 1.0
    assert clf.priors()["deployment"] is None  # the adaptations were undone
    md = ece_floor.to_markdown({"sms": {"3000": {"tfidf": {**cell, "command": "c", "machine": "m"}}}})
    assert "## sms, 3000 training rows" in md and f"| tfidf | 25 | {cell['macro_f1']:.3f} | {cell['ece']:.3f} |" in md
    assert "ham 0.500 → 0.400" in md  # the balance that moved, training → test


def test_recipe_benchmark_trains_through_the_cli_and_compares_on_the_same_rows(tmp_path, monkeypatch, tiny_model_dir):
    import json

    recipe = pytest.importorskip("recipe")
    folder = tmp_path / "data" / "toy"
    folder.mkdir(parents=True)
    words = {"sport": "the team won the match", "money": "the bank raised its rates"}
    for split, n in (("train", 30), ("test", 6)):
        rows = [{"text": f"{words[c]} {i}", "label": c} for i in range(n) for c in words]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "labels.json").write_text(json.dumps(list(words)))
    # 32 training rows of 2 classes: epochs=None makes 8 passes, so a recipe of --epochs 8 is the default's training;
    # the previous default made ceil(48 / 16 rows per class) = 3.
    monkeypatch.setitem(recipe.RECIPES, "epochs_8", ["--epochs", "8"])
    argv = ["recipe.py", "--data", str(tmp_path / "data"), "--datasets", "toy", "--n-train", "40", "--recipes",
            "previous_default,epochs_8,default", "--model", str(tiny_model_dir), "--runs", str(tmp_path / "runs"),
            "--out", str(tmp_path / "recipe"), "--threads", "1"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    recipe.main()
    doc = json.loads((tmp_path / "recipe.json").read_text())
    cell = doc["toy"]["40"]
    assert set(cell) == {"previous_default", "epochs_8", "default", "tfidf", "zero_shot"}
    lm = cell["previous_default"]
    # 40 rows less 4 held out for evaluation (no validation split) less 4 for the temperature, for all three runs.
    assert lm["n_fit"] == cell["tfidf"]["n_fit"] == 32 and lm["n_calib"] == cell["zero_shot"]["n_calib"] == 4
    assert lm["epochs"] == 3.0 and "--epochs 3" in lm["train_command"] and lm["n_test"] == 12
    assert cell["zero_shot"]["train_seconds"] == 0.0 and all(0 <= r["macro_f1"] <= 1 for r in cell.values())
    assert "| previous_default | 1 |" in (tmp_path / "recipe.md").read_text()  # the margin table, one cell
    # The default stood in by the --epochs 8 run (the same training), not trained a second time.
    assert cell["default"]["same_training_as"] == "epochs_8" and not (tmp_path / "runs" / "toy_40_default").exists()
    assert cell["default"]["epochs"] == 8.0 and cell["default"]["macro_f1"] == cell["epochs_8"]["macro_f1"]
    # A second command reuses the finished run (same command) instead of training again.
    stamp = (tmp_path / "runs" / "toy_40_previous_default" / "classlm.json").stat().st_mtime_ns
    recipe.main()
    assert (tmp_path / "runs" / "toy_40_previous_default" / "classlm.json").stat().st_mtime_ns == stamp
    # Where the previous default resolves to the same passes as the default (clinc150, or 3,000 rows), it too is
    # stood in by the run that trains the same, not trained a third time.
    monkeypatch.setattr(recipe, "previous_epochs", lambda n_rows, n_classes: 8)
    monkeypatch.setattr(sys, "argv", [*argv, "--recipes", "default,previous_default", "--merge"])
    recipe.main()
    cell = json.loads((tmp_path / "recipe.json").read_text())["toy"]["40"]
    assert cell["previous_default"]["same_training_as"] == "epochs_8" and cell["previous_default"]["epochs"] == 8.0
    assert (tmp_path / "runs" / "toy_40_previous_default" / "classlm.json").stat().st_mtime_ns == stamp


def test_calibration_benchmark_resamples_to_the_asked_balance_and_renders():
    calibration = pytest.importorskip("calibration")
    y = np.repeat([0, 1, 2], [500, 300, 200])
    idx = calibration.resample(y, np.array([0.1, 0.1, 0.8]), np.random.default_rng(0), n_max=1000)
    assert len(set(idx)) == len(idx) == 250  # class 2's 200 rows cap it: 200 / 0.8
    np.testing.assert_allclose(np.bincount(y[idx], minlength=3) / len(idx), [0.1, 0.1, 0.8])
    row = {"accuracy": 0.5, "macro_f1": 0.4, "nll": 1.0, "ece": 0.1, "ratio_min": 0.5, "ratio_max": 2.0}
    doc = {"zero_shot": {"command": "c", "machine": "m", "sst2": dict.fromkeys(calibration.CALIBRATORS, row)}}
    md = calibration.to_markdown(doc)
    assert "| batch+temperature | 0.400 (0.100) | 0.400 |" in md


def test_calibration_benchmark_prior_shift_on_further_calibration_rows(tmp_path, monkeypatch):
    import json

    calibration = pytest.importorskip("calibration")
    words = {"ham": "see you at lunch", "spam": "win a free prize now"}
    rng = np.random.default_rng(0)
    data = tmp_path / "sms_spam"
    data.mkdir()
    for split, n in (("train", 300), ("test", 200)):
        labels = rng.choice(["ham", "spam"], size=n, p=[0.7, 0.3])
        rows = [
            {"text": f"{words[lab]} {i} {rng.choice(['ok', 'hey', 'call'])}", "label": lab}
            for i, lab in enumerate(labels)
        ]
        (data / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    monkeypatch.setattr(calibration, "DATA", tmp_path)
    monkeypatch.setattr(calibration, "OUT", tmp_path / "out" / "calibration")
    monkeypatch.setattr(calibration, "SHIFTS", {"sms_spam": {"spam_50": {"spam": 0.5}}})
    argv = ["--sections", "prior_shift", "--shift-classifier", "tfidf", "--shift-n-train", "100"]
    monkeypatch.setattr(sys, "argv", ["x", *argv, "--shift-calib-rows", "150", "--n-test", "100"])
    calibration.main()
    sec = json.loads((tmp_path / "out" / "calibration.json").read_text())["prior_shift_100_calib150"]["sms_spam"]
    assert sec["n_calibration_rows"] == 150 and sec["calibration_rows"] == "150 further seeded train rows"
    cell = sec["spam_50"]
    assert cell["true_priors"] == {"ham": 0.5, "spam": 0.5} and 0 <= cell["prior_error"] < 0.1
    # The default estimate is the one of the method "auto" chose, whose figures sit beside it.
    assert cell["prior_error"] == cell[f"{cell['method']}_prior_error"]
    assert 0 <= cell["bbse_prior_error"] < 0.1 and 0 <= cell["bbse_counts_prior_error"] < 0.2
    assert isinstance(cell["bbse_nll_after"], float)  # the stand-in rows are too easy for NLL to show a gain
    # 100 of the 150 rows redrawn: each estimator's errors over the draws; about 30 spam rows each, so auto is EM.
    drawn = sec["redrawn"]["100"]["spam_50"]
    assert sec["redrawn"]["draws"] == calibration.DRAWS and set(drawn) == {"em", "bbse", "auto"}
    assert drawn["auto"] == drawn["em"] and 0 <= drawn["bbse"]["median"] <= drawn["bbse"]["p90"] < 0.2
    md = (tmp_path / "out" / "calibration.md").read_text()
    assert "| sms_spam (tfidf, 100 rows) | temperature on 150 | spam_50 |" in md
    assert "| sms_spam | 100 of 150 | spam_50 |" in md
    # The classifier's own hold-out (10 of its 100 rows) is a section of its own, too few rows to redraw.
    monkeypatch.setattr(sys, "argv", ["x", *argv, "--shift-calib-rows", "0", "--n-test", "100", "--merge"])
    calibration.main()
    doc = json.loads((tmp_path / "out" / "calibration.json").read_text())
    assert set(doc) == {"prior_shift_100_calib150", "prior_shift_100_holdout"}
    assert doc["prior_shift_100_holdout"]["sms_spam"]["n_calibration_rows"] == 10
    assert "redrawn" not in doc["prior_shift_100_holdout"]["sms_spam"]


def test_multilabel_benchmark_scores_a_tfidf_cell_and_renders(tmp_path, monkeypatch):
    import json

    multilabel = pytest.importorskip("multilabel")
    rng = np.random.default_rng(0)
    names = ["joy", "anger", "fear"]
    words = {"joy": "happy glad", "anger": "mad furious", "fear": "scared afraid"}
    for split, n in (("train", 120), ("test", 40)):
        rows = []
        for _ in range(n):
            on = [c for c in names if rng.random() < 0.4]
            rows.append({"text": " ".join([words[c] for c in on] or ["plain"]) + " text", "labels": on})
        (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "labels.json").write_text(json.dumps(names))
    monkeypatch.setattr(multilabel, "DATA", tmp_path.parent)
    monkeypatch.setattr(multilabel, "OUT", tmp_path / "out" / "multilabel")
    (tmp_path / "out").mkdir()
    monkeypatch.setattr(sys, "argv", ["x", "--datasets", tmp_path.name, "--methods", "tfidf", "--n-test", "40"])
    multilabel.main()
    cell = json.loads((tmp_path / "out" / "multilabel.json").read_text())[tmp_path.name]["tfidf"]
    assert cell["macro_f1"] > 0.9  # the words name the labels: a bag of words learns them
    assert set(multilabel.KEEP) <= set(cell) and cell["n_test"] == 40
    assert f"| tfidf | {cell['n_train']} | " in (tmp_path / "out" / "multilabel.md").read_text()  # its rows, per row
    # --full: every row of both splits (the GPU mode's budget; --device cuda files its cells under "gpu").
    monkeypatch.setattr(sys, "argv", ["x", "--datasets", tmp_path.name, "--methods", "tfidf", "--full", "--merge"])
    multilabel.main()
    cell = json.loads((tmp_path / "out" / "multilabel.json").read_text())[tmp_path.name]["tfidf"]
    assert (cell["n_train"], cell["n_test"]) == (120, 40) and "--full" in cell["command"]


def test_scale_out_benchmark_measures_the_seq_cls_export(tmp_path, monkeypatch, tiny_model_dir):
    import json

    scale_out = pytest.importorskip("scale_out")
    rows = [{"text": f"news {i} about the {w}", "label": lab}
            for i, (w, lab) in enumerate([("match", "Sports"), ("stocks", "Business"), ("war", "World"),
                                          ("phone", "Sci/Tech")] * 10)]  # fmt: skip
    write_ag_news(tmp_path, rows)
    monkeypatch.setattr(scale_out, "DATA", tmp_path)
    monkeypatch.setattr(scale_out, "OUT", tmp_path / "out" / "scale_out")
    monkeypatch.setattr(sys, "argv", ["x", "--sections", "seq_cls", "--model", str(tiny_model_dir), "--n-texts", "12",
                                      "--n-calib", "20"])  # fmt: skip
    scale_out.main()
    doc = json.loads((tmp_path / "out" / "scale_out.json").read_text())
    assert doc["seq_cls"]["max_abs_prob_delta"] < 1e-4 and doc["seq_cls"]["n_texts"] == 12
    assert "max |Δp|" in (tmp_path / "out" / "scale_out.md").read_text()


@pytest.mark.slow
def test_scale_out_benchmark_trains_under_accelerate(tmp_path, monkeypatch, tiny_model_dir):
    import json

    scale_out = pytest.importorskip("scale_out")
    rows = [{"text": f"news {i} about the {w}", "label": lab}
            for i, (w, lab) in enumerate([("match", "Sports"), ("stocks", "Business")] * 20)]  # fmt: skip
    write_ag_news(tmp_path, rows)
    monkeypatch.setattr(scale_out, "DATA", tmp_path)
    monkeypatch.setattr(scale_out, "OUT", tmp_path / "out" / "scale_out")
    monkeypatch.setattr(sys, "argv", ["x", "--sections", "accelerate", "--model", str(tiny_model_dir), "--n-texts",
                                      "8", "--n-calib", "8", "--n-train", "32", "--max-steps", "4"])  # fmt: skip
    scale_out.main()
    found = json.loads((tmp_path / "out" / "scale_out.json").read_text())["accelerate"]
    assert "error" not in found, found.get("error")
    assert found["1"]["steps"] == found["2"]["steps"] == 4 and found["2"]["threads_per_process"] >= 1
    assert found["max_abs_loss_delta"] < 1e-4  # the same global batch: the same losses
    assert "| 2 |" in (tmp_path / "out" / "scale_out.md").read_text()


def test_distill_benchmark_compares_students(tmp_path, monkeypatch, tiny_model_dir):
    import json

    distill = pytest.importorskip("distill")
    words = {"World": "war", "Sports": "match", "Business": "stocks", "Sci/Tech": "phone"}
    rows = [{"text": f"news {i} about the {w} {'and more ' * (i % 3)}", "label": lab}
            for i in range(40) for lab, w in words.items()]  # fmt: skip
    write_ag_news(tmp_path, rows)
    monkeypatch.setattr(distill, "DATA", tmp_path)
    monkeypatch.setattr(distill, "OUT", tmp_path / "out" / "distill")
    monkeypatch.setattr(sys, "argv", ["x", "--datasets", "ag_news", "--students", "lora,tfidf", "--model",
                                      str(tiny_model_dir), "--n-labelled", "60", "--n-unlabelled", "60",
                                      "--n-test", "20", "--max-steps", "3"])  # fmt: skip
    distill.main()
    doc = json.loads((tmp_path / "out" / "distill.json").read_text())["ag_news"]
    for kind in ("lora", "tfidf"):
        assert set(doc[kind]) == {"hard_only", "distilled", "teacher"}
        assert all(0 <= doc[kind][run]["macro_f1"] <= 1 for run in doc[kind])
    assert doc["n_labelled"] == 60 and doc["n_unlabelled"] == 60 and len(doc["lora"]["teacher"]["weights"]) == 2
    assert "| lora | distilled |" in (tmp_path / "out" / "distill.md").read_text()

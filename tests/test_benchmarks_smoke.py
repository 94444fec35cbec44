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


@pytest.fixture(scope="module")
def clf(tiny_model_dir):
    return LMClassifier(
        model=str(tiny_model_dir), labels=throughput.NEWS_LABELS, instruction=throughput.INSTRUCTION, batch_size=2
    ).fit([])


def test_every_variant_runs_and_the_paths_agree(clf):
    results = {}
    for name in throughput.VARIANTS:
        fn, note = throughput.make_variant(name, clf)
        seconds, results[name] = throughput.time_passes(fn, TEXTS, batch_size=2, rounds=1)
        assert len(seconds) == 1 and note
        assert len(results[name]) == len(TEXTS)
        if name == "a":
            assert clf.method_.lm.cached_prefix is not None  # (a) really reused the prompt head
    np.testing.assert_allclose(results["a"], results["b"], atol=1e-4)
    np.testing.assert_allclose(results["a"], results["d"], atol=1e-4)
    assert results["c"].shape == results["c2"].shape == (len(TEXTS), 4)
    assert set(results["e"].tolist()) <= {-1, 0, 1, 2, 3}


def test_distinct_verbalizers_give_distinct_first_tokens(tiny_tokenizer):
    names = ["bill_balance", "bill_due", "book_flight", "book_hotel", "ENTY:animal", "ENTY:body"]
    verbalizers = throughput.distinct_verbalizers(names, tiny_tokenizer, leading_space=False)
    assert verbalizers is not None and len(verbalizers) == len(names)
    firsts = [tiny_tokenizer.encode(v, add_special_tokens=False)[0] for v in verbalizers]
    assert len(set(firsts)) == len(names)


def test_at_last_reads_each_rows_last_real_token():
    x = torch.arange(12).view(2, 3, 2)
    assert throughput.at_last(x, [[5, 6], [7, 8, 9]]).tolist() == [[2, 3], [10, 11]]


def test_target_rows_say_met_or_not_and_the_floors_ceiling():
    variants = {v: {"texts_per_second": tps} for v, tps in {"a": 16.0, "c": 10.0, "d": 4.2, "f": 16.8}.items()}
    run = {"variants": variants, "a_time_per_text_over_f": 1.05}
    rows = throughput.target_rows(run)
    assert rows[0] == "| (a) texts/s >= 1.3x (c) | 1.60x | yes | 1.68x |"
    assert rows[1] == "| (a) texts/s >= 4.0x (d) | 3.81x | **no** | 4.00x |"  # (c2), (e) absent: no row
    assert rows[2] == "| (a) time per text <= 1.15x (f) | 1.05x | yes | – |"


def test_prefix_attention_benchmark_writes_its_report(tmp_path, monkeypatch):
    import json

    prefix_attention = pytest.importorskip("prefix_attention")
    monkeypatch.setattr(sys, "argv", ["prefix_attention.py", "--n", "2", "--rows", "2", "--out", str(tmp_path)])
    prefix_attention.main()
    doc = json.loads((tmp_path / "prefix_attention.json").read_text())
    assert doc["shape"]["rows"] == 2 and len(doc["ms_per_layer_call"]) == 3
    assert "| floor (f): own keys only" in (tmp_path / "prefix_attention.md").read_text()

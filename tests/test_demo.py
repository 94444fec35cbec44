"""`classlm demo`: on the tiny model, every step runs and its output reads whole in 80 columns; on the real model
(integration), the shipped sample shows what the product promises: trained beats zero-shot by 0.3 macro-F1 and
TF-IDF on the same rows, with ECE after temperature at most 0.05."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from classlm import allocator
from classlm.demo import DEMO_DATA
from conftest import REPO, requires_smollm2
from test_cli import run_cli

SAMPLE = REPO / DEMO_DATA
TRAIN = [
    ("The team won the match.", "Sports"),
    ("Great goal in the last minute.", "Sports"),
    ("A late try sealed the cup final.", "Sports"),
    ("The striker signed for a new club.", "Sports"),
    ("Stocks fell sharply.", "Business"),
    ("Shares rose on Monday.", "Business"),
    ("The bank raised its rates again.", "Business"),
    ("Profits beat the forecast this quarter.", "Business"),
] * 3
TEST = [("The keeper saved a penalty.", "Sports"), ("Oil prices hit a record high.", "Business")] * 3


def _sample(tmp_path):
    folder = tmp_path / "sample"
    folder.mkdir()
    for name, rows in (("train", TRAIN), ("test", TEST)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    (folder / "labels.json").write_text(json.dumps(["Sports", "Business"]))
    return folder


def _rows(out: str) -> dict[str, list[float]]:
    """The results table: classifier name → accuracy, macro-F1, NLL, ECE."""
    found = re.findall(r"^(.+?)\s+(\d\.\d{3})\s+(\d\.\d{3})\s+(\d+\.\d{3})\s+(\d\.\d{3})\s+\S+$", out, flags=re.M)
    return {name.strip(): [float(v) for v in values] for name, *values in found}


def test_the_demo_runs_every_step_and_its_output_fits_80_columns(monkeypatch, capsys, tiny_model_dir, tmp_path):
    out_dir = tmp_path / "demo"
    args = ["demo", "--data", _sample(tmp_path), "--out", out_dir, "-m", tiny_model_dir, "--examples", 4, "--quiet"]
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    assert err == ""  # --quiet: no step lines, no bars, no library warnings
    # Every line fits 80 columns, but for those naming a path (never broken: it could not be copied).
    assert max(len(line) for line in out.splitlines() if str(out_dir) not in line) <= 80
    rows = _rows(out)
    assert list(rows) == [
        f"{n}{s}" for n in ("zero-shot", "TF-IDF + LR", "LoRA-trained") for s in ("", " + temperature")
    ], out
    # The drawn texts are held-out rows, and the count of right answers is what the lines above it say.
    listed = re.findall(r"^- (.+)$", out, flags=re.M)
    assert len(listed) == 4 and set(listed) <= {t for t, _ in TEST}
    verdicts = re.findall(r"-> \S+ \((right|WRONG[^)]*)\)", out)
    assert f"{verdicts.count('right')} of 4 right." in out
    for name in ("report.html", "run/classlm.json", "run/metrics.jsonl"):
        assert (out_dir / name).is_file(), name
    page = (out_dir / "report.html").read_text()
    assert "Training curves" in page and "LoRA-trained + temperature" in page and "Methods compared" in page
    assert f"Report: {out_dir / 'report.html'}" in out.replace("\n", " ")


def test_a_missing_sample_is_one_clear_line(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "demo", "--data", tmp_path / "nope")
    assert code == 2 and "train.jsonl and test.jsonl" in err and "--data" in err and "Traceback" not in err


def test_the_shipped_sample_is_small_licensed_and_has_distinct_first_words():
    size = sum(p.stat().st_size for p in SAMPLE.iterdir())
    assert size <= 1_000_000
    readme = (SAMPLE / "README.md").read_text()
    assert "CC BY 3.0" in readme and "Larson" in readme
    labels = json.loads((SAMPLE / "labels.json").read_text())
    assert 5 <= len(labels) <= 10
    test = [json.loads(x) for x in (SAMPLE / "test.jsonl").read_text().splitlines()]
    train = {json.loads(x)["text"] for x in (SAMPLE / "train.jsonl").read_text().splitlines()}
    assert len(test) >= 300 and not train & {r["text"] for r in test}  # held out for real
    assert {r["label"] for r in test} == set(labels)


@pytest.mark.integration
@requires_smollm2
def test_on_the_real_model_training_shows_what_it_promises(tmp_path):
    # As `make demo` runs it: the classlm command in its own process, on the allocator it picks (tcmalloc where
    # installed, and then bf16 training on an AMX CPU), not on this test process's settings.
    drop = (allocator.ENV, allocator.MARK, "LD_PRELOAD", "CLASSLM_DTYPE")  # what conftest pins for in-process tests
    env = {k: v for k, v in os.environ.items() if k not in drop}
    cmd = [sys.executable, "-m", "classlm", "demo", "--out", str(tmp_path / "demo"), "--quiet", "--data", str(SAMPLE)]
    proc = subprocess.run(cmd, env={**env, "OMP_NUM_THREADS": "2"}, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(proc.stdout)
    trained, zero, tfidf = (rows[f"{n} + temperature"] for n in ("LoRA-trained", "zero-shot", "TF-IDF + LR"))
    assert trained[1] >= zero[1] + 0.3, (trained, zero)
    assert trained[1] >= tfidf[1], (trained, tfidf)
    assert trained[3] <= 0.05, trained

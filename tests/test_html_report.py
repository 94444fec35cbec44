"""The HTML report: one self-contained page (no script, no fetch) that shows the figures it was given, escaped; written
by `classlm evaluate --html`, into every `classlm train` run folder and beside `classlm bench` results; and it opens in
a real headless Chromium without network."""

from __future__ import annotations

import json
import re
import subprocess

import numpy as np
import pytest

from classlm.html_report import render_html
from classlm.reports import build_report
from conftest import find_chromium, keep_artifact
from test_cli import dataset, run_cli  # noqa: F401  (dataset: the fixture)

CLASSES = ["weather", "alarm", "<b>&co"]


def _report(seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 120)
    p = rng.dirichlet(np.ones(3), 120)
    p[np.arange(120), y] += 1.0
    return build_report(y, p / p.sum(1, keepdims=True), CLASSES)


def _external_references(page: str) -> list[str]:
    """Everything a browser could fetch or run: scripts, links, src/href attributes, url(…) in CSS, @import."""
    found = re.findall(r"<script|<link|<img|<iframe|\bsrc=|\bhref=|url\(|@import", page, flags=re.I)
    # The one URL allowed is SVG's namespace name, which is never fetched.
    return found + [u for u in re.findall(r"https?://[^\s\"']+", page) if u != "http://www.w3.org/2000/svg"]


def test_the_page_is_self_contained_and_shows_what_it_was_given():
    trained, zero = _report(0), _report(1)
    rows = [
        {
            "step": s,
            "train_loss": 1.0 / (s + 1),
            "eval": {"accuracy": 0.5, "macro_f1": 0.4, "nll": 0.9, "class_mass": 0.7},
        }
        for s in (0, 5, 10)
    ]
    describe = {
        "classes": CLASSES,
        "answers": CLASSES,
        "tokens": [["Ġweather"], ["Ġalarm"], ["<b>"]],
        "token_ids": [[11], [12], [13]],
        "prompt_head": "Classify the request.\n",
        "prompt_tail": "\nAnswer:",
    }
    page = render_html(
        "Demo <report>",
        [("trained", trained), ("zero-shot", zero)],
        training=rows,
        about={"model": "tiny", "method": "label_tokens"},
        describe=describe,
        command="classlm train data --out run",
    )
    assert _external_references(page) == []
    assert page.count("<svg") == 2 * 3 + 2  # per evaluation: heat map, reliability, ratios; two training charts
    assert "<b>&co" not in page and "&lt;b&gt;&amp;co" in page and "Demo &lt;report&gt;" in page
    # Headline rows carry each evaluation's own figures.
    for name, r in (("trained", trained), ("zero-shot", zero)):
        assert f"<td>{name}</td><td>{r.metrics['accuracy']:.3f}</td><td>{r.metrics['macro_f1']:.3f}</td>" in page
    # Every cell of the confusion matrix is in the heat map with its count.
    confusion = trained.metrics["confusion"]
    for i, true in enumerate(CLASSES):
        for j, pred in enumerate(CLASSES):
            title = f"true {true}, predicted {pred}: {confusion[i][j]} ("
            assert title.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in page
    assert "Classify the request.\n&lt;text&gt;\nAnswer:" in page
    assert "classlm train data --out run" in page and "Training curves" in page


def test_sections_appear_only_with_their_data():
    page = render_html("x", [("evaluation", _report())])
    assert "Training curves" not in page and "Methods compared" not in page and "Classifier and run" not in page
    page = render_html("x", comparison=[{"name": "lora", "macro_f1": 0.9, "nll": 0.3}, {"name": "tfidf"}])
    assert "Methods compared" in page and page.count("<svg") == 2
    assert "<td>tfidf</td><td>–</td><td>–</td>" in page  # a row without figures reads as missing, not as zero


def test_evaluate_html_and_train_write_reports(monkeypatch, capsys, tiny_model_dir, dataset, tmp_path):  # noqa: F811
    html = tmp_path / "eval.html"
    code, _, err = run_cli(
        monkeypatch, capsys, "evaluate", dataset, "-m", tiny_model_dir, "--out", tmp_path / "r.json", "--html", html
    )
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    page = html.read_text()
    assert f"<b>{report['metrics']['accuracy']:.3f}</b><span>accuracy</span>" in page
    assert "classlm evaluate" in page and "Sports" in page and _external_references(page) == []

    (dataset / "validation.jsonl").write_text((dataset / "test.jsonl").read_text())
    run = tmp_path / "run"
    common = ["--model", tiny_model_dir, "--out", run, "--max-steps", 2, "--train-batch", 2, "--eval-every", 1]
    code, _, err = run_cli(monkeypatch, capsys, "train", dataset, *common, "--lora-r", 4)
    assert code == 0, err
    assert f"report: {run / 'report.html'}" in err
    page = (run / "report.html").read_text()
    ev = json.loads((run / "eval.json").read_text())["metrics"]
    assert f"<b>{ev['macro_f1']:.3f}</b><span>macro-F1</span>" in page
    assert "Training curves" in page and "trained 2 steps" in page


def test_the_report_renders_in_headless_chromium_without_network(tmp_path):
    browser = find_chromium()
    if browser is None:
        pytest.skip("no Chromium found (Debian: apt-get install chromium); the report's browser check needs one")
    page = tmp_path / "report.html"
    page.write_text(
        render_html("Report", [("evaluation", _report())], describe={"prompt_head": "a", "prompt_tail": "b"})
    )
    shot = tmp_path / "report.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1100,1600"]
    # A proxy that goes nowhere: anything the page tried to fetch would fail (it fetches nothing).
    cmd += ["--proxy-server=127.0.0.1:9", f"--screenshot={shot}", page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    # The charts' blue (#3b6fb6) and the correct cells' green (#2e8b57) are drawn: the SVG rendered, not only text.
    for colour in ((0x3B, 0x6F, 0xB6), (0x2E, 0x8B, 0x57)):
        assert (np.abs(pixels - colour).sum(1) < 40).sum() > 100, colour
    keep_artifact(shot, "report.png")

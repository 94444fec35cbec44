"""EvalReport: building, JSON round trip, markdown, summary line, reliability plot."""

from __future__ import annotations

import builtins
import json

import numpy as np
import pytest

from classlm.errors import ArtifactError, ConfigError
from classlm.reports import EvalReport, build_report, plot_reliability, write_text_atomic

CLASSES = ["World", "Sports", "Sci/Tech"]
Y = np.array([0, 1, 2, 1])
P = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.5, 0.4, 0.1]])
INFO = {"model": "tiny", "temperature": np.float64(1.25), "n_truncated": np.int64(0), "texts_per_second": None}


@pytest.fixture
def report() -> EvalReport:
    return build_report(Y, P, CLASSES, info=INFO, n_bins=5)


def test_build_report(report):
    assert report.classes == tuple(CLASSES)
    assert report.metrics["n"] == 4
    assert report.metrics["accuracy"] == 0.75  # 3 of 4 argmaxes right
    assert report.metrics["brier"] == pytest.approx(0.34)
    # numpy scalars in info are turned into plain Python numbers
    assert type(report.info["temperature"]) is float and type(report.info["n_truncated"]) is int


def test_json_round_trip(report, tmp_path):
    path = report.to_json(tmp_path / "sub" / "report.json")
    assert path.exists()
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]  # no temp file left behind
    doc = json.loads(path.read_text())
    assert doc["classes"] == CLASSES and doc["info"]["temperature"] == 1.25
    back = EvalReport.from_dict(doc)
    assert back == report


def test_to_json_replaces_existing_file(report, tmp_path):
    path = tmp_path / "report.json"
    path.write_text("old")
    report.to_json(path)
    assert json.loads(path.read_text())["metrics"]["n"] == 4


def test_nan_in_info_becomes_null(tmp_path):
    r = EvalReport(("a", "b"), {"n": 1}, {"seconds": float("nan")})
    r.to_json(tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["info"]["seconds"] is None


@pytest.mark.parametrize(
    ("d", "match"),
    [
        ("x", "expected a JSON object"),
        ({"classes": [], "metrics": {}}, "non-empty list of strings"),
        ({"classes": ["a", 1], "metrics": {}}, "non-empty list of strings"),
        ({"classes": ["a"], "metrics": [1]}, "'metrics' to be an object"),
        ({"classes": ["a"], "metrics": {}, "info": 3}, "'info' to be an object"),
    ],
)
def test_from_dict_rejects_bad_dicts(d, match):
    with pytest.raises(ArtifactError, match=match):
        EvalReport.from_dict(d)


def test_markdown(report):
    md = report.to_markdown()
    for name in CLASSES:
        assert name in md
    assert "0.750" in md  # accuracy
    assert "0.340" in md  # Brier
    assert "Confusion matrix" in md
    # confusion row of "Sports": one predicted World, one Sports
    assert "| Sports | 1 | 1 | 0 |" in md
    assert "**model**: tiny" in md
    assert "Sci/Tech" in md


def test_markdown_survives_partial_metrics():
    md = EvalReport(("a", "b"), {"accuracy": 0.5}).to_markdown()
    assert "0.500" in md and "–" in md


def test_summary_line(report):
    m = report.metrics
    line = report.summary_line()
    assert "\n" not in line
    assert line == f"acc 0.750 · macro-F1 {m['macro_f1']:.3f} · NLL {m['nll']:.2f} · ECE {m['ece']:.3f}"


def test_plot_reliability_writes_png(report, tmp_path):
    pytest.importorskip("matplotlib")
    path = plot_reliability(report, tmp_path / "rel.png")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    # A plain list of bins works too.
    other = plot_reliability(report.metrics["reliability"], tmp_path / "bins.png")
    assert other.read_bytes().startswith(b"\x89PNG")


def test_plot_reliability_rejects_bad_bins(tmp_path):
    pytest.importorskip("matplotlib")
    with pytest.raises(ConfigError, match="expected an EvalReport or a non-empty list of bins"):
        plot_reliability([{"lo": 0.0}], tmp_path / "x.png")


def test_plot_reliability_without_matplotlib(report, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ConfigError, match=r"pip install 'classlm\[plots\]'"):
        plot_reliability(report, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_write_text_atomic(tmp_path):
    path = write_text_atomic(tmp_path / "a.md", "héllo\n")
    assert path.read_text(encoding="utf-8") == "héllo\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.md"]

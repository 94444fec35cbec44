import io
import json
import subprocess
import sys

import pytest

from classlm.cli import main


def run_cli(monkeypatch, capsys, *args, stdin=None):
    monkeypatch.setattr(sys, "argv", ["classlm", *map(str, args)])
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture()
def dataset(tmp_path):
    rows = [
        {"text": "The team won the match.", "label": "Sports"},
        {"text": "Stocks fell sharply.", "label": "Business"},
        {"text": "Great goal in the last minute.", "label": "Sports"},
        {"text": "Shares rose on Monday.", "label": "Business"},
    ]
    folder = tmp_path / "news"
    folder.mkdir()
    for split in ("train", "test"):
        (folder / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (folder / "labels.json").write_text(json.dumps(["Sports", "Business"]))
    return folder


LONG_TEXT = " ".join(["the quick brown fox"] * 200)  # past the default 512-token text slot


def test_classify_jsonl_has_every_class_probability(monkeypatch, capsys, tiny_model_dir):
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "classify",
        "--model",
        tiny_model_dir,
        "--labels",
        "World,Sports,Business",
        "--format",
        "jsonl",
        "--class-mass",
        "Stocks fell.",
        "The team won.",
        LONG_TEXT,
    )
    assert code == 0
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert [r["text"] for r in rows] == ["Stocks fell.", "The team won.", LONG_TEXT]
    assert [r["truncated"] for r in rows] == [False, False, True]
    assert "1 text(s) were longer than the classifier reads" in err
    for r in rows:
        assert set(r["probabilities"]) == {"World", "Sports", "Business"}
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert r["label"] == max(r["probabilities"], key=r["probabilities"].get)
        assert 0.0 < r["class_mass"] <= 1.0


def test_classify_reads_stdin_and_files(monkeypatch, capsys, tiny_model_dir, tmp_path):
    code, out, _ = run_cli(
        monkeypatch,
        capsys,
        "classify",
        "-m",
        tiny_model_dir,
        "-l",
        "a,b",
        "--format",
        "jsonl",
        stdin="first text\n\nsecond text\n",
    )
    assert code == 0 and [json.loads(x)["text"] for x in out.splitlines()] == ["first text", "second text"]
    f = tmp_path / "texts.txt"
    f.write_text("one\ntwo\nthree\n")
    code, out, _ = run_cli(monkeypatch, capsys, "classify", "-m", tiny_model_dir, "-l", "a,b", "-f", f)
    assert code == 0 and "one" in out and "three" in out and "a" in out


def test_user_errors_are_one_line_and_exit_2(monkeypatch, capsys, tiny_model_dir, dataset):
    code, out, err = run_cli(monkeypatch, capsys, "classify", "-m", tiny_model_dir, "hello")
    assert code == 2 and "--labels" in err and "Traceback" not in err
    code, _, err = run_cli(monkeypatch, capsys, "classify", "-m", "no-such-model", "-l", "a,b", "hi")
    assert code == 2 and "unknown model" in err
    code, _, err = run_cli(monkeypatch, capsys, "evaluate", dataset, "-m", tiny_model_dir, "--text-col", "txt")
    assert code == 2 and "did you mean 'text'" in err
    code, _, err = run_cli(monkeypatch, capsys, "evaluate", dataset, "-m", tiny_model_dir, "--calibrate-on", "test")
    assert code == 2 and "must differ" in err
    code, _, err = run_cli(monkeypatch, capsys, "classify", "--format", "xml", "-l", "a,b", "x")
    assert code == 2 and "--format" in err


def test_evaluate_writes_a_report(monkeypatch, capsys, tiny_model_dir, dataset, tmp_path):
    out_json = tmp_path / "report.json"
    code, out, _ = run_cli(
        monkeypatch,
        capsys,
        "evaluate",
        dataset,
        "-m",
        tiny_model_dir,
        "--calibrate-on",
        "train",
        "--out",
        out_json,
        "--markdown",
        tmp_path / "report.md",
    )
    assert code == 0, out
    report = json.loads(out_json.read_text())
    assert report["classes"] == ["Sports", "Business"]
    assert report["metrics"]["n"] == 4
    assert report["info"]["temperature"] != 1.0
    assert "Sports" in (tmp_path / "report.md").read_text()
    assert "accuracy" in out.lower()


def test_inspect_shows_tokens_and_prompt(monkeypatch, capsys, tiny_model_dir):
    code, out, _ = run_cli(monkeypatch, capsys, "inspect", "-m", tiny_model_dir, "-l", "World,Sports", "--json")
    assert code == 0
    desc = json.loads(out)
    assert desc["classes"] == ["World", "Sports"] and desc["answers"] == ["World", "Sports"]
    assert desc["prompt_tail"].endswith("<|im_start|>assistant\n")
    code, out, _ = run_cli(
        monkeypatch, capsys, "inspect", "-m", tiny_model_dir, "-l", "World,Sports", "--text", "Stocks fell."
    )
    assert code == 0 and "Stocks fell." in out and "World" in out


def test_installed_entry_point_reports_errors_without_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "classlm.cli", "classify", "--labels", "onlyone", "x"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "at least two" in proc.stderr and "Traceback" not in proc.stderr


def test_train_then_evaluate_calibrate_and_export(monkeypatch, capsys, tiny_model_dir, dataset, tmp_path):
    (dataset / "validation.jsonl").write_text((dataset / "test.jsonl").read_text())
    run = tmp_path / "run"
    common = ["--model", tiny_model_dir, "--out", run, "--max-steps", 4, "--train-batch", 2, "--eval-every", 2]
    code, out, err = run_cli(monkeypatch, capsys, "train", dataset, *common, "--lora-r", 4, "--lr", "1e-2")
    assert code == 0, err
    for name in ("classlm.json", "metrics.jsonl", "training_curves.png", "reliability.png", "eval.json"):
        assert (run / name).exists(), name
    doc = json.loads((run / "classlm.json").read_text())
    assert (run / doc["adapter"] / "adapter_model.safetensors").is_file()
    assert doc["labels"]["names"] == ["Sports", "Business"]  # from labels.json
    assert doc["training"]["steps"] == 4 and doc["calibration"]["fitted"]
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [0, 2, 4]

    code, out, err = run_cli(monkeypatch, capsys, "evaluate", run, dataset, "--split", "test")
    assert code == 0, err
    assert "accuracy" in out

    code, out, err = run_cli(monkeypatch, capsys, "calibrate", run, dataset, "--split", "test")
    assert code == 0, err
    assert "temperature" in out
    assert "classlm calibrate" in json.loads((run / "classlm.json").read_text())["calibration"]["source"]

    code, out, err = run_cli(monkeypatch, capsys, "export", run, "--merge", tmp_path / "merged")
    assert code == 0, err
    assert (tmp_path / "merged" / "config.json").is_file() and (tmp_path / "merged" / "classlm_export.json").is_file()

    # A finished run is not silently overwritten, and --resume refuses changed options.
    code, _, err = run_cli(monkeypatch, capsys, "train", dataset, *common)
    assert code == 2 and "--resume" in err
    code, _, err = run_cli(monkeypatch, capsys, "train", dataset, *common, "--lr", "0.5", "--resume")
    assert code == 2 and "differ" in err and "lr" in err

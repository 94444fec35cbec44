import io
import json
import os
import re
import subprocess
import sys

import numpy as np
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


def test_classify_priors_move_the_probabilities_and_em_estimates_them(monkeypatch, capsys, tiny_model_dir, tmp_path):
    from classlm.priors import shift_priors

    base = ["classify", "--model", tiny_model_dir, "--labels", "World,Sports,Business", "--format", "jsonl"]
    texts = ["Stocks fell.", "The team won."]

    def proba(*extra):
        code, out, err = run_cli(monkeypatch, capsys, *base, *extra, *texts)
        assert code == 0, err
        return [list(json.loads(line)["probabilities"].values()) for line in out.strip().splitlines()], err

    plain, _ = proba()
    wanted = {"World": 1, "Sports": 2, "Business": 7}
    shifted, _ = proba("--priors", json.dumps(wanted))
    np.testing.assert_allclose(shifted, shift_priors(np.array(plain), np.full(3, 1 / 3), [0.1, 0.2, 0.7]), atol=2e-6)
    (tmp_path / "p.json").write_text(json.dumps(wanted))
    from_file, _ = proba("--priors", tmp_path / "p.json")
    np.testing.assert_allclose(from_file, shifted, atol=1e-9)
    adapted, err = proba("--priors", "em")
    assert re.search(r"priors estimated by EM over these 2 texts: World 0\.\d{3}, Sports", err)
    assert np.allclose(np.sum(adapted, axis=1), 1.0)
    auto, err = proba("--priors", "auto")  # a zero-shot classifier has no calibration rows: auto is EM
    assert "priors estimated by EM (auto) over these 2 texts" in err
    np.testing.assert_allclose(auto, adapted, atol=1e-9)
    for bad, message in (
        ('{"World": 1}', "--priors: expected a weight for each class"),
        ("balanced", "--priors: expected a JSON object"),
        ("missing.json", "--priors: file not found"),
    ):
        code, out, err = run_cli(monkeypatch, capsys, *base, "--priors", bad, *texts)
        assert code != 0 and message in err and "Traceback" not in err


@pytest.mark.parametrize("labels", ["World,Sports,Business", "World,Sports,Business,Sci/Tech,Entertainment,Health"])
def test_the_classify_table_piped_into_80_columns_keeps_every_probability_whole(
    monkeypatch, capsys, tiny_model_dir, labels
):
    texts = ["Stocks fell.", LONG_TEXT]
    args = ["classify", "--model", tiny_model_dir, "--labels", labels, "--class-mass", *texts]
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    assert max(map(len, out.splitlines())) <= 80, out  # what a pipe gets (80 wide when not a terminal)
    code, jsonl, _ = run_cli(monkeypatch, capsys, *args, "--format", "jsonl")
    rows = [json.loads(line) for line in jsonl.splitlines()]
    numbers = re.findall(r"\d\.\d*|\d\.…", out)
    assert all(re.fullmatch(r"\d\.\d{3}", n) for n in numbers), out  # none cut: no "0.…", no "0.0"
    k = len(labels.split(","))
    shown = k if k == 3 else 3  # every class while they fit, else each row's top 3
    assert len(numbers) == len(texts) * (shown + 1), out  # + the class mass
    for row in rows:
        top = sorted(row["probabilities"].items(), key=lambda kv: -kv[1])[:shown]
        assert all(f"{p:.3f}" in numbers for _, p in top)


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
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "eval" in r] == [0, 2, 4]
    # TF-IDF + LR on the same rows, evaluated on the same rows: one row at the last step, the manifest's verdict.
    assert [r["step"] for r in logged if "baseline" in r] == [4]
    base = doc["training"]["checks"]["baseline"]
    assert base["method"] == "tfidf" and base["baseline_macro_f1"] == logged[-1]["baseline"]["macro_f1"]
    assert base["n"] == 4 and base["earns_its_cost"] == (base["macro_f1"] >= base["baseline_macro_f1"])
    assert "TF-IDF + LR" in err and "TF-IDF + LR on the same training rows" in (run / "report.html").read_text()

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


def test_train_with_a_calibration_chain_then_calibrate_and_export_it(
    monkeypatch, capsys, tiny_model_dir, dataset, tmp_path
):
    (dataset / "validation.jsonl").write_text((dataset / "test.jsonl").read_text())
    run = tmp_path / "run"
    common = ["--model", tiny_model_dir, "--out", run, "--max-steps", 2, "--train-batch", 2, "--no-baseline"]
    code, _, err = run_cli(monkeypatch, capsys, "train", dataset, *common, "--calibration", "temperature+batch")
    assert code == 2 and "Invalid value for '--calibration': expected 'temperature', 'none'" in err
    assert "got 'temperature+batch'" in err and "Traceback" not in err and not run.exists()
    code, out, err = run_cli(monkeypatch, capsys, "train", dataset, *common, "--calibration", "batch+temperature")
    assert code == 0, err
    doc = json.loads((run / "classlm.json").read_text())
    assert doc["calibration"]["method"] == "batch+temperature" and doc["calibration"]["label_free"]["kind"] == "batch"
    code, out, err = run_cli(monkeypatch, capsys, "calibrate", run, dataset, "--split", "test")
    assert code == 0, err
    assert "batch correction fitted on 4 texts (their labels unused)" in out and "temperature" in out
    code, out, err = run_cli(monkeypatch, capsys, "export", run, "--merge", tmp_path / "merged")
    assert code == 0, err
    exported = json.loads((tmp_path / "merged" / "classlm_export.json").read_text())
    assert len(exported["logit_offset"]) == 2 and "+ logit_offset" in exported["how"]


# -- hardening: usage errors, first contact (issue 16) ---------------------------------------------------------------
@pytest.mark.parametrize(
    "args, message",
    [
        (["classify", "--bogus", "x"], "No such option: --bogus"),
        (["train"], "Missing argument 'DATA'"),
        (["frobnicate"], "No such command 'frobnicate'"),
        (["classify", "--batch-size", "many", "-l", "a,b", "x"], "Invalid value for '--batch-size'"),
    ],
)
def test_usage_errors_are_click_usage_messages_with_exit_2(monkeypatch, capsys, args, message):
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2
    assert message in err and "Usage: classlm" in err
    assert "Traceback" not in err + out


def test_version_and_python_dash_m():
    from classlm import __version__

    proc = subprocess.run([sys.executable, "-m", "classlm", "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == f"classlm {__version__}"
    proc = subprocess.run(
        [sys.executable, "-m", "classlm", "evaluate", "--no-such-flag"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "No such option" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_errors_name_flags_not_python_arguments():
    from classlm.cli import cli_terms

    collision = (
        "To fix: use method='letters' (answers A, B, C, …), give those classes distinct verbalizers "
        "(labels={name: {'verbalizer': ...}}), rename them, or use scoring='exact' to score every token."
    )
    assert cli_terms(collision) == (
        "To fix: use --method letters (answers A, B, C, …), give those classes distinct verbalizers "
        '(--labels FILE.json holding {"NAME": {"verbalizer": "..."}}), rename them, or use --scoring exact to '
        "score every token."
    )
    assert cli_terms("choose one with split=... (--split on the command line)") == "choose one with --split"
    assert cli_terms("abstain_below must be a probability in (0, 1]").startswith("--abstain-below must be")
    assert cli_terms("priors: expected a weight for each class").startswith("--priors: expected")
    assert (
        cli_terms("leaving -3 of max_length=512; raise max_length")
        == "leaving -3 of --max-length 512; raise --max-length"
    )
    assert cli_terms("e.g. labels=['negative', 'positive']") == "e.g. --labels negative,positive"
    assert cli_terms("fill in or drop these rows, or load with drop_invalid=True to leave them out") == (
        "fill in or drop these rows, or pass --drop-invalid to leave them out"
    )


def test_train_options_are_generated_from_the_config_dataclasses():
    # One source for a training option's default and help: the TrainConfig/LoraConfig field, under today's flag.
    import dataclasses

    from typer.main import get_command

    from classlm.cli import app
    from classlm.cli.train import LORA_OPTIONS, TRAIN_OPTIONS

    options = {p.name: p for p in get_command(app).commands["train"].params}  # what click parses
    assert {"training", "lora"}.isdisjoint(options)  # the verb's placeholders are replaced by the options
    for group in (TRAIN_OPTIONS, LORA_OPTIONS):
        for field in (f for f in dataclasses.fields(group.config) if f.name in group.params):
            option = options[group.params[field.name]]
            assert option.default == field.default and option.help == field.metadata["help"]
    assert options["train_batch"].opts == ["--train-batch"] and options["lora_r"].opts == ["--lora-r"]


def test_collisions_and_prompt_length_are_reported_before_the_weights_load(monkeypatch, capsys, tiny_model_dir):
    import classlm.models

    def no_weights(*args, **kwargs):
        raise AssertionError("the weights were loaded before the labels were checked")

    monkeypatch.setattr(classlm.models, "load_backbone", no_weights)
    clash = ["classify", "-m", tiny_model_dir, "-l", "World,World_Sports", "--scoring", "first_token", "x"]
    code, _, err = run_cli(monkeypatch, capsys, *clash)
    assert code == 2 and "share their first token" in err
    assert "--scoring auto" in err and "--method letters" in err and "method='letters'" not in err
    code, _, err = run_cli(monkeypatch, capsys, "classify", "-m", tiny_model_dir, "-l", "a,b", "--max-length", 8, "x")
    assert code == 2 and "--max-length must be an int >= 16" in err
    code, _, err = run_cli(monkeypatch, capsys, "classify", "-m", tiny_model_dir, "hello")
    assert code == 2 and "--labels" in err


def test_evaluate_with_explicit_labels_beside_a_labels_json_in_description_form(
    monkeypatch, capsys, tiny_model_dir, tmp_path
):
    folder = tmp_path / "reviews"
    folder.mkdir()
    rows = [("great", "5"), ("awful", "1"), ("fine", "3"), ("bad", "2"), ("good", "4")]
    (folder / "reviews.csv").write_text("review,stars\n" + "".join(f"{t},{s}\n" for t, s in rows))
    (folder / "labels.json").write_text(json.dumps({"one": "one star", "five": "five stars"}))  # another task's
    code, out, err = run_cli(
        monkeypatch, capsys, "evaluate", folder / "reviews.csv", "-m", tiny_model_dir,
        "--text-col", "review", "--label-col", "stars", "--labels", "1,2,3,4,5", "--out", tmp_path / "r.json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads((tmp_path / "r.json").read_text())["classes"] == ["1", "2", "3", "4", "5"]
    # Without --labels the description form is read: names and descriptions, in its order.
    (folder / "labels.json").write_text(json.dumps({s: f"{s} stars" for s in "54321"}))
    code, out, err = run_cli(
        monkeypatch, capsys, "evaluate", folder / "reviews.csv", "-m", tiny_model_dir,
        "--text-col", "review", "--label-col", "stars", "--out", tmp_path / "r.json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads((tmp_path / "r.json").read_text())["classes"] == ["5", "4", "3", "2", "1"]


@pytest.fixture()
def sorted_folder(tmp_path):
    """Four classes, 30 rows each, sorted by class (as many intent files are), no validation split."""
    words = {"Sports": "match goal team", "Business": "stocks shares market", "World": "minister war summit",
             "Sci/Tech": "phone chip software"}  # fmt: skip
    rows = [{"text": f"{w.split()[i % 3]} story {i}", "label": c} for c, w in words.items() for i in range(30)]
    folder = tmp_path / "sorted"
    folder.mkdir()
    for split in ("train", "test"):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_evaluate_limit_is_a_stratified_sample_and_reports_the_classes_covered(
    monkeypatch, capsys, tiny_model_dir, sorted_folder, tmp_path
):
    code, out, err = run_cli(
        monkeypatch, capsys, "evaluate", sorted_folder, "-m", tiny_model_dir, "--limit", 8,
        "--calibrate-on", "train", "--calibrate-limit", 4, "--out", tmp_path / "r.json",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    # The first 8 rows of this file are all Sports; a stratified sample has 2 of every class.
    assert [c["support"] for c in report["metrics"]["per_class"].values()] == [2, 2, 2, 2]
    assert report["metrics"]["n_classes_present"] == 4
    assert "seeded stratified sample of 8 rows" in report["info"]["sample"]
    code, out, err = run_cli(
        monkeypatch, capsys, "evaluate", sorted_folder, "-m", tiny_model_dir, "--limit", 2,
        "--labels", "Sports,Business,World,Sci/Tech", "--out", tmp_path / "r.json",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["metrics"]["n_classes_present"] == 2
    assert "Only 2 of the 4 classes occur in these rows" in out


TRAIN = ["--max-steps", 4, "--train-batch", 2, "--eval-every", 2, "--lora-r", 4, "--lr", "1e-2"]


def test_train_refuses_an_existing_run_unless_overwrite(monkeypatch, capsys, tiny_model_dir, sorted_folder, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    # What a run killed before its first checkpoint leaves behind: no checkpoint, no classlm.json.
    (run / "train_args.json").write_text("{}")
    (run / "metrics.jsonl").write_text('{"step": 0}\n')
    args = ["train", sorted_folder, "-m", tiny_model_dir, "--out", run, *TRAIN]
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2 and "already holds a run" in err and "--overwrite" in err
    assert (run / "metrics.jsonl").read_text() == '{"step": 0}\n'
    # A folder that also holds the user's own files is refused at once, even with --overwrite: nothing is deleted,
    # and no training runs only for the save at its end to refuse the folder.
    (run / "notes.txt").write_text("mine")
    code, _, err = run_cli(monkeypatch, capsys, *args, "--overwrite")
    assert code == 2 and "notes.txt" in err and "training:" not in err
    assert (run / "metrics.jsonl").is_file() and (run / "notes.txt").read_text() == "mine"
    (run / "notes.txt").unlink()
    # A command that fails on its own options deletes nothing, --overwrite or not.
    code, _, err = run_cli(monkeypatch, capsys, *args, "--overwrite", "--options", "{not json")
    assert code == 2 and "--options must be a JSON object" in err
    assert (run / "metrics.jsonl").read_text() == '{"step": 0}\n'
    code, _, err = run_cli(monkeypatch, capsys, *args, "--overwrite", "--eval-split", "train")
    assert code == 2 and "is the training split" in err and (run / "metrics.jsonl").is_file()
    code, _, err = run_cli(monkeypatch, capsys, *args, "--overwrite")
    assert code == 0, err
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "eval" in r] == [0, 2, 4]
    # The summary counts the examples seen (4 steps of 2), not the rows there were to see.
    assert "trained 4 steps, 8 examples seen of" in err


def test_train_without_validation_split_holds_eval_rows_apart_from_calibration_rows(
    monkeypatch, capsys, tiny_model_dir, sorted_folder, tmp_path
):
    run = tmp_path / "run"
    code, _, err = run_cli(
        monkeypatch, capsys, "train", sorted_folder, "-m", tiny_model_dir, "--out", run, *TRAIN[:-4],
        "--eval-every", 10, "--lora-r", 4,
    )  # fmt: skip
    assert code == 0, err
    assert "has no validation split: evaluating on 12 training rows held out for it" in err
    # --eval-every 10 over a 4-step run: said, not silent.
    assert "warning: --eval-every 10 is more than the 4 training step(s)" in err and "lower --eval-every" in err
    doc = json.loads((run / "classlm.json").read_text())
    n_calib, n_train = doc["calibration"]["n"], doc["training"]["n_train"]
    assert n_calib == 12 and n_train == 120 - 12 - 12  # training, calibration and evaluation rows: disjoint parts
    report = json.loads((run / "eval.json").read_text())
    assert report["metrics"]["n"] == 12 and "held out of the training split" in report["info"]["data"]


def test_train_drop_invalid_and_scoring(monkeypatch, capsys, tiny_model_dir, sorted_folder, tmp_path):
    train = sorted_folder / "train.jsonl"
    train.write_text(train.read_text() + '{"text": "  ", "label": "Sports"}\n{"text": "no label"}\n')
    run = tmp_path / "run"
    args = ["train", sorted_folder, "-m", tiny_model_dir, "--out", run, *TRAIN]
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2 and "--drop-invalid" in err and not run.exists()
    code, _, err = run_cli(monkeypatch, capsys, *args, "--drop-invalid")
    assert code == 0, err
    assert "left out 2 row(s)" in err
    # --scoring reaches the classifier: names sharing a first token are refused with first_token, resolved by auto.
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    rows = [{"text": f"match {i}", "label": "Sports" if i % 2 else "Sports_Business"} for i in range(20)]
    (pairs / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    few_shot = ["train", pairs, "-m", tiny_model_dir, "--method", "few_shot", "--no-lora"]
    code, _, err = run_cli(monkeypatch, capsys, *few_shot, "--out", tmp_path / "fs1", "--scoring", "first_token")
    assert code == 2 and "share their first token" in err and "--scoring auto" in err
    for scoring, saved in (("auto", "auto_verbalizer"), ("exact", "exact")):
        code, _, err = run_cli(monkeypatch, capsys, *few_shot, "--out", tmp_path / scoring, "--scoring", scoring)
        assert code == 0, err
        assert json.loads((tmp_path / scoring / "classlm.json").read_text())["options"]["scoring"] == saved
    # LoRA trains exact scoring too (teacher forcing through the answer trie).
    code, _, err = run_cli(monkeypatch, capsys, *args, "--drop-invalid", "--scoring", "exact", "--overwrite")
    assert code == 0, err
    assert json.loads((run / "classlm.json").read_text())["options"]["scoring"] == "exact"


def test_train_class_weights_flag(monkeypatch, capsys, tiny_model_dir, sorted_folder, tmp_path):
    run = tmp_path / "run"
    args = ["train", sorted_folder, "-m", tiny_model_dir, "--out", run, *TRAIN]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--class-weights", "heavy")
    assert code == 2 and "--class-weights must be 'balanced' or a JSON object" in err and not run.exists()
    code, _, err = run_cli(monkeypatch, capsys, *args, "--class-weights", "balanced", "--no-baseline")
    assert code == 0, err
    doc = json.loads((run / "classlm.json").read_text())
    assert doc["train"]["class_weights"] == "balanced" and "baseline" not in doc["training"]["checks"]
    assert json.loads((run / "train_args.json").read_text())["class_weights"] == "balanced"
    # --resume compares it like every option that defines the run.
    code, _, err = run_cli(monkeypatch, capsys, *args, "--class-weights", '{"Sports": 2}', "--resume")
    assert code == 2 and "class-weights" in err and "differ" in err


CLI_KILL = """
import os, signal, sys
import classlm.training as training

checkpoint = training.Trainer._checkpoint
loss_sum = training.Trainer.loss_sum
written = []

def _checkpoint(self, state, optimizer):
    checkpoint(self, state, optimizer)
    written.append(state.step)

def _loss_sum(self, *args, **kwargs):
    if written:  # the step after the first checkpoint, in the middle: after a forward pass, before its update
        os.kill(os.getpid(), signal.SIGKILL)
    return loss_sum(self, *args, **kwargs)

training.Trainer._checkpoint = _checkpoint
training.Trainer.loss_sum = _loss_sum
from classlm.cli import main
sys.argv = ["classlm", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
def test_cli_train_killed_after_a_checkpoint_resumes_to_the_uninterrupted_adapter(tiny_model_dir, dataset, tmp_path):
    from safetensors.torch import load_file

    (dataset / "validation.jsonl").write_text((dataset / "test.jsonl").read_text())
    killer = tmp_path / "killer.py"
    killer.write_text(CLI_KILL)
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    common = ["train", str(dataset), "-m", str(tiny_model_dir), "--max-steps", "6", "--train-batch", "2"]
    common += ["--eval-every", "2", "--lora-r", "4", "--lr", "1e-2"]

    def classlm(*args, script=None):
        cmd = [sys.executable, *([str(script)] if script else ["-m", "classlm"]), *common, *args]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)

    full = classlm("--out", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr
    killed = classlm("--out", str(tmp_path / "killed"), script=killer)
    assert killed.returncode == -9, killed.stderr
    assert sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir()) == ["step-00000002"]
    assert not (tmp_path / "killed" / "classlm.json").exists()
    resumed = classlm("--out", str(tmp_path / "killed"), "--resume")
    assert resumed.returncode == 0, resumed.stderr

    def adapter(run):
        doc = json.loads((run / "classlm.json").read_text())
        return load_file(str(run / doc["adapter"] / "adapter_model.safetensors"))

    a, b = adapter(tmp_path / "full"), adapter(tmp_path / "killed")
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:
        assert (a[name] - b[name]).abs().max().item() <= 1e-6, name
    rows = [json.loads(x) for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval" in r] == [0, 2, 4, 6]
    assert [r["step"] for r in rows if "baseline" in r] == [6]  # written once, when the resumed run ends

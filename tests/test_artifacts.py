"""Damaged run folders are refused with an ArtifactError naming the file (one line and exit 2 from the CLI), and
what a save writes can be read by other users (umask-normal modes, not mkdtemp's and safetensors' private ones)."""

import json
import logging
import os
import pickle
import shutil
import stat
import sys

import pytest

from classlm import LMClassifier
from classlm.cli import main
from classlm.errors import ArtifactError
from classlm.export import export_merged

LABELS = ["World", "Sports"]
X = ["the team won the match", "stocks fell on monday", "a goal by the coach", "the president and the war"] * 2
Y = ["Sports", "World", "Sports", "World"] * 2


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """One LoRA run (adapter folder) and one hidden_head run (method-<id>.safetensors), saved once."""
    root = tmp_path_factory.mktemp("runs")
    train = {"max_steps": 1, "batch_size": 4, "eval_every": 0}
    lora = LMClassifier(model=str(tiny_model_dir), labels=LABELS, lora={"r": 2}, train=train).fit(X, Y)
    lora.save(root / "lora")
    LMClassifier(model=str(tiny_model_dir), labels=LABELS, method="hidden_head").fit(X, Y).save(root / "head")
    return {"lora": root / "lora", "head": root / "head", "lora_clf": lora}


def _copy(runs, kind, tmp_path):
    run = tmp_path / kind
    shutil.copytree(runs[kind], run)
    return run


def _adapter(run):
    return run / json.loads((run / "classlm.json").read_text())["adapter"]


def _state(run):
    return run / json.loads((run / "classlm.json").read_text())["method_state"]["file"]


def _edit_manifest(run, change):
    doc = json.loads((run / "classlm.json").read_text())
    change(doc)
    (run / "classlm.json").write_text(json.dumps(doc))


def _truncate(file):
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


CORRUPTIONS = {
    "truncated adapter weights": (
        "lora",
        lambda r: _truncate(_adapter(r) / "adapter_model.safetensors"),
        "adapter_model.safetensors: expected a safetensors file, found a truncated",
    ),
    "empty adapter weights": (
        "lora",
        lambda r: (_adapter(r) / "adapter_model.safetensors").write_bytes(b""),
        "adapter_model.safetensors: expected a safetensors file, found an empty file",
    ),
    "pickle as adapter weights": (
        "lora",
        lambda r: (_adapter(r) / "adapter_model.safetensors").write_bytes(pickle.dumps({"w": [1.0]})),
        "adapter_model.safetensors: expected a safetensors file, found pickled data",
    ),
    "adapter weights missing": (
        "lora",
        lambda r: (_adapter(r) / "adapter_model.safetensors").unlink(),
        "adapter weights adapter_model.safetensors are missing",
    ),
    "empty adapter_config.json": (
        "lora",
        lambda r: (_adapter(r) / "adapter_config.json").write_text(""),
        "adapter_config.json: expected peft's adapter config, a JSON object with 'peft_type'",
    ),
    "adapter_config.json without peft_type": (
        "lora",
        lambda r: (_adapter(r) / "adapter_config.json").write_text("{}"),
        r"adapter_config.json: expected peft's adapter config.*got \{\}",
    ),
    "truncated method state": (
        "head",
        lambda r: _truncate(_state(r)),
        r"method-\w+.safetensors: expected a safetensors file, found a truncated",
    ),
    "pickle as method state": (
        "head",
        lambda r: _state(r).write_bytes(pickle.dumps([1, 2])),
        r"method-\w+.safetensors: expected a safetensors file, found pickled data",
    ),
    "unknown key in options": (
        "lora",
        lambda r: _edit_manifest(r, lambda d: d["options"].update(bogus=1)),
        r"classlm.json: 'options' has unknown key\(s\) \['bogus'\]",
    ),
    "unknown key in method_options": (
        "head",
        lambda r: _edit_manifest(r, lambda d: d["method_options"].update(bogus=1)),
        r"classlm.json: a saved setting is not valid here \(HiddenHeadOptions: unknown option\(s\) \['bogus'\]",
    ),
    "unknown key in lora": (
        "lora",
        lambda r: _edit_manifest(r, lambda d: d["lora"].update(bogus=1)),
        r"classlm.json: a saved setting is not valid here \(LoraConfig: unknown option\(s\) \['bogus'\]",
    ),
    "bad scoring value": (
        "head",
        lambda r: _edit_manifest(r, lambda d: d["options"].update(scoring="best")),
        "classlm.json: a saved setting is not valid here .scoring must be one of",
    ),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_a_damaged_run_is_an_artifact_error_naming_the_file(runs, tmp_path, case):
    kind, damage, match = CORRUPTIONS[case]
    run = _copy(runs, kind, tmp_path)
    damage(run)
    with pytest.raises(ArtifactError, match=match) as info:
        LMClassifier.load(run)
    assert str(run) in str(info.value) and "train and save it again" in str(info.value)


def test_the_cli_prints_a_damaged_run_as_one_line_and_exits_2(runs, tmp_path, monkeypatch, capsys):
    run = _copy(runs, "lora", tmp_path)
    (_adapter(run) / "adapter_config.json").write_text("")
    monkeypatch.setattr(sys, "argv", ["classlm", "classify", "--run", str(run), "a text"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "adapter_config.json" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 3  # one message, soft-wrapped by the console at most


def test_leftovers_of_a_killed_save_are_ignored_with_a_debug_line(runs, tmp_path, caplog):
    run = _copy(runs, "lora", tmp_path)
    (run / ".adapter.tmp-k1ll3d").mkdir()
    (run / ".adapter.tmp-k1ll3d" / "adapter_model.safetensors").write_bytes(b"half a file")
    with caplog.at_level(logging.DEBUG, logger="classlm.artifacts"):
        loaded = LMClassifier.load(run)
    assert "ignoring .adapter.tmp-k1ll3d, left by an interrupted save" in caplog.text
    assert loaded.predict_proba(X[:2]).shape == (2, 2)
    # Kept by the load (a save in progress elsewhere may own it), removed by the next save.
    assert (run / ".adapter.tmp-k1ll3d").is_dir()
    loaded.save(run)
    assert not (run / ".adapter.tmp-k1ll3d").exists()


def _modes(folder):
    return {p.relative_to(folder).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.rglob("*")]}


def test_saved_adapters_and_merged_exports_are_readable_by_others(runs, tmp_path):
    umask = os.umask(0o022)
    try:
        run = runs["lora_clf"].save(tmp_path / "run")
        merged = export_merged(runs["lora_clf"], tmp_path / "merged")
    finally:
        os.umask(umask)
    for folder in (_adapter(run), merged):
        modes = _modes(folder)
        assert "adapter_model.safetensors" in modes or "model.safetensors" in modes
        for name, mode in modes.items():
            expected = 0o755 if (folder / name).is_dir() else 0o644
            assert mode == expected, f"{folder.name}/{name}: {oct(mode)}"

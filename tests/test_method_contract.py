"""A method registered from this file alone works everywhere a shipped one does: LMClassifier, save/load, the CLI's
--method and classlm bench (issue 19: adding a method is one file). Also the import graph: no cycles, and the pure
layer and the method contract import without torch."""

from __future__ import annotations

import ast
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from classlm import LMClassifier
from classlm.methods import Method, get_method, register
from classlm.scores import MethodInfo, Scores

SRC = Path(__file__).resolve().parents[1] / "src"


@dataclass(frozen=True)
class LengthOptions:
    scale: float = 1.0


@register("toy_length", options=LengthOptions)
class LengthMethod(Method):
    """Class logits from how close a text's length is to each class's mean training length."""

    needs_lm = False
    learns_from_data = True

    def prepare(self, backbone):
        self.means = np.zeros(len(self.labels), dtype=np.float32)

    def fit_data(self, texts, y, *, progress=False):
        lengths = np.array([len(t) for t in texts], dtype=np.float32)
        self.means = np.array([lengths[y == c].mean() if (y == c).any() else 0.0 for c in range(len(self.labels))])
        self.fitted = True
        return {"trainable_parameters": len(self.labels)}

    def scores(self, texts, run):
        lengths = np.array([[len(t)] for t in texts], dtype=np.float32)
        return Scores(-self.options.scale * np.abs(lengths - self.means[None, :]).astype(np.float32), None)

    def state(self):
        return {"means": self.means.astype(np.float32)}, {}

    def load_state(self, tensors, info):
        self.means = np.asarray(tensors["means"])
        self.fitted = True

    def info(self):
        return MethodInfo(self.name, extra={"options": self.options_dict()})


TEXTS = [
    "a",
    "bb",
    "hello there my dear friend, how are you",
    "a much longer text than the others",
    "ok",
    "another long sentence here",
]
LABELS = ["short", "short", "long", "long", "short", "long"]


def test_a_method_registered_here_fits_saves_and_loads(tmp_path):
    clf = LMClassifier(method="toy_length", labels=["short", "long"], method_options={"scale": 0.5})
    clf.fit(TEXTS * 3, LABELS * 3, calib_set=(TEXTS, LABELS))
    assert list(clf.predict(["x", "a really quite long piece of text"])) == ["short", "long"]
    loaded = LMClassifier.load(clf.save(tmp_path / "run"))
    np.testing.assert_allclose(loaded.predict_proba(TEXTS), clf.predict_proba(TEXTS))
    assert loaded.method_.options == LengthOptions(scale=0.5)
    assert loaded.method_.describe() == {"method": "toy_length", "options": {"scale": 0.5}}


def test_a_second_method_under_a_taken_name_is_a_clear_error():
    from classlm.errors import ConfigError

    with pytest.raises(ConfigError, match="registered already"):
        register("toy_length")(LengthMethod)
    get_method("label_tokens")  # the shipped methods are registered on the first lookup
    with pytest.raises(ConfigError, match="registered already"):
        register("label_tokens")(LengthMethod)


def test_the_cli_and_bench_take_it_by_name(tmp_path, monkeypatch, capsys):
    from classlm.bench import make_splits, run_bench
    from classlm.cli import main

    folder = tmp_path / "data"
    folder.mkdir()
    rows = "".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in zip(TEXTS * 5, LABELS * 5))
    for split in ("train", "validation", "test"):
        (folder / f"{split}.jsonl").write_text(rows)
    for argv in (
        ["train", str(folder), "--method", "toy_length", "--no-lora", "--out", str(tmp_path / "run")],
        ["classify", "--run", str(tmp_path / "run"), "--format", "jsonl", "x", "a really quite long piece of text"],
    ):
        monkeypatch.setattr(sys, "argv", ["classlm", *argv])
        with pytest.raises(SystemExit) as exit_:
            main()
        captured = capsys.readouterr()
        assert exit_.value.code == 0, captured.err
    assert [json.loads(line)["label"] for line in captured.out.splitlines()] == ["short", "long"]
    splits = make_splits(TEXTS * 5, LABELS * 5, TEXTS, LABELS, budget=12, n_calib=6, n_eval=6, n_test=6, seed=0)
    row = run_bench(splits, ["toy_length"], labels=["short", "long"], instruction=None)["toy_length"]
    assert row["method"] == "toy_length" and row["accuracy"] == 1.0


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The classlm modules ``path`` imports anywhere (function bodies too), except under ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        found.update(n for n in names if n in modules)
    return found


def test_the_import_graph_of_src_has_no_cycles():
    files = {}
    for path in (SRC / "classlm").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {m: _imports(p, set(files)) - {m} for m, p in files.items()}
    # A package imports its submodules by being their parent only: count "a.b imports a" as no edge back.
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(m: str, trail: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*trail[trail.index(d) :], d]))
            if d not in state:
                visit(d, [*trail, d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_modules_and_functions_stay_small():
    # DESIGN.md §3: modules under ~400 lines, functions under ~80; the "~" is the slack below, not a licence to grow.
    too_long = []
    for path in sorted((SRC / "classlm").rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > 425:
            too_long.append(f"{path.name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 90:
                too_long.append(f"{path.name}:{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not too_long, too_long

"""classlm score / classlm.batch_scoring on a local Ray: two actors give local predict_proba's probabilities row for
row, in input order with every id; an actor that dies mid-run is restarted and no row is lost or repeated."""

from __future__ import annotations

import json
import logging
import os
import warnings

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from classlm import LMClassifier  # noqa: E402
from classlm.batch_scoring import Predictor, score_file  # noqa: E402

pytestmark = pytest.mark.slow  # a local Ray and two actors that each load torch: about a minute
TEXTS = [f"text number {i} about the {('match', 'stocks', 'phone')[i % 3]}" for i in range(600)]


@pytest.fixture(scope="module")
def local_ray():
    # Two actors of one thread and one CPU for the tasks that read the file (set deliberately: 2 cores here).
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def saved_run(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("score")
    clf = LMClassifier(model=str(tiny_model_dir), labels=["Sports", "Business", "Tech"], progress=False)
    clf.fit(TEXTS[:30], ["Sports", "Business", "Tech"] * 10).save(root / "run")
    (root / "in.jsonl").write_text("".join(json.dumps({"id": f"r{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    return root, clf


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_actors_give_the_local_probabilities_in_order(local_ray, saved_run, monkeypatch, capsys):
    from test_cli import run_cli

    root, clf = saved_run
    stats = score_file(root / "run", root / "in.jsonl", root / "out.jsonl", actors=2, batch_size=50)
    rows = _rows(root / "out.jsonl")
    assert stats["rows"] == len(rows) == len(TEXTS) and [r["id"] for r in rows] == [f"r{i}" for i in range(len(TEXTS))]
    got = np.array([[r["probabilities"][c] for c in clf.classes_] for r in rows])
    np.testing.assert_allclose(got, clf.predict_proba(TEXTS), atol=1e-6)
    assert [r["label"] for r in rows] == list(clf.predict(TEXTS))
    # The command line, to another format (the suffix picks it).
    code, out, err = run_cli(monkeypatch, capsys, "score", root / "run", root / "in.jsonl", "-o", root / "out.csv",
                             "--actors", "2", "--batch-size", "50")  # fmt: skip
    assert code == 0 and f"{len(TEXTS)} rows scored" in out, err
    import pandas as pd

    table = pd.read_csv(root / "out.csv")
    assert list(table["id"]) == [f"r{i}" for i in range(len(TEXTS))]
    assert json.loads(table["probabilities"][0]).keys() == set(clf.classes_)


def test_a_missing_text_column_is_said_before_any_actor_starts(local_ray, saved_run, tmp_path):
    from classlm.errors import ConfigError

    root, _ = saved_run
    (tmp_path / "in.jsonl").write_text(json.dumps({"id": 1, "body": "x"}) + "\n")
    with pytest.raises(ConfigError, match=r"has no column\(s\) \['text'\].*--text-col"):
        score_file(root / "run", tmp_path / "in.jsonl", tmp_path / "out.jsonl", actors=1)


def test_a_gold_label_is_kept_and_a_row_without_text_is_left_unscored(saved_run):
    import pandas as pd

    root, clf = saved_run
    texts = [TEXTS[0], None, TEXTS[1], pd.NA]  # an absent key reads as NA (Ray's JSON reader), None or NaN
    batch = pd.DataFrame({"id": [1, 2, 3, 4], "text": texts, "label": ["gold"] * 4})
    got = Predictor(str(root / "run"))(batch)
    assert list(got["label"]) == ["gold"] * 4 and list(got["id"]) == [1, 2, 3, 4]
    assert got["predicted_label"][1] is None and got["predicted_probabilities"][3] is None
    proba = np.array([[got["predicted_probabilities"][i][c] for c in clf.classes_] for i in (0, 2)])
    np.testing.assert_allclose(proba, clf.predict_proba([TEXTS[0], TEXTS[1]]), atol=1e-6)
    assert [got["predicted_label"][i] for i in (0, 2)] == list(clf.predict([TEXTS[0], TEXTS[1]]))


def test_an_empty_file_is_refused_and_rows_without_text_are_counted(local_ray, saved_run, tmp_path, capfd):
    from classlm.errors import DataError

    root, _ = saved_run
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="found none"):
        score_file(root / "run", tmp_path / "empty.jsonl", tmp_path / "out.jsonl", actors=1)
    rows = [{"id": 0, "text": TEXTS[0]}, {"id": 1}, {"id": 2, "text": TEXTS[2]}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    stats = score_file(root / "run", tmp_path / "in.jsonl", tmp_path / "out.jsonl", actors=1)
    got = _rows(tmp_path / "out.jsonl")
    assert stats["unscored"] == 1 and [r["id"] for r in got] == [0, 1, 2]
    assert got[1]["label"] is None and got[0]["label"] is not None and got[2]["probabilities"] is not None
    # The same rows to CSV (a null must not break the JSON cells), and a blank CSV cell counts as no text.
    stats = score_file(root / "run", tmp_path / "in.jsonl", tmp_path / "out.csv", actors=1)
    import pandas as pd

    table = pd.read_csv(tmp_path / "out.csv")
    assert stats["unscored"] == 1 and pd.isna(table["probabilities"][1]) and json.loads(table["probabilities"][0])
    (tmp_path / "blank.csv").write_text(f"id,text\n0,{TEXTS[0]}\n1,\n")
    assert score_file(root / "run", tmp_path / "blank.csv", tmp_path / "blank.jsonl", actors=1)["unscored"] == 1
    # A .txt file, as `classify --file` reads one: a text per non-blank line.
    (tmp_path / "in.txt").write_text(f"{TEXTS[0]}\n\n{TEXTS[2]}\n")
    capfd.readouterr()
    levels = [h.level for h in logging.getLogger("ray.data").handlers]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stats = score_file(root / "run", tmp_path / "in.txt", tmp_path / "txt.jsonl", actors=1)
    got = _rows(tmp_path / "txt.jsonl")
    assert stats["rows"] == 2 and [r["text"] for r in got] == [TEXTS[0], TEXTS[2]] and got[1]["label"] is not None
    # Quiet: neither Ray Data's INFO lines (each dataset's plan and progress) nor its warning on filter(fn).
    err = capfd.readouterr().err
    assert "Running Dataset" not in err and "Execution plan" not in err, err
    assert [h.level for h in logging.getLogger("ray.data").handlers] == levels  # put back: the caller's logging
    assert not [w for w in caught if "filter" in str(w.message) or "'expr'" in str(w.message)]


def test_an_actor_that_dies_is_restarted_and_no_row_is_lost_or_repeated(local_ray, saved_run, tmp_path):
    root, clf = saved_run
    marker = tmp_path / "died"

    class DiesOnce(Predictor):  # defined here, so Ray ships it to the actors by value
        def __call__(self, batch):
            if not marker.exists():  # the first batch any actor gets: the process exits without a word
                marker.write_text("x")
                os._exit(1)
            return super().__call__(batch)

    score_file(root / "run", root / "in.jsonl", tmp_path / "out.jsonl", actors=2, batch_size=50, predictor=DiesOnce)
    rows = _rows(tmp_path / "out.jsonl")
    assert marker.exists()  # an actor did die mid-run
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(len(TEXTS))]  # each row once, in order
    got = np.array([[r["probabilities"][c] for c in clf.classes_] for r in rows])
    np.testing.assert_allclose(got, clf.predict_proba(TEXTS), atol=1e-6)

"""Tests for classlm.data: every source kind, every error message, label validation and stratified splits."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from classlm.data import (
    TextDataset,
    find_label_names,
    find_label_spec,
    load_dataset,
    read_texts,
    stratified_split,
    validate_labels,
)
from classlm.errors import ConfigError, DataError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]], delimiter: str = ",") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


ROWS = [
    {"text": "Stocks fell", "label": "Business"},
    {"text": "Team won", "label": "Sports"},
    {"text": "New phone", "label": "Sci/Tech"},
]


class FakeClassLabel:
    """Duck-typed stand-in for datasets.ClassLabel: only ``names`` is used."""

    def __init__(self, names: list[str]) -> None:
        self.names = names


class FakeDataset:
    """Duck-typed stand-in for datasets.Dataset: column_names, column access, len, select, features."""

    def __init__(self, data: dict[str, list], features: dict | None = None) -> None:
        self._data = data
        self.features = features or {}
        self.selected: list[int] | None = None

    @property
    def column_names(self) -> list[str]:
        return list(self._data)

    def __len__(self) -> int:
        return len(next(iter(self._data.values())))

    def __getitem__(self, key: str) -> list:
        return self._data[key]

    def select(self, indices) -> FakeDataset:
        idx = list(indices)
        out = FakeDataset({k: [v[i] for i in idx] for k, v in self._data.items()}, self.features)
        out.selected = idx
        return out


# --- TextDataset ---


def test_textdataset_len_subset_head():
    ds = TextDataset(["a", "b", "c"], ["x", "y", "x"], "mem", ["x", "y"])
    assert isinstance(ds.texts, tuple) and isinstance(ds.labels, tuple) and ds.label_names == ("x", "y")
    assert len(ds) == 3
    sub = ds.subset(np.array([2, 0]))
    assert sub.texts == ("c", "a") and sub.labels == ("x", "x") and sub.label_names == ("x", "y")
    assert ds.head(2).texts == ("a", "b")
    assert len(ds.head(10)) == 3
    assert TextDataset(("a",), None, "mem").subset([0]).labels is None


def test_textdataset_validates_lengths_and_indices():
    with pytest.raises(DataError, match="2 texts but 1 labels"):
        TextDataset(("a", "b"), ("x",), "mem")
    ds = TextDataset(("a", "b"), ("x", "y"), "mem")
    with pytest.raises(DataError, match="out of range"):
        ds.subset([5])
    with pytest.raises(ConfigError):
        ds.head(-1)


# --- files ---


def test_load_jsonl(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps({"text": "Seven", "label": 1}) + "\n")
    ds = load_dataset(path)
    assert ds.texts == ("Stocks fell", "Seven")
    assert ds.labels == ("Business", "1")  # JSON int becomes a string
    assert ds.source == str(path)
    assert ds.label_names is None


def test_load_json_list_and_json_lines(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps(ROWS))
    assert load_dataset(tmp_path / "list.json").labels == ("Business", "Sports", "Sci/Tech")
    write_jsonl(tmp_path / "lines.json", ROWS)
    assert load_dataset(tmp_path / "lines.json").texts == ("Stocks fell", "Team won", "New phone")


def test_load_json_not_a_list(tmp_path):
    (tmp_path / "d.json").write_text('"just a string"')
    with pytest.raises(DataError, match="expected a JSON list of objects"):
        load_dataset(tmp_path / "d.json")
    (tmp_path / "bad.json").write_text('[{"text": "a", ')
    with pytest.raises(DataError, match="malformed JSON at line 1"):
        load_dataset(tmp_path / "bad.json")


def test_load_csv_keeps_label_strings_and_quoted_fields(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["text", "label"], [["Hello, world\nsecond line", "1"], ["Bye", "0"]])
    ds = load_dataset(path)
    assert ds.texts == ("Hello, world\nsecond line", "Bye")
    assert ds.labels == ("1", "0")


def test_load_tsv(tmp_path):
    path = write_csv(tmp_path / "d.tsv", ["label", "sentence"], [["pos", "Great, fun"], ["neg", "Dull"]], "\t")
    ds = load_dataset(path, text_col="sentence")
    assert ds.texts == ("Great, fun", "Dull") and ds.labels == ("pos", "neg")


def test_load_csv_bad_field_count(tmp_path):
    (tmp_path / "d.csv").write_text("text,label\nfine,a\ntoo,many,fields\n")
    with pytest.raises(DataError, match="line 3: 3 fields but the header has 2"):
        load_dataset(tmp_path / "d.csv")


def test_load_csv_empty_file(tmp_path):
    (tmp_path / "d.csv").write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_dataset(tmp_path / "d.csv")


def test_load_parquet(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    path = tmp_path / "d.parquet"
    pd.DataFrame({"text": ["a b", "c d"], "label": [3, 4], "extra": [0.1, 0.2]}).to_parquet(path)
    ds = load_dataset(path)
    assert ds.texts == ("a b", "c d") and ds.labels == ("3", "4")


def test_load_parquet_without_pandas_says_how_to_install(tmp_path, monkeypatch):
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pandas", None)  # makes `import pandas` raise ImportError
    with pytest.raises(DataError, match=r"pip install 'classlm\[data\]'"):
        load_dataset(path)


def test_missing_file_and_unsupported_extension(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        load_dataset(tmp_path / "nope.jsonl")
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(DataError, match=r"unsupported file type '\.xlsx'.*\.jsonl, \.json, \.csv"):
        load_dataset(tmp_path / "d.xlsx")


def test_malformed_jsonl_line_number(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[1]) + "\n{not json}\n")
    with pytest.raises(DataError, match="line 3: malformed JSON"):
        load_dataset(path)
    path.write_text(json.dumps(ROWS[0]) + "\n[1, 2]\n")
    with pytest.raises(DataError, match="line 2: expected an object"):
        load_dataset(path)


def test_not_utf8(tmp_path):
    (tmp_path / "d.jsonl").write_bytes(b'{"text": "caf\xe9", "label": "a"}\n')
    with pytest.raises(DataError, match="not UTF-8"):
        load_dataset(tmp_path / "d.jsonl")


# --- folders ---


@pytest.fixture()
def folder(tmp_path) -> Path:
    root = tmp_path / "news"
    root.mkdir()
    write_jsonl(root / "test.jsonl", ROWS)
    write_jsonl(root / "train.jsonl", ROWS[:2])
    write_csv(root / "validation.csv", ["text", "label"], [["x", "World"]])
    (root / "labels.json").write_text(json.dumps(["World", "Sports", "Business", "Sci/Tech"]))
    return root


def test_folder_default_split_and_label_names(folder):
    ds = load_dataset(folder)
    assert len(ds) == 3 and ds.source == str(folder / "test.jsonl")
    assert ds.label_names == ("World", "Sports", "Business", "Sci/Tech")
    assert len(load_dataset(folder, split="train")) == 2
    assert load_dataset(folder, split="validation").labels == ("World",)


def test_folder_missing_split_lists_available(folder):
    with pytest.raises(DataError, match="no 'dev' split.*available splits: test, train, validation"):
        load_dataset(folder, split="dev")


def test_file_gets_label_names_from_sibling_labels_json(folder):
    assert load_dataset(folder / "train.jsonl").label_names == ("World", "Sports", "Business", "Sci/Tech")


def test_find_label_names(folder, tmp_path):
    assert find_label_names(folder) == ["World", "Sports", "Business", "Sci/Tech"]
    assert find_label_names(folder / "test.jsonl") == ["World", "Sports", "Business", "Sci/Tech"]
    lonely = write_jsonl(tmp_path / "lonely.jsonl", ROWS)
    assert find_label_names(lonely) is None
    # The {name: description} forms that --labels takes are class names too (their keys, in order).
    spec = {"World": "world politics", "Sports": {"description": "sport", "verbalizer": "sport"}}
    (folder / "labels.json").write_text(json.dumps(spec))
    assert find_label_names(folder) == ["World", "Sports"]
    assert find_label_spec(folder / "test.jsonl") == spec
    (folder / "labels.json").write_text('{"a": 1}')
    with pytest.raises(DataError, match="each class maps to a description"):
        find_label_names(folder)
    (folder / "labels.json").write_text("[]")
    with pytest.raises(DataError, match="expected a JSON list of class names"):
        find_label_names(folder)
    (folder / "labels.json").write_text('["a", "a"]')
    with pytest.raises(DataError, match="duplicate class names"):
        find_label_names(folder)


# --- in-memory sources ---


def test_list_of_dicts():
    ds = load_dataset([{"text": "a", "label": 0}, {"text": "b", "label": True}])
    assert ds.texts == ("a", "b") and ds.labels == ("0", "True") and ds.source == "list of dicts"
    with pytest.raises(DataError, match="row 1: expected an object/dict"):
        load_dataset([{"text": "a", "label": "x"}, "b"])


def test_dataframe():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"sentence": ["a", "b", "c"], "label": [1, 0, 1]}, index=[10, 20, 30])
    ds = load_dataset(frame, text_col="sentence", limit=2)
    assert ds.texts == ("a", "b") and ds.labels == ("1", "0")


def test_dataframe_nan_text_reports_position():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"text": ["a", None, "c"], "label": ["x", "y", "x"]})
    with pytest.raises(DataError, match=r"non-string value\(s\).*row 1 \(float nan\)"):
        load_dataset(frame)


def test_hf_dataset_classlabel_ints_map_to_names():
    fake = FakeDataset(
        {"text": ["a", "b", "c"], "label": [2, 0, 1]},
        features={"text": object(), "label": FakeClassLabel(["neg", "neu", "pos"])},
    )
    ds = load_dataset(fake)
    assert ds.labels == ("pos", "neg", "neu")
    assert ds.label_names == ("neg", "neu", "pos")
    limited = load_dataset(fake, limit=2)
    assert limited.labels == ("pos", "neg")


def _saved_datasets(tmp_path):
    """A Dataset and a DatasetDict written by datasets' save_to_disk, with a ClassLabel label column."""
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})

    def split(labels):
        return datasets.Dataset.from_dict({"text": [f"text {i}" for i in labels], "label": labels}, features=features)

    split([1, 0, 1]).save_to_disk(str(tmp_path / "one"))
    datasets.DatasetDict({"train": split([0, 0, 1]), "test": split([1, 1])}).save_to_disk(str(tmp_path / "dict"))
    return tmp_path / "one", tmp_path / "dict"


def test_a_save_to_disk_folder_loads_with_its_class_names(tmp_path):
    one, both = _saved_datasets(tmp_path)
    ds = load_dataset(one)
    assert ds.labels == ("pos", "neg", "pos") and ds.label_names == ("neg", "pos")
    assert load_dataset(both).labels == ("pos", "pos")  # a DatasetDict folder: split "test" by default
    assert load_dataset(both, split="train", limit=2).labels == ("neg", "neg")
    assert read_texts(one) == ["text 1", "text 0", "text 1"]
    with pytest.raises(DataError, match="no 'validation' split in the saved dataset .*available splits: train, test"):
        load_dataset(both, split="validation")


def test_the_cli_reads_a_save_to_disk_folder(tmp_path, tiny_model_dir, monkeypatch, capsys):
    from classlm.cli import main

    one, _ = _saved_datasets(tmp_path)
    argv = ["classlm", "classify", "--model", str(tiny_model_dir), "--labels", "neg,pos", "--format", "jsonl"]
    monkeypatch.setattr(sys, "argv", [*argv, "--file", str(one)])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["text"] for r in rows] == ["text 1", "text 0", "text 1"]


def test_a_save_to_disk_folder_without_datasets_installed_names_the_package(tmp_path, monkeypatch):
    folder = tmp_path / "saved"
    folder.mkdir()
    (folder / "state.json").write_text("{}")
    (folder / "dataset_info.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "datasets", None)  # what an environment without the package gives
    with pytest.raises(DataError, match="saved with save_to_disk; reading it needs the datasets package: pip install"):
        load_dataset(folder)


def test_hf_dataset_limit_uses_select():
    fake = FakeDataset({"text": ["a", "b", "c"], "label": ["x", "y", "z"]})
    seen = {}
    original = fake.select

    def spy(indices):
        out = original(indices)
        seen["idx"] = out.selected
        return out

    fake.select = spy  # type: ignore[method-assign]
    assert load_dataset(fake, limit=2).texts == ("a", "b")
    assert seen["idx"] == [0, 1]


def test_hf_dataset_unlabelled_minus_one():
    fake = FakeDataset({"text": ["a", "b"], "label": [-1, 0]}, features={"label": FakeClassLabel(["n", "p"])})
    with pytest.raises(DataError, match=r"outside 0\.\.1.*row 0"):
        load_dataset(fake)


def test_hf_dataset_plain_string_labels():
    ds = load_dataset(FakeDataset({"text": ["a"], "label": ["x"]}))
    assert ds.labels == ("x",) and ds.label_names is None


def test_dataset_dict_needs_split():
    dd = {
        "train": FakeDataset({"text": ["a"], "label": ["x"]}),
        "test": FakeDataset({"text": ["b"], "label": ["y"]}),
    }
    with pytest.raises(DataError, match="DatasetDict needs split=.*available splits: train, test"):
        load_dataset(dd)
    with pytest.raises(DataError, match="split='dev'"):
        load_dataset(dd, split="dev")
    assert load_dataset(dd, split="test").texts == ("b",)


def test_unsupported_source_type():
    with pytest.raises(DataError, match="cannot load data from a int"):
        load_dataset(42)


# --- columns, labels, limit ---


def test_missing_text_column_suggests(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    with pytest.raises(DataError, match="did you mean 'text'") as info:
        load_dataset(path, text_col="txet")
    assert "available columns: 'text', 'label'" in str(info.value)
    assert "--text-col" in str(info.value)


def test_missing_label_column(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "labels": "x"}])
    with pytest.raises(DataError, match="label column 'label' not found.*did you mean 'labels'") as info:
        load_dataset(path)
    assert "--label-col" in str(info.value) and "require_labels=False" in str(info.value)
    ds = load_dataset(path, require_labels=False, label_col="nothing")
    assert ds.labels is None and ds.texts == ("a",)
    assert load_dataset(path, label_col="labels").labels == ("x",)


def test_label_col_none_needs_require_labels_false(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    with pytest.raises(ConfigError, match="require_labels=False"):
        load_dataset(path, label_col=None)
    assert load_dataset(path, label_col=None, require_labels=False).labels is None


def test_empty_texts_report_first_five_rows_and_count(tmp_path):
    rows = [{"text": "ok", "label": "a"}] + [{"text": " \t", "label": "a"}] * 6 + [{"text": "", "label": "a"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match="7 empty or whitespace-only") as info:
        load_dataset(path)
    msg = str(info.value)
    assert "line 2, line 3, line 4, line 5, line 6, …" in msg
    assert "line 7" not in msg


def test_non_string_text_reports_row(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [ROWS[0], {"text": None, "label": "a"}, {"text": 5, "label": "a"}])
    with pytest.raises(DataError, match=r"2 non-string.*line 2 \(null\), line 3 \(int 5\)"):
        load_dataset(path)
    with pytest.raises(DataError, match=r"row 0 \(field absent\)"):
        load_dataset([{"label": "a", "body": "x"}, {"text": "b", "label": "a"}])


def test_missing_label_value(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [ROWS[0], {"text": "b", "label": None}])
    with pytest.raises(DataError, match=r"1 missing or empty label\(s\).*line 2"):
        load_dataset(path)


def test_no_rows(tmp_path):
    (tmp_path / "d.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="has no rows"):
        load_dataset(tmp_path / "d.jsonl")


def test_limit_keeps_first_rows_and_ignores_later_bad_rows(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS) + "{broken\n")
    ds = load_dataset(path, limit=2)
    assert ds.texts == ("Stocks fell", "Team won")
    csv_path = write_csv(tmp_path / "d.csv", ["text", "label"], [["a", "x"], ["b", "y"], ["c", "z"]])
    assert load_dataset(csv_path, limit=1).labels == ("x",)


@pytest.mark.parametrize("limit", [0, -3, 1.5, True])
def test_bad_limit(tmp_path, limit):
    with pytest.raises(ConfigError, match="limit must be a positive int"):
        load_dataset(write_jsonl(tmp_path / "d.jsonl", ROWS), limit=limit)


# --- validate_labels ---


def test_validate_labels_accepts_known():
    validate_labels(["a", "b", "a"], ["a", "b", "c"])


def test_validate_labels_reports_unknown_with_counts_and_suggestions():
    with pytest.raises(DataError) as info:
        validate_labels(["Sports", "Sprots", "Sprots", "WORLD", "World"], ["World", "Sports", "Business"])
    msg = str(info.value)
    assert "'Sprots' (2 rows; did you mean 'Sports'?)" in msg
    assert "'WORLD' (1 row; did you mean 'World'?)" in msg  # a case slip difflib alone would miss
    assert "Allowed: 'World', 'Sports', 'Business'" in msg
    assert msg.startswith("3 label(s)")


def test_validate_labels_shows_at_most_five():
    with pytest.raises(DataError, match="and 2 more") as info:
        validate_labels([f"zz{i}" for i in range(7)], ["a", "b"])
    assert str(info.value).count("row)") == 5


# --- read_texts ---


def test_read_texts_txt_skips_blank_lines(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("first text\n\n   \nsecond, text\r\n")
    assert read_texts(path) == ["first text", "second, text"]


def test_read_texts_stdin(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("one\n\ntwo\n"))
    assert read_texts("-") == ["one", "two"]


def test_read_texts_data_file_without_labels(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"body": "x"}, {"body": "y", "label": None}])
    assert read_texts(str(path), text_col="body") == ["x", "y"]


def test_read_texts_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_texts(tmp_path / "missing.txt")


# --- stratified_split ---


LABELS = ["a"] * 10 + ["b"] * 5 + ["c"] * 2 + ["d"] + ["a", "b"] * 5


def test_stratified_split_partition_and_counts():
    keep, held = stratified_split(LABELS, 0.2, seed=1)
    assert keep.dtype.kind == "i" and held.dtype.kind == "i"
    assert np.all(np.diff(keep) > 0) and np.all(np.diff(held) > 0)
    assert not set(keep) & set(held)
    assert sorted(set(keep) | set(held)) == list(range(len(LABELS)))
    held_counts = {lab: sum(LABELS[i] == lab for i in held) for lab in "abcd"}
    # a: 15 rows -> 3; b: 10 -> 2; c: 2 -> round(0.4)=0 raised to 1; d: single row stays in keep
    assert held_counts == {"a": 3, "b": 2, "c": 1, "d": 0}


def test_stratified_split_keeps_every_class_on_both_sides():
    keep, held = stratified_split(["x", "x", "y", "y", "y"], 0.9)
    assert {["x", "x", "y", "y", "y"][i] for i in keep} == {"x", "y"}
    assert len(held) == 3


def test_stratified_split_deterministic():
    a = stratified_split(LABELS, 0.3, seed=7)
    b = stratified_split(LABELS, 0.3, seed=7)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    others = [stratified_split(LABELS, 0.3, seed=s)[1] for s in range(8, 14)]
    assert any(not np.array_equal(a[1], o) for o in others)


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, float("nan"), True, "0.2"])
def test_stratified_split_fraction_bounds(fraction):
    with pytest.raises(ConfigError, match="strictly between 0 and 1"):
        stratified_split(["a", "b"], fraction)


# --- real data ---


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} is absent (datasets live in ../shared/data)")
def test_real_ag_news_test_split():
    ds = load_dataset(SHARED_DATA / "ag_news", split="test")
    assert len(ds) == 7600
    assert ds.label_names is not None and len(ds.label_names) == 4
    assert ds.labels is not None and set(ds.labels) <= set(ds.label_names)
    validate_labels(ds.labels, ds.label_names)


def test_sample_is_seeded_stratified_and_in_file_order():
    labels = ["a"] * 60 + ["b"] * 30 + ["c"] * 9 + ["d"]  # sorted by class, as many files are
    ds = TextDataset(tuple(f"t{i}" for i in range(100)), tuple(labels), "mem")
    s = ds.sample(20, seed=3)
    assert len(s) == 20 and list(s.texts) == sorted(s.texts, key=lambda t: int(t[1:]))  # file order kept
    counts = {c: s.labels.count(c) for c in "abcd"}
    # One row per class first, the other 16 in proportion to the rows left (59 : 29 : 8 : 0).
    assert counts == {"a": 11, "b": 6, "c": 2, "d": 1}
    assert s.texts == ds.sample(20, seed=3).texts and s.texts != ds.sample(20, seed=4).texts
    assert ds.head(20).labels == ("a",) * 20  # what the first rows give
    assert ds.sample(None) is ds and ds.sample(500) is ds
    few = ds.sample(2, seed=0)  # fewer rows than classes: distinct classes
    assert len(few) == 2 and len(set(few.labels)) == 2
    unlabelled = TextDataset(ds.texts, None, "mem").sample(5, seed=0)
    assert len(unlabelled) == 5 and len(set(unlabelled.texts)) == 5


def test_drop_invalid_leaves_out_and_counts_bad_rows(tmp_path):
    rows = [{"text": "ok", "label": "x"}, {"text": "  ", "label": "x"}, {"text": "no label"}]
    rows.append({"text": "b", "label": ""})
    path = write_jsonl(tmp_path / "d.jsonl", rows + [{"text": "fine", "label": "y"}])
    with pytest.raises(DataError, match="drop_invalid=True"):
        load_dataset(path)
    ds = load_dataset(path, drop_invalid=True)
    assert ds.texts == ("ok", "fine") and ds.labels == ("x", "y") and ds.dropped == 3
    assert ds.sample(1, seed=0).dropped == 3
    with pytest.raises(DataError, match="nothing is left"):
        load_dataset(write_jsonl(tmp_path / "bad.jsonl", rows[1:]), drop_invalid=True)


def test_explicit_label_names_skip_a_sibling_labels_json(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    (tmp_path / "labels.json").write_text("not json")
    with pytest.raises(DataError, match="cannot read"):
        load_dataset(path)
    assert load_dataset(path, label_names=False).label_names is None

"""agl_tinker.loop.data: loading, validation, deterministic batching, epochs and splits."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from agl_tinker.loop.data import DatasetError, TaskDataset, build_datasets, load_tasks, split_tasks

ROWS = [{"question": f"q{i}", "answer": str(i), "level": i % 3} for i in range(10)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# ------------------------------------------------------------------------------------------ loading


@pytest.mark.parametrize("fmt", ["list", "jsonl", "json", "csv", "parquet"])
def test_every_format_loads_the_same_tasks(tmp_path: Path, fmt: str) -> None:
    src: object
    if fmt == "list":
        src = ROWS
    elif fmt == "jsonl":
        src = write_jsonl(tmp_path / "d.jsonl", ROWS)
    elif fmt == "json":
        src = tmp_path / "d.json"
        src.write_text(json.dumps(ROWS))
    elif fmt == "csv":
        src = write_csv(tmp_path / "d.csv", ROWS)
    else:
        src = write_parquet(tmp_path / "d.parquet", ROWS)
    tasks = load_tasks(src, required_fields=["question", "answer"])  # type: ignore[arg-type]
    assert [t["question"] for t in tasks] == [r["question"] for r in ROWS]
    assert [t["answer"] for t in tasks] == [r["answer"] for r in ROWS]
    if fmt != "csv":  # CSV has no types: every cell is a string
        assert tasks == ROWS


def test_loading_copies_rows() -> None:
    rows = [{"q": 1}]
    tasks = load_tasks(rows)
    tasks[0]["q"] = 2
    assert rows == [{"q": 1}]


def test_jsonl_skips_blank_lines_and_reports_bad_line(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text('{"q": 1}\n\n{"q": 2}\n')
    assert load_tasks(p) == [{"q": 1}, {"q": 2}]
    p.write_text('{"q": 1}\n{"q": \n')
    with pytest.raises(DatasetError, match="line 2 is not valid JSON"):
        load_tasks(p)


def test_unsupported_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_tasks(tmp_path / "nope.jsonl")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"unsupported dataset format '\.txt'"):
        load_tasks(tmp_path / "d.txt")
    (tmp_path / "d.parquet").write_text("not parquet")
    with pytest.raises(DatasetError, match="cannot read dataset"):
        load_tasks(tmp_path / "d.parquet")


def test_non_dict_rows_are_rejected() -> None:
    with pytest.raises(DatasetError, match="row 1 is a str, not a task dict"):
        load_tasks([{"q": 1}, "q2"])
    with pytest.raises(DatasetError, match="sequence of task dicts"):
        load_tasks({"q": 1})  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- required fields


def test_missing_field_names_row_and_field() -> None:
    rows = [{"question": "a", "answer": "1"}, {"question": "b"}, {"answer": "3"}]
    with pytest.raises(DatasetError) as e:
        load_tasks(rows, required_fields=["question", "answer"])
    msg = str(e.value)
    assert "row 1 is missing required field(s) 'answer'" in msg
    assert "1 more rows" in msg


def test_none_counts_as_missing_and_csv_error_points_at_the_line(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="row 0 is missing required field"):
        load_tasks([{"question": None}], required_fields=["question"])
    p = write_csv(tmp_path / "d.csv", [{"question": "a", "answer": "1"}, {"question": "b", "answer": ""}])
    with pytest.raises(
        DatasetError, match=r"row 1 \(.*d\.csv, line 3\) is missing required field\(s\) 'answer'"
    ):
        load_tasks(p, required_fields=["answer"])


def test_parquet_null_is_missing(tmp_path: Path) -> None:
    p = write_parquet(tmp_path / "d.parquet", [{"q": "a", "a": 1}, {"q": "b", "a": None}])
    with pytest.raises(DatasetError, match=r"row 1 .* 'a'"):
        load_tasks(p, required_fields=["a"])


def test_required_fields_must_be_a_list() -> None:
    with pytest.raises(DatasetError, match="list of names"):
        load_tasks(ROWS, required_fields="question")


def test_validation_happens_before_any_batch(tmp_path: Path) -> None:
    bad = [*ROWS, {"question": "no answer"}]
    with pytest.raises(DatasetError, match="row 10"):
        build_datasets(bad, batch_size=2, group_size=2, required_fields=["answer"])
    val = write_jsonl(tmp_path / "val.jsonl", [{"question": "v"}])
    with pytest.raises(DatasetError, match=r"val\.jsonl"):
        build_datasets(ROWS, val=val, batch_size=2, group_size=2, required_fields=["answer"])


# ------------------------------------------------------------------------------------ batching


def ds(**kw: object) -> TaskDataset:
    args: dict = {"batch_size": 3, "group_size": 4, "seed": 7} | kw
    return TaskDataset(tuple(ROWS), **args)


def test_len_and_partial_last_batch() -> None:
    d = ds(n_epochs=2)
    assert d.batches_per_epoch == 4 and len(d) == 8
    sizes = [len(d.get_batch(i)) for i in range(len(d))]
    assert sizes == [3, 3, 3, 1, 3, 3, 3, 1]
    assert len(ds(drop_last=True)) == 3


def test_each_epoch_is_a_permutation_and_epochs_differ() -> None:
    d = ds(n_epochs=3)
    epochs = [
        [t["question"] for i in range(e * 4, e * 4 + 4) for t in d.get_batch(i)] for e in range(d.n_epochs)
    ]
    for order in epochs:
        assert sorted(order) == sorted(r["question"] for r in ROWS)
    assert len({tuple(o) for o in epochs}) == 3
    assert [d.epoch_of(i) for i in range(len(d))] == [0] * 4 + [1] * 4 + [2] * 4


def test_batch_i_is_stable_across_instances_and_call_order() -> None:
    a, b = ds(n_epochs=3), ds(n_epochs=3)
    forward = [a.get_batch(i) for i in range(len(a))]
    backward = [b.get_batch(i) for i in reversed(range(len(b)))][::-1]
    assert forward == backward
    assert a.fingerprint == b.fingerprint


def test_resume_neither_repeats_nor_skips() -> None:
    d = ds(n_epochs=2)
    full = [i for i, _ in d.batches()]
    resumed = [i for i, _ in d.batches(start=5)]
    assert full[:5] + resumed == full
    assert [b for _, b in d.batches(start=5)] == [d.get_batch(i) for i in range(5, len(d))]


def test_seed_and_shuffle_change_order_and_fingerprint() -> None:
    base = ds()
    assert ds(seed=8).get_batch(0) != base.get_batch(0) or ds(seed=8).get_batch(1) != base.get_batch(1)
    assert ds(seed=8).fingerprint != base.fingerprint
    unshuffled = ds(shuffle=False)
    assert [t["question"] for t in unshuffled.get_batch(0)] == ["q0", "q1", "q2"]


def test_get_batch_returns_copies() -> None:
    d = ds()
    d.get_batch(0)[0]["question"] = "mutated"
    assert all(t["question"] != "mutated" for i in range(len(d)) for t in d.get_batch(i))


def test_bad_index_and_settings() -> None:
    d = ds()
    with pytest.raises(IndexError, match="out of range"):
        d.get_batch(len(d))
    with pytest.raises(IndexError):
        d.get_batch(-1)
    with pytest.raises(DatasetError, match="batch_size"):
        ds(batch_size=0)
    with pytest.raises(DatasetError, match="group_size"):
        ds(group_size=0)
    with pytest.raises(DatasetError, match="no tasks"):
        TaskDataset((), batch_size=1, group_size=1)
    with pytest.raises(DatasetError, match="drop_last"):
        ds(batch_size=11, drop_last=True)


def test_from_source_reads_and_validates(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "d.jsonl", ROWS)
    d = TaskDataset.from_source(p, batch_size=5, group_size=2, required_fields=["question"])
    assert len(d) == 2 and d.group_size == 2


# ------------------------------------------------------------------------------------------- split


def test_split_is_seeded_disjoint_and_order_preserving() -> None:
    train, val = split_tasks(ROWS, 0.3, seed=1)
    assert len(val) == 3 and len(train) == 7
    assert sorted(map(str, train + val)) == sorted(map(str, ROWS))
    assert train == [r for r in ROWS if r in train]  # original order kept
    assert split_tasks(ROWS, 0.3, seed=1) == (train, val)
    assert split_tasks(ROWS, 0.3, seed=2) != (train, val)


def test_split_edges() -> None:
    assert split_tasks(ROWS, 0.0) == (ROWS, [])
    assert len(split_tasks(ROWS, 0.01)[1]) == 1  # a positive fraction gives at least one
    with pytest.raises(DatasetError, match=r"\[0, 1\)"):
        split_tasks(ROWS, 1.0)
    with pytest.raises(DatasetError, match="no training tasks"):
        split_tasks(ROWS[:1], 0.5)


def test_build_datasets_with_split_and_with_val_set(tmp_path: Path) -> None:
    train, val = build_datasets(ROWS, batch_size=2, group_size=4, val_fraction=0.2, seed=3)
    assert val is not None
    assert len(train.tasks) == 8 and len(val.tasks) == 2
    assert len(val) == 1 and val.group_size == 1 and not val.shuffle
    assert not {t["question"] for t in train.tasks} & {t["question"] for t in val.tasks}

    p = write_jsonl(tmp_path / "val.jsonl", ROWS[:4])
    train2, val2 = build_datasets(ROWS, val=p, batch_size=2, group_size=4, val_batch_size=3, val_group_size=2)
    assert val2 is not None and len(train2.tasks) == 10
    assert [len(val2.get_batch(i)) for i in range(len(val2))] == [3, 1]
    assert build_datasets(ROWS, batch_size=2, group_size=1)[1] is None
    with pytest.raises(DatasetError, match="not both"):
        build_datasets(ROWS, val=p, val_fraction=0.1, batch_size=2, group_size=1)

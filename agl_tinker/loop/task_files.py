"""Tasks from files or lists: :func:`load_tasks` reads ``.csv``/``.jsonl``/``.json``/``.parquet``
files (or takes a list of dicts) and checks every row is a task with the required fields."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

Task: TypeAlias = dict[str, Any]
"""One rollout input: a JSON-like dict handed to the agent as ``task``."""

TaskSource: TypeAlias = "str | os.PathLike[str] | Sequence[Mapping[str, Any]]"
"""A path to a ``.csv``/``.jsonl``/``.json``/``.parquet`` file, or an in-memory list of dicts."""

__all__ = ["DatasetError", "Task", "TaskSource", "load_tasks", "validate_tasks"]


class DatasetError(ValueError):
    """A dataset cannot be used: unreadable file, non-dict row, missing field, bad split."""


# --------------------------------------------------------------------------------------------- loading


def load_tasks(source: TaskSource, *, required_fields: Sequence[str] = ()) -> list[Task]:
    """Load tasks from a file or a list of dicts and check every row has ``required_fields``.

    Files: ``.jsonl`` (one object per line, blank lines ignored), ``.json`` (an array of objects),
    ``.csv`` (header row; an empty cell is read as ``None`` because CSV cannot tell an empty
    string from a missing value), ``.parquet`` (nulls are ``None``). Rows are copied, so later
    mutation by an agent cannot change the dataset.

    Raises:
        DatasetError: unreadable/unsupported file, a row that is not an object, or a row
            missing a required field (the message names the row and the field).
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        rows, where = _read_file(path), _file_locator(path)
    else:
        if isinstance(source, Mapping):
            raise DatasetError("a dataset is a sequence of task dicts, not a single dict")
        rows = list(source)
        where = _list_locator
    tasks = [_as_task(row, where(i)) for i, row in enumerate(rows)]
    validate_tasks(tasks, required_fields, locate=where)
    return tasks


def validate_tasks(
    tasks: Sequence[Mapping[str, Any]],
    required_fields: Sequence[str],
    *,
    locate: Callable[[int], str] | None = None,
) -> None:
    """Fail before training starts if any row lacks a field the agent needs.

    A field is missing when the key is absent or its value is ``None``/NaN (how CSV and Parquet
    spell "no value"). The error names the first bad row and every field it lacks, and how many
    other rows are affected, so a broken column is recognisable at once.
    """
    if isinstance(required_fields, str):
        raise DatasetError(f"required_fields must be a list of names, not the string {required_fields!r}")
    where = locate if locate is not None else _list_locator
    bad: list[tuple[int, list[str]]] = []
    for i, task in enumerate(tasks):
        missing = [f for f in required_fields if _is_missing(task, f)]
        if missing:
            bad.append((i, missing))
    if bad:
        i, missing = bad[0]
        fields = ", ".join(repr(f) for f in missing)
        more = f" ({len(bad) - 1} more rows lack required fields)" if len(bad) > 1 else ""
        present = sorted(tasks[i].keys())
        raise DatasetError(f"{where(i)} is missing required field(s) {fields}; it has {present}{more}")


def _is_missing(task: Mapping[str, Any], field: str) -> bool:
    if field not in task:
        return True
    value = task[field]
    return value is None or (isinstance(value, float) and math.isnan(value))


def _as_task(row: Any, where: str) -> Task:
    if not isinstance(row, Mapping):
        raise DatasetError(f"{where} is a {type(row).__name__}, not a task dict")
    bad_keys = [k for k in row if not isinstance(k, str)]
    if bad_keys:
        raise DatasetError(f"{where} has non-string keys {bad_keys!r}")
    return dict(row)


def _list_locator(i: int) -> str:
    return f"row {i}"


def _file_locator(path: Path) -> Callable[[int], str]:
    suffix = path.suffix.lower()

    def where(i: int) -> str:
        # Rows are 0-based; say the line a person would open the file at, too.
        if suffix == ".csv":
            return f"row {i} ({path}, line {i + 2})"
        return f"row {i} ({path})"

    return where


def _read_file(path: Path) -> list[Any]:
    if not path.exists():
        raise DatasetError(f"dataset file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            return _read_jsonl(path)
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, list):
                raise DatasetError(
                    f"{path} must hold a JSON array of task objects, got {type(data).__name__}"
                )
            return data
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                rows: list[Any] = []
                for row in reader:
                    if None in row:  # more cells than header columns
                        raise DatasetError(f"{path} line {reader.line_num} has more cells than the header")
                    rows.append({k: (None if v == "" else v) for k, v in row.items()})
                return rows
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return list(pq.read_table(path).to_pylist())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
        raise DatasetError(f"cannot read dataset {path}: {e}") from e
    except Exception as e:  # pyarrow raises its own ArrowInvalid for corrupt files
        if type(e).__module__.startswith("pyarrow"):
            raise DatasetError(f"cannot read dataset {path}: {e}") from e
        raise
    raise DatasetError(f"{path}: unsupported dataset format {suffix!r}; use .jsonl, .json, .csv or .parquet")


def _read_jsonl(path: Path) -> list[Any]:
    rows: list[Any] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path} line {lineno} is not valid JSON: {e.msg}") from e
    return rows

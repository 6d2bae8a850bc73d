"""``fit`` hands its tasks to ``agl.Trainer.fit`` in a form the algorithm can load.

A file's path stays a path (as a ``Path``: ``Trainer.fit`` sends a plain string to its old
``fit_v0`` API), lists stay lists. Before, ``fit`` called ``list()`` on a path: a ``str`` became
its characters, a ``Path`` raised ``TypeError``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

from agl_tinker.examples.hello.agent import hello_agent, hello_dataset
from agl_tinker.examples.hello.train import hello_config

fit_module = importlib.import_module("agl_tinker.algorithm.fit")  # the package's `fit` is the function


def _datasets_given_to_trainer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, train: Any, val: Any = None
) -> dict[str, Any]:
    """What ``fit`` passes to ``Trainer.fit`` (which is replaced: nothing is started)."""
    given: dict[str, Any] = {}

    def recording(self: Any, agent: Any, **kwargs: Any) -> None:
        given.update(kwargs)

    monkeypatch.setattr(fit_module.agl.Trainer, "fit", recording)
    with pytest.raises(RuntimeError, match="did not finish"):
        fit_module.fit(hello_agent, hello_config(str(tmp_path / "run")), train, val)
    return given


@pytest.mark.parametrize("as_type", [str, Path])
def test_a_task_file_s_path_reaches_the_algorithm_as_a_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, as_type: type
) -> None:
    train, val = tmp_path / "train.csv", tmp_path / "val.csv"
    given = _datasets_given_to_trainer(tmp_path, monkeypatch, as_type(train), as_type(val))
    assert given["train_dataset"] == train and isinstance(given["train_dataset"], Path)
    assert given["val_dataset"] == val and isinstance(given["val_dataset"], Path)


def test_task_lists_stay_lists_and_no_validation_is_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tasks = hello_dataset("train")
    given = _datasets_given_to_trainer(tmp_path, monkeypatch, tuple(tasks))
    assert given["train_dataset"] == list(tasks)
    assert given["val_dataset"] is None

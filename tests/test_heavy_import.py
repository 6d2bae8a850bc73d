"""import_frozen: the import runs with collections paused and ends with its objects frozen."""

from __future__ import annotations

import gc
import sys
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from agl_tinker import heavy_import

# builds enough container objects to start many young-generation collections, as a large import does
MODULE = "cycles = []\nfor _ in range(20000):\n    a = []\n    a.append(a)\n    cycles.append(a)\n"


@pytest.fixture
def collections_started() -> Iterator[list[int]]:
    started: list[int] = []

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append(info["generation"])

    gc.callbacks.append(on_gc)
    try:
        yield started
    finally:
        gc.callbacks.remove(on_gc)


def test_the_import_starts_no_collection_and_its_objects_end_frozen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, collections_started: list[int]
) -> None:
    """No collection begins while the module runs, the collector is enabled again afterwards, and
    the module's objects are frozen, so neither later collections nor the one at exit walk them."""
    (tmp_path / "agl_heavy_probe.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "agl_heavy_probe", raising=False)
    gc.unfreeze()
    collections_started.clear()  # the ones the setup above happened to start are not the import's
    heavy_import.import_frozen("agl_heavy_probe")
    assert collections_started == [2], collections_started  # only the one full collection after it
    assert gc.isenabled()
    assert gc.get_freeze_count() >= 20000
    assert len(sys.modules["agl_heavy_probe"].cycles) == 20000


def test_an_imported_module_is_left_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """Already imported: no second import, no collection, nothing newly frozen."""
    import agentlightning

    calls: list[str] = []
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append("collect") or 0)
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    heavy_import.import_agentlightning()
    assert sys.modules["agentlightning"] is agentlightning
    assert calls == []


@pytest.mark.parametrize("name", ["TinkerAlgorithm", "LeanServerStrategy", "fast_runner", "EndpointConfig"])
def test_public_names_that_need_agentlightning_import_it_frozen(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``from agl_tinker import TinkerAlgorithm`` (the quickstart's first line) goes through heavy_import."""
    import agl_tinker

    calls: list[str] = []
    monkeypatch.setattr(heavy_import, "import_agentlightning", lambda: calls.append("import"))
    getattr(agl_tinker, name)
    assert calls == ["import"]


def test_the_cheap_public_names_do_not(monkeypatch: pytest.MonkeyPatch) -> None:
    import agl_tinker

    calls: list[str] = []
    monkeypatch.setattr(heavy_import, "import_agentlightning", lambda: calls.append("import"))
    assert agl_tinker.TrainConfig and agl_tinker.load_tasks
    assert calls == []


class _Node:
    """A reference cycle: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


def test_freeze_survivors_frees_garbage_then_freezes_what_is_alive() -> None:
    alive, dead = _Node(), _Node()
    dead_ref = weakref.ref(dead)
    del dead
    heavy_import.freeze_survivors()
    assert dead_ref() is None  # collected before the freeze, not kept
    assert not any(o is alive for o in gc.get_objects())  # out of every generation the collector walks
    assert alive.me is alive

"""The core builds its results with the classes' public constructors: they equal normally built objects."""

from __future__ import annotations

import dataclasses

import pydantic
import pytest
import tinker

from agl_tinker.core.align import model_input


def test_model_input_is_the_validated_model_and_can_be_copied() -> None:
    fast = model_input([5, 6, 7])
    slow = tinker.ModelInput.from_ints([5, 6, 7])
    assert fast == slow and fast.model_dump() == slow.model_dump()
    assert fast.model_fields_set == slow.model_fields_set
    assert fast.chunks[0].model_fields_set == slow.chunks[0].model_fields_set
    assert fast.model_dump(exclude_unset=True) == slow.model_dump(exclude_unset=True)
    assert fast.model_copy(update={"chunks": []}).chunks == [] and fast.length == 3
    with pytest.raises(pydantic.ValidationError):  # frozen, like the validated one
        fast.chunks = []  # type: ignore[misc]


def test_model_input_shares_the_token_list() -> None:
    tokens = [5, 6, 7]
    assert model_input(tokens).chunks[0].tokens is tokens  # type: ignore[union-attr]


def test_every_result_object_carries_exactly_its_fields() -> None:
    from spanfactory import conversation

    from agl_tinker.core.trajectory import rollout_trajectory

    _, spans = conversation(3, final_reward=1.0)
    r = rollout_trajectory(spans, status="succeeded")
    assert r.trajectory is not None
    rec, al = r.reconstruction, r.alignment
    objects = [r, rec, al, r.attribution, r.trajectory, *rec.calls, *rec.rewards, *al.steps, *al.sequences]
    objects += [t for t in r.trajectory.transitions] + [t.ac for t in r.trajectory.transitions]
    for obj in objects:
        assert _attributes(obj) == {f.name for f in dataclasses.fields(obj)}, type(obj)


def _attributes(obj: object) -> set[str]:
    """The attributes an object carries: its ``__dict__``, or the slots it has set (a slots
    dataclass has no ``__dict__``, so nothing else can be on it)."""
    if hasattr(obj, "__dict__"):
        return set(vars(obj))
    return {name for name in type(obj).__slots__ if hasattr(obj, name)}

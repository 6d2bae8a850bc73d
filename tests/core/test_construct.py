"""The construction shortcuts build the same objects as the classes' own constructors."""

from __future__ import annotations

import dataclasses

import pydantic
import pytest
import tinker
from tinker_cookbook.completers import TokensWithLogprobs
from tinker_cookbook.rl.types import Trajectory, Transition

from agl_tinker.core._construct import construct, model_input
from agl_tinker.core.align import AlignedStep


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


@pytest.mark.parametrize(
    ("cls", "fields"),
    [
        (TokensWithLogprobs, {"tokens": [1, 2], "maybe_logprobs": [-0.5, -0.25], "stop_reason": "length"}),
        (
            Transition,
            {
                "ob": tinker.ModelInput.from_ints([1]),
                "ac": TokensWithLogprobs(tokens=[2], maybe_logprobs=[-1.0]),
                "reward": 1.0,
                "episode_done": True,
                "metrics": {},
                "logs": {"call_index": 0},
            },
        ),
        (Trajectory, {"transitions": [], "final_ob": tinker.ModelInput(chunks=[]), "stop_reason": None}),
        (
            AlignedStep,
            {
                "call_index": 1,
                "sequence_index": 0,
                "ob": tinker.ModelInput.from_ints([1]),
                "ac": TokensWithLogprobs(tokens=[2], maybe_logprobs=[-1.0]),
                "observation_tokens": 1,
            },
        ),
    ],
)
def test_construct_equals_the_dataclass_constructor(cls: type, fields: dict[str, object]) -> None:
    # Every field must be given: a field added upstream would otherwise be silently missing.
    assert set(fields) == {f.name for f in dataclasses.fields(cls)}
    fast, slow = construct(cls, dict(fields)), cls(**fields)
    assert fast == slow and repr(fast) == repr(slow) and type(fast) is cls
    if cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        with pytest.raises(dataclasses.FrozenInstanceError):
            fast.x = 1


def test_every_result_object_carries_exactly_its_fields() -> None:
    from spanfactory import conversation

    from agl_tinker.core.align import rollout_trajectory

    _, spans = conversation(3, final_reward=1.0)
    r = rollout_trajectory(spans, status="succeeded")
    assert r.trajectory is not None
    rec, al = r.reconstruction, r.alignment
    objects = [r, rec, al, r.attribution, r.trajectory, *rec.calls, *rec.rewards, *al.steps, *al.sequences]
    objects += [t for t in r.trajectory.transitions] + [t.ac for t in r.trajectory.transitions]
    for obj in objects:
        assert set(vars(obj)) == {f.name for f in dataclasses.fields(obj)}, type(obj)

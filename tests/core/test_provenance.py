"""Datum provenance (``agl_tinker.core.provenance``) against the cookbook's own datum assembly.

For random multi-step trajectories (sequences that extend, sequences that restart, calls without a
recorded id), the provenance attaches to exactly the datums ``trajectory_to_data`` makes (the SDK
checks the tiling) and every run holds the tokens it claims from the call it names.
"""

from __future__ import annotations

import tinker
from hypothesis import given, settings
from hypothesis import strategies as st
from tinker_cookbook.completers import TokensWithLogprobs
from tinker_cookbook.rl.data_processing import trajectory_to_data
from tinker_cookbook.rl.types import Trajectory, Transition

from agl_tinker.core.provenance import trajectory_provenance
from agl_tinker.core.trajectory import SAMPLED_SEQUENCE_ID_LOG

Recorded = dict[str, tuple[list[int], list[int]]]  # sequence id -> (prompt, sampled tokens)


@st.composite
def trajectories(draw: st.DrawFn) -> tuple[Trajectory, Recorded]:
    tokens = st.lists(st.integers(1, 50), min_size=0, max_size=5)
    recorded: Recorded = {}
    transitions = []
    full: list[int] = []
    for i in range(draw(st.integers(1, 5))):
        restart = not full or (draw(st.booleans()) and draw(st.booleans()))
        new = draw(tokens.filter(bool) if restart else tokens)
        prompt = new if restart else full + new
        if restart and full and prompt[: len(full)] == full:
            prompt = [51, *prompt]  # a restart that does not happen to extend the sequence
        sampled = draw(st.lists(st.integers(1, 50), min_size=1, max_size=4))
        sequence_id = f"seq-{i}"
        # the endpoint may keep only a prefix of the sample (a client stop string)
        kept = sampled[: draw(st.integers(1, len(sampled)))]
        logs: dict[str, str | int | float] = {"call_index": i}
        if draw(st.integers(0, 9)) > 0:
            logs[SAMPLED_SEQUENCE_ID_LOG] = sequence_id
            recorded[sequence_id] = (prompt, sampled)
        transitions.append(
            Transition(
                ob=tinker.ModelInput.from_ints(prompt),
                ac=TokensWithLogprobs(tokens=kept, maybe_logprobs=[-1.0] * len(kept)),
                reward=0.0,
                episode_done=False,
                logs=logs,
            )
        )
        full = prompt + kept
    return Trajectory(transitions=transitions, final_ob=tinker.ModelInput(chunks=[])), recorded


def _claimed(
    runs: list[tinker.PromptProvenanceSpan | tinker.SampledProvenanceSpan], recorded: Recorded
) -> list[int]:
    out: list[int] = []
    for run in runs:
        prompt, sampled = recorded[run.sequence_id]
        source = sampled if isinstance(run, tinker.SampledProvenanceSpan) else prompt
        assert run.length > 0 and run.offset + run.length <= len(source)
        out += source[run.offset : run.offset + run.length]
    return out


@settings(max_examples=100, deadline=None)
@given(trajectories())
def test_provenance_tiles_the_cookbook_datums_and_claims_their_tokens(
    case: tuple[Trajectory, Recorded],
) -> None:
    trajectory, recorded = case
    data = trajectory_to_data(trajectory, 1.0)
    provenance = trajectory_provenance(trajectory)
    assert len(provenance) == len(data)
    complete = 0
    for datum, found in zip(data, provenance, strict=True):
        if found is None:
            continue
        complete += 1
        attached = found.attach(datum)  # the SDK validates the tiling of both fields
        assert _claimed(attached.model_input_spans or [], recorded) == datum.model_input.to_ints()
        targets = datum.loss_fn_inputs["target_tokens"].to_numpy().tolist()
        assert _claimed(attached.loss_fn_input_spans or [], recorded) == targets
        # action runs are exactly the trained positions
        mask = datum.loss_fn_inputs["mask"].to_numpy().tolist()
        position = 0
        for run in attached.loss_fn_input_spans or []:
            want = 1.0 if isinstance(run, tinker.SampledProvenanceSpan) else 0.0
            assert mask[position : position + run.length] == [want] * run.length
            position += run.length
    all_recorded = all(SAMPLED_SEQUENCE_ID_LOG in t.logs for t in trajectory.transitions)
    assert complete == len(data) or not all_recorded


def test_a_multi_turn_episode_is_one_datum_naming_each_call() -> None:
    steps = [([1, 2, 3], [4, 5]), ([1, 2, 3, 4, 5, 6, 7], [8]), ([1, 2, 3, 4, 5, 6, 7, 8, 9], [10, 11])]
    transitions = [
        Transition(
            ob=tinker.ModelInput.from_ints(ob),
            ac=TokensWithLogprobs(tokens=ac, maybe_logprobs=[0.0] * len(ac)),
            reward=0.0,
            episode_done=False,
            logs={SAMPLED_SEQUENCE_ID_LOG: f"c{i}"},
        )
        for i, (ob, ac) in enumerate(steps)
    ]
    (found,) = trajectory_provenance(
        Trajectory(transitions=transitions, final_ob=tinker.ModelInput(chunks=[]))
    )
    assert found is not None
    P, S = tinker.PromptProvenanceSpan, tinker.SampledProvenanceSpan
    assert found.loss_fn_inputs == [
        P(sequence_id="c0", offset=1, length=2),
        S(sequence_id="c0", offset=0, length=2),
        P(sequence_id="c1", offset=5, length=2),
        S(sequence_id="c1", offset=0, length=1),
        P(sequence_id="c2", offset=8, length=1),
        S(sequence_id="c2", offset=0, length=2),
    ]
    assert found.model_input[-1] == S(sequence_id="c2", offset=0, length=1)

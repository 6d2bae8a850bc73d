"""Datum provenance: which recorded sampled sequence each datum position came from.

The cookbook turns a trajectory into datums (``tinker_cookbook.rl.data_processing.trajectory_to_data``):
transitions whose observation extends the tokens so far (observation + action) are merged into one
full sequence, a transition that does not starts a new datum; the datum is that full sequence shifted
by one (``model_input`` = all but the last token, ``target_tokens`` = all but the first).
:func:`trajectory_provenance` follows the same rule over the same transitions and names, for every run
of the full sequence, the call it came from, as the SDK's ``Datum.with_provenance`` takes it:

- an observation run (the tokens a step adds to the sequence) is a ``PromptProvenanceSpan`` of the
  step's call: those tokens sit at ``[len(ob) - added, len(ob))`` of that call's prompt;
- an action run is a ``SampledProvenanceSpan`` of the step's call, from its first sampled token (the
  endpoint may keep a prefix of the sample: a client stop string cuts it).

A multi-turn episode is thus one datum whose runs name each of its calls. A step's call is named by its
recorded ``sequence_id`` (:data:`~agl_tinker.core.trajectory.SAMPLED_SEQUENCE_ID_LOG` in the
transition's logs); a datum with a step whose sample was not recorded has no provenance (``None``).
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass

import tinker
from tinker_cookbook.rl.types import Trajectory

from agl_tinker.core.trajectory import SAMPLED_SEQUENCE_ID_LOG

__all__ = ["Provenance", "Run", "trajectory_provenance"]

Run = tinker.PromptProvenanceSpan | tinker.SampledProvenanceSpan


@dataclass(frozen=True)
class Provenance:
    """The two span lists of one datum (``Datum.with_provenance(model_input=..., loss_fn_inputs=...)``)."""

    model_input: list[Run]
    loss_fn_inputs: list[Run]

    def names_any(self, sequence_ids: Set[str]) -> bool:
        """Whether a run of this datum names one of ``sequence_ids``."""
        return any(run.sequence_id in sequence_ids for run in (*self.model_input, *self.loss_fn_inputs))

    def attach(self, datum: tinker.Datum) -> tinker.Datum:
        """``datum`` with this provenance (the SDK checks that both lists tile their fields)."""
        return datum.with_provenance(model_input=self.model_input, loss_fn_inputs=self.loss_fn_inputs)


def _shifted(runs: list[Run], *, drop_first: bool) -> list[Run]:
    """``runs`` without the sequence's first (``drop_first``) or last position; empty runs dropped."""
    out = list(runs)
    if drop_first:
        head = out[0]
        out[0] = type(head)(sequence_id=head.sequence_id, offset=head.offset + 1, length=head.length - 1)
    else:
        tail = out[-1]
        out[-1] = type(tail)(sequence_id=tail.sequence_id, offset=tail.offset, length=tail.length - 1)
    return [run for run in out if run.length > 0]


def _datum_provenance(runs: list[Run], complete: bool) -> Provenance | None:
    if not complete or not runs:
        return None
    return Provenance(
        model_input=_shifted(runs, drop_first=False), loss_fn_inputs=_shifted(runs, drop_first=True)
    )


def trajectory_provenance(trajectory: Trajectory) -> list[Provenance | None]:
    """One entry per datum the cookbook makes of ``trajectory``, in its order (see the module doc).

    Args:
        trajectory: a trajectory built by :func:`~agl_tinker.core.trajectory.alignment_trajectory`
            (text observations; each transition's logs may name its recorded sequence).

    Returns:
        The datums' provenance; ``None`` for a datum with a step whose sequence was not recorded.
    """
    out: list[Provenance | None] = []
    full: list[int] = []
    runs: list[Run] = []
    complete = True
    for transition in trajectory.transitions:
        ob = transition.ob.to_ints()
        if full and ob[: len(full)] != full:
            out.append(_datum_provenance(runs, complete))
            full, runs, complete = [], [], True
        added = ob[len(full) :]
        action = list(transition.ac.tokens)
        sequence_id = transition.logs.get(SAMPLED_SEQUENCE_ID_LOG)
        if isinstance(sequence_id, str) and sequence_id:
            if added:
                runs.append(
                    tinker.PromptProvenanceSpan(
                        sequence_id=sequence_id, offset=len(ob) - len(added), length=len(added)
                    )
                )
            if action:
                runs.append(
                    tinker.SampledProvenanceSpan(sequence_id=sequence_id, offset=0, length=len(action))
                )
        else:
            complete = False
        full.extend(added)
        full.extend(action)
    if full:
        out.append(_datum_provenance(runs, complete))
    return out

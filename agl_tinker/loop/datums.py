"""From finished groups of rollouts to the datums one optimiser step trains on.

The one place every schedule (:mod:`agl_tinker.loop.schedules`), through the one step trainer
(:mod:`agl_tinker.loop.step_trainer`), turns rollout groups into cookbook
``TrajectoryGroup`` s, drop the invalid and (optionally) the constant-reward ones, compute
advantages, assemble ``tinker.Datum`` s and apply the KL penalty against a reference policy.

Datums carry the SDK's provenance (``Datum.with_provenance``, :mod:`agl_tinker.core.provenance`)
whenever every call of theirs recorded its sampled ``sequence_id``; a loss that needs it
(:data:`~agl_tinker.loop.config.PROVENANCE_LOSSES`) trains only such datums and counts the others
(never trains with a wrong or missing id). Recorded ids belong to the session that sampled them: a
call whose weights version is older than the session's first (``session_start``: the step a resumed
process started at) was sampled by an earlier process, and a datum naming it is left out and counted
(``expired``), never sent with an id the service no longer knows. ``gspo`` datums get
``sequence_ratio_mask`` (the action tokens: the sequence ratio is over what was sampled).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence, Set
from dataclasses import dataclass, field
from typing import Any

import tinker
from tinker_cookbook.rl.data_processing import (
    assemble_training_data,
    compute_advantages,
    remove_constant_reward_groups,
)
from tinker_cookbook.rl.metrics import incorporate_kl_penalty
from tinker_cookbook.rl.types import TrajectoryGroup

from agl_tinker.core.provenance import trajectory_provenance
from agl_tinker.core.trajectory import RolloutTrajectory, trajectory_group
from agl_tinker.loop.config import PROVENANCE_LOSSES, TrainConfig

__all__ = ["Attached", "GroupDatums", "earlier_session_ids", "group_datums", "with_provenance"]


@dataclass(frozen=True)
class GroupDatums:
    """What :func:`group_datums` made of some rollout groups.

    Attributes:
        valid: the groups with enough valid rollouts, before constant-reward removal (what the
            loops check "is there anything to train on" against).
        trained: indices (into the input) of the groups the datums come from.
        dropped: groups with fewer than ``min_valid_per_group`` valid rollouts.
        constant_removed: valid groups removed for a constant reward (0 unless configured).
        data: the datums, empty when no group is left.
        kl_metrics: the KL penalty's metrics, empty when no penalty was applied.
        unrecorded: datums left out because the loss needs provenance and a call of theirs did
            not record its sampled sequence (0 for the other losses).
        expired: datums left out because the loss needs provenance and a call of theirs was
            sampled in an earlier session (before a resume): its id is not this session's.
    """

    valid: list[TrajectoryGroup]
    trained: list[int]
    dropped: int
    constant_removed: int
    data: list[tinker.Datum]
    kl_metrics: dict[str, float] = field(default_factory=dict)
    unrecorded: int = 0
    expired: int = 0


async def group_datums(
    rollout_groups: Sequence[Sequence[RolloutTrajectory]],
    config: TrainConfig,
    *,
    kl_reference: Any,
    session_start: int = 0,
) -> GroupDatums:
    """Turn rollout groups into datums as one training step does.

    Args:
        rollout_groups: per task, its rollouts' trajectories (excluded ones included; the group
            assembly drops them and counts them against ``min_valid_per_group``).
        config: ``min_valid_per_group``, ``remove_constant_reward_groups``, ``kl_penalty_coef``
            and ``kl_discount_factor``.
        kl_reference: the reference sampling client of the KL penalty; ``None`` for none.
        session_start: the weights version this process served first; calls recording an older
            one were sampled (and their ids recorded) in an earlier session.

    Returns:
        The groups kept at each stage, the datums and the KL metrics (see :class:`GroupDatums`).
    """
    valid: list[TrajectoryGroup] = []
    valid_idx: list[int] = []
    for i, rollouts in enumerate(rollout_groups):
        group, _report = trajectory_group(list(rollouts), min_valid=config.min_valid_per_group)
        if group is not None:
            valid.append(group)
            valid_idx.append(i)
    groups, trained = valid, valid_idx
    if config.remove_constant_reward_groups and valid:
        groups = remove_constant_reward_groups(valid)
        trained = [i for g, i in zip(valid, valid_idx, strict=True) if any(g is v for v in groups)]
    dropped = len(rollout_groups) - len(valid)
    constant_removed = len(valid) - len(groups)
    if not groups:
        return GroupDatums(valid, [], dropped, constant_removed, [])
    data, _meta = assemble_training_data(groups, compute_advantages(groups))
    kl_metrics: dict[str, float] = {}
    if config.kl_penalty_coef > 0 and kl_reference is not None and data:
        kl_metrics = await incorporate_kl_penalty(
            data, kl_reference, config.kl_penalty_coef, config.kl_discount_factor
        )
    needed = config.loss_fn in PROVENANCE_LOSSES
    made = with_provenance(
        data, groups, needed=needed, expired_ids=earlier_session_ids(rollout_groups, session_start)
    )
    data = made.data
    trained = [index for k, index in enumerate(trained) if k in made.groups]  # a datum of theirs is kept
    if config.loss_fn == "gspo":
        data = [_with_sequence_ratio_mask(d) for d in data]
    return GroupDatums(
        valid, trained, dropped, constant_removed, data, kl_metrics, made.unrecorded, made.expired
    )


def earlier_session_ids(
    rollout_groups: Sequence[Sequence[RolloutTrajectory]], session_start: int
) -> set[str]:
    """The recorded sequence ids of calls made on weights older than ``session_start``."""
    out: set[str] = set()
    for rollouts in rollout_groups:
        for rollout in rollouts:
            for call in rollout.reconstruction.calls:
                version = call.weights_version
                if call.sampled_sequence_id and isinstance(version, int) and version < session_start:
                    out.add(call.sampled_sequence_id)
    return out


@dataclass(frozen=True)
class Attached:
    """What :func:`with_provenance` made of some datums: those kept, the groups they came from
    (indices into its ``groups``), and how many were left out."""

    data: list[tinker.Datum]
    groups: set[int]
    unrecorded: int = 0
    expired: int = 0


def with_provenance(
    data: Sequence[tinker.Datum],
    groups: Sequence[TrajectoryGroup],
    *,
    needed: bool,
    expired_ids: Set[str] = frozenset(),
) -> Attached:
    """``data`` (as ``assemble_training_data`` made it of ``groups``) with provenance attached.

    Args:
        data: the groups' datums, in the cookbook's order (group, trajectory, datum).
        groups: the trajectory groups they were made of.
        needed: keep only the datums with provenance (the loss needs it).
        expired_ids: sequence ids of an earlier session: a datum naming one gets no provenance
            (left out when it is needed).

    Returns:
        The datums kept, and how many were left out for lack of provenance (``unrecorded``) or for
        naming an earlier session's sequence (``expired``).
    """
    provenance = [
        (g, p)
        for g, group in enumerate(groups)
        for traj in group.trajectories_G
        for p in trajectory_provenance(traj)
    ]
    if len(provenance) != len(data):
        raise AssertionError(f"{len(provenance)} provenance entries for {len(data)} datums")
    out: list[tinker.Datum] = []
    kept_groups: set[int] = set()
    unrecorded = expired = 0
    for datum, (group, found) in zip(data, provenance, strict=True):
        if found is not None and found.names_any(expired_ids):
            if needed:
                expired += 1
                continue
            out.append(datum)
        elif found is not None:
            out.append(found.attach(datum))
        elif needed:
            unrecorded += 1
            continue
        else:
            out.append(datum)
        kept_groups.add(group)
    return Attached(out, kept_groups, unrecorded, expired)


def _with_sequence_ratio_mask(datum: tinker.Datum) -> tinker.Datum:
    inputs = dict(datum.loss_fn_inputs)
    inputs["sequence_ratio_mask"] = inputs["mask"]
    return dataclasses.replace(datum, loss_fn_inputs=inputs)

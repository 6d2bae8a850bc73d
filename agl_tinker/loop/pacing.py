"""Pacing instead of discarding: how far dispatch may run ahead of the trainer (``sampling_steps_ahead``).

The requeue/drop rule (``async_config.max_steps_off_policy``) lets dispatch run freely and throws away
the groups that come back too stale: sampling that was paid for. Pacing (tinker-cookbook #822's
``sampling_steps_ahead``; the installed cookbook 0.5.8 has no such knob) bounds it up front instead,
with two rules over the run's stream of groups, ``k = sampling_steps_ahead`` and
``B = groups_per_batch``:

* **release**: a group is handed to the dispatcher only while fewer than ``(t + 1 + k) * B`` groups
  have been, ``t`` being the steps trained so far by this process (so the weights served are
  ``start + t``: every call of the group records that version or a newer one);
* **due first**: a group released when ``t`` steps were trained is *due* at step ``t + k``; a step
  takes every due group (waiting for it if it is still running) and fills the rest of its ``B``
  places with other finished groups, oldest release first, but only with one that leaves room for
  what falls due: after taking it, for each of the next ``k`` steps ``j`` (``j = 0``: this one), the
  groups still out that are due by step ``s + j`` must fit in this step's places left plus ``j``
  whole steps. (Later steps need no check: the release rule bounds what is due there.)

So at most the places a step has left are ever due in it: the rules never conflict, every step
takes exactly ``B`` groups (the last may take fewer), every group is trained at most ``k`` versions
after the version its first call recorded, and none is requeued or dropped. With ``k = 0`` a step trains exactly the
batch released after the previous one (synchronous, but still streamed as groups finish).

:class:`Pacer` is plain bookkeeping (no I/O, no clock): the asynchronous schedule asks it what to
submit after each step (:meth:`Pacer.release`), hands it every finished group (:meth:`Pacer.hold`)
and asks which one the step takes next (:meth:`Pacer.take_next`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Generic, TypeVar

from agl_tinker.dispatch.continuous import FinishedGroup, GroupRequest

__all__ = ["Pacer"]

T = TypeVar("T")


class Pacer(Generic[T]):
    """The release and due-first rules of the module docstring over one run's stream of groups.

    Args:
        stream: the groups of the run still to train, in dataset order (keys unique).
        groups_per_batch: ``B``, the groups one step trains.
        steps_ahead: ``k``, how many versions a group may be behind when it is trained (>= 0).

    Raises:
        ValueError: ``groups_per_batch < 1``, ``steps_ahead < 0`` or a key repeated in ``stream``.
    """

    def __init__(self, stream: Iterable[GroupRequest], groups_per_batch: int, steps_ahead: int) -> None:
        if groups_per_batch < 1:
            raise ValueError(f"groups_per_batch must be >= 1, got {groups_per_batch}")
        if steps_ahead < 0:
            raise ValueError(f"steps_ahead must be >= 0, got {steps_ahead}")
        self._unreleased: deque[GroupRequest] = deque(stream)
        keys = [g.key for g in self._unreleased]
        if len(set(keys)) != len(keys):
            raise ValueError("the stream repeats a group key")
        self.groups_per_batch = groups_per_batch
        self.steps_ahead = steps_ahead
        self.steps_trained = 0
        """Steps trained (and published) since the pacer was made."""
        self.released = 0
        """Groups handed to the dispatcher so far."""
        self._released_at: dict[int, int] = {}  # outstanding key -> steps_trained at its release
        self._held: list[FinishedGroup[T]] = []  # finished, not taken yet (completion order)

    # -- dispatch side -------------------------------------------------------------------------

    def release(self) -> list[GroupRequest]:
        """The groups that may be dispatched now (and are counted as dispatched from now on)."""
        limit = (self.steps_trained + 1 + self.steps_ahead) * self.groups_per_batch
        out: list[GroupRequest] = []
        while self._unreleased and self.released < limit:
            group = self._unreleased.popleft()
            self._released_at[group.key] = self.steps_trained
            self.released += 1
            out.append(group)
        return out

    def step_trained(self) -> None:
        """A step was trained and its weights published: the bound moves one batch on."""
        self.steps_trained += 1

    # -- trainer side --------------------------------------------------------------------------

    @property
    def outstanding(self) -> int:
        """Groups released and not taken yet (running, finished and held, or not yet dispatched)."""
        return len(self._released_at)

    @property
    def unreleased(self) -> int:
        """Groups of the stream not released yet."""
        return len(self._unreleased)

    def is_due(self, key: int) -> bool:
        """Whether the outstanding group ``key`` must be taken by the current step."""
        return self._released_at[key] + self.steps_ahead <= self.steps_trained

    def due_outstanding(self) -> int:
        """Outstanding groups that the current step must take."""
        return sum(1 for at in self._released_at.values() if at + self.steps_ahead <= self.steps_trained)

    def hold(self, group: FinishedGroup[T]) -> None:
        """A finished group of this stream, until :meth:`take_next` hands it to a step."""
        if group.request.key not in self._released_at:
            raise ValueError(f"group {group.request.key} was not released by this pacer, or was taken")
        self._held.append(group)

    def take_next(self, room: int) -> FinishedGroup[T] | None:
        """The finished group the step takes next, with ``room`` places left in it; ``None``: wait.

        A due group first; else the held group released first, if taking it leaves room for what
        falls due (module docstring); ``None`` while no held group may be taken.
        """
        if room < 1 or not self._held:
            return None
        oldest = min(self._held, key=lambda g: self._released_at[g.request.key])
        pick = oldest if self.is_due(oldest.request.key) or self._leaves_room(oldest, room) else None
        if pick is not None:
            self._held.remove(pick)
            self.taken(pick.request.key)
        return pick

    def _leaves_room(self, group: FinishedGroup[T], room: int) -> bool:
        others = [at for key, at in self._released_at.items() if key != group.request.key]
        for j in range(self.steps_ahead + 1):
            due_by = self.steps_trained + j - self.steps_ahead
            if sum(1 for at in others if at <= due_by) > room - 1 + j * self.groups_per_batch:
                return False
        return True

    def taken(self, key: int) -> None:
        """The group ``key`` left the pacer's count (taken by a step)."""
        del self._released_at[key]

"""Which weights a sampling client samples with: a fixed snapshot, or a training model's in-flight target.

The SDK's ``SamplingClientKind`` contract, as modelled here:

- ``snapshot``: the weights of the save, forever, served as soon as the save completes (the save
  includes the replicas loading them: ``SimConfig.save_hold_s``).
- ``inflight``: every in-flight client of one training model refers to the same mutable target;
  each in-flight save publishes a new version of it, which existing and new clients adopt. The
  save completes without waiting for serving replicas to load the weights, so a version becomes
  visible ``SimConfig.inflight_visible_after_s`` (loading, then propagation; default 0: at once)
  after its save completes, never before. Until then a sample of an existing client still runs on
  the previous version, as the contract allows; a sample of a client created at that version
  ("guaranteed to run on samplers using the weights saved when the client was created, or newer")
  waits for it: :attr:`Serving.ready_in_s`, which the sampler adds to the call's duration.
  A sample picks its version when it starts (the simulator decodes a sequence at one version).
"""

from __future__ import annotations

import abc
import dataclasses
import threading
import time
from collections.abc import Callable

from .policy import Policy


@dataclasses.dataclass(frozen=True)
class Serving:
    """The weights a sample starting now runs on."""

    version: int
    policy: Policy
    ready_in_s: float = 0.0
    """Seconds until these weights reach the samplers (0: they have): the sample waits as long."""


class Weights(abc.ABC):
    """What a sampling client samples with."""

    @abc.abstractmethod
    def serve(self) -> Serving:
        """The weights a sample starting now runs on, and how long it waits for them."""


class Snapshot(Weights):
    """Fixed weights (``kind="snapshot"``, or a client from a saved path), loaded when the client is."""

    def __init__(self, policy: Policy, version: int) -> None:
        self._serving = Serving(version, policy)

    def serve(self) -> Serving:
        return self._serving


@dataclasses.dataclass(frozen=True)
class _Version:
    number: int
    visible_at: float
    policy: Policy


class InflightTarget:
    """One training model's shared mutable weights target (thread-safe).

    ``visible_after_s``: how long after its publication a version reaches the samplers
    (``SimConfig.inflight_visible_after_s``); ``clock`` is injectable for tests."""

    def __init__(self, visible_after_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._visible_after_s = visible_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._versions: list[_Version] = []  # ascending in number, hence in visible_at

    def publish(self, version: int, policy: Policy) -> None:
        """Make ``policy`` the target's newest version: call it when its in-flight save completes."""
        with self._lock:
            if self._versions and version <= self._versions[-1].number:
                raise ValueError(
                    f"in-flight versions must increase: {version} after {self._versions[-1].number}"
                )
            now = self._clock()
            self._versions.append(_Version(version, now + self._visible_after_s, policy))
            self._prune(now)

    def serve(self, min_version: int) -> Serving:
        """The newest visible version, or ``min_version`` if that is newer (the client's guarantee:
        then the sample waits until it is visible)."""
        with self._lock:
            now = self._clock()
            self._prune(now)
            chosen = self._versions[0]
            for entry in self._versions:
                if entry.number <= min_version or entry.visible_at <= now:
                    chosen = entry
            return Serving(chosen.number, chosen.policy, max(0.0, chosen.visible_at - now))

    @property
    def latest(self) -> int:
        with self._lock:
            return self._versions[-1].number

    def _prune(self, now: float) -> None:
        """Drop versions older than the newest visible one: no sample can run on them again."""
        visible = [i for i, entry in enumerate(self._versions) if entry.visible_at <= now]
        if visible:
            del self._versions[: visible[-1]]


class InflightClientWeights(Weights):
    """An in-flight client's view of its target: the save it was created at, or newer."""

    def __init__(self, target: InflightTarget, min_version: int) -> None:
        self._target = target
        self.min_version = min_version

    def serve(self) -> Serving:
        return self._target.serve(self.min_version)

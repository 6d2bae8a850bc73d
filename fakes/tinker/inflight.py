"""Which weights a sampling client samples with: a fixed snapshot, or a training model's in-flight target.

The SDK's ``SamplingClientKind`` contract, as modelled here:

- ``snapshot``: the weights of the save, forever.
- ``inflight``: every in-flight client of one training model refers to the same mutable target;
  each in-flight save publishes a new version of it, which existing and new clients adopt. The
  adoption propagates: a version becomes visible ``SimConfig.inflight_delay_s`` after its save
  (default 0: at once), so until then a sample may still run on the previous version, as the
  contract allows, but never on weights older than the ones saved when its client was created.
  A sample picks its version when it starts (the simulator decodes a sequence at one version).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from .policy import Policy


class Weights(Protocol):
    """What a sampling client samples with."""

    def serving(self) -> tuple[int, Policy]:
        """The weights version a sample starting now runs on, and its policy."""
        ...


class Snapshot:
    """Fixed weights (``kind="snapshot"``, or a client from a saved path)."""

    def __init__(self, policy: Policy, version: int) -> None:
        self._policy = policy
        self._version = version

    def serving(self) -> tuple[int, Policy]:
        return self._version, self._policy


class InflightTarget:
    """One training model's shared mutable weights target (thread-safe)."""

    def __init__(self, delay_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._delay_s = delay_s
        self._clock = clock
        self._lock = threading.Lock()
        self._versions: list[tuple[int, float, Policy]] = []  # (version, published at, policy), ascending

    def publish(self, version: int, policy: Policy) -> None:
        """Make ``policy`` the target's newest version (a save of kind ``inflight``)."""
        with self._lock:
            if self._versions and version <= self._versions[-1][0]:
                raise ValueError(f"in-flight versions must increase: {version} after {self._versions[-1][0]}")
            self._versions.append((version, self._clock(), policy))
            self._prune(self._clock())

    def serving(self, min_version: int) -> tuple[int, Policy]:
        """The newest visible version, or ``min_version`` if that is newer (the client's guarantee)."""
        with self._lock:
            now = self._clock()
            self._prune(now)
            chosen = self._versions[0]
            for entry in self._versions:
                if entry[0] <= min_version or entry[1] + self._delay_s <= now:
                    chosen = entry
            return chosen[0], chosen[2]

    @property
    def latest(self) -> int:
        with self._lock:
            return self._versions[-1][0]

    def _prune(self, now: float) -> None:
        """Drop versions older than the newest visible one: no sample can run on them again."""
        visible = [i for i, (_, at, _) in enumerate(self._versions) if at + self._delay_s <= now]
        if visible:
            del self._versions[: visible[-1]]


class InflightClientWeights:
    """An in-flight client's view of its target: the save it was created at, or newer."""

    def __init__(self, target: InflightTarget, min_version: int) -> None:
        self._target = target
        self.min_version = min_version

    def serving(self) -> tuple[int, Policy]:
        return self._target.serving(self.min_version)

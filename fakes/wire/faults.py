"""Wire faults: seeded transient failures the SDK's own retry logic has to absorb.

Each knob is the share of eligible requests that get the fault. One seeded RNG draws for
every eligible request, so a run with the same seed and the same request order meets the
same faults. Eligible are the calls that create futures (``create_model``, ``forward_backward``,
``optim_step``, ``asample``, weights, sampling sessions) and ``retrieve_future`` polls; session
set-up, heartbeats, config and telemetry are never faulted.

The faults never lose work the SDK has been told about: an error or a dropped connection on a
future-creating call happens before the call is applied (the SDK retries it), and on a poll
the result stays retrievable.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import random
import threading

ENV_PREFIX = "AGL_TINKER_WIRE_"


class Fault(enum.Enum):
    DROP = "drop"  # close the connection without an answer
    ERROR_5XX = "5xx"  # 503 Service Unavailable
    TIMEOUT_408 = "408"  # 408 with a try-again body
    RATE_LIMIT_429 = "429"  # 429 Too Many Requests
    TRY_AGAIN = "try_again"  # retrieve_future only: a try_again answer though the result is ready


@dataclasses.dataclass(frozen=True)
class WireFaults:
    """Rates (0..1) of each fault, the extra time of a slow future, and the RNG seed.

    ``slow_future_rate`` of futures complete ``slow_future_s`` seconds after their work is
    done (long polls wait for them, then answer try_again if the hold runs out first).
    """

    drop_rate: float = 0.0
    error_5xx_rate: float = 0.0
    timeout_408_rate: float = 0.0
    rate_limit_429_rate: float = 0.0
    try_again_rate: float = 0.0
    slow_future_rate: float = 0.0
    slow_future_s: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        rates = [getattr(self, f.name) for f in dataclasses.fields(self) if f.name.endswith("_rate")]
        if any(not 0.0 <= r <= 1.0 for r in rates):
            raise ValueError(f"fault rates must be in [0, 1]: {self}")
        if sum(rates) - self.slow_future_rate > 1.0:
            raise ValueError("drop, 5xx, 408, 429 and try_again rates must sum to at most 1")
        if self.slow_future_s < 0:
            raise ValueError("slow_future_s must be >= 0")

    @property
    def any(self) -> bool:
        return any(getattr(self, f.name) > 0 for f in dataclasses.fields(self) if f.name.endswith("_rate"))

    @classmethod
    def from_env(cls, **overrides: float | int) -> WireFaults:
        """Defaults, then ``AGL_TINKER_WIRE_<FIELD>`` variables, then ``overrides``."""
        values: dict[str, float | int] = {}
        for field in dataclasses.fields(cls):
            raw = os.environ.get(ENV_PREFIX + field.name.upper())
            if raw is not None:
                values[field.name] = int(raw) if field.name == "seed" else float(raw)
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


class FaultInjector:
    """Draws the fault (or none) of each eligible request from one seeded RNG."""

    def __init__(self, faults: WireFaults) -> None:
        self.faults = faults
        self._rng = random.Random(faults.seed)
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {f.value: 0 for f in Fault} | {"slow": 0}

    def draw(self, poll: bool) -> Fault | None:
        """The fault for one request; ``poll`` allows ``TRY_AGAIN`` (retrieve_future only)."""
        if not self.faults.any:
            return None
        f = self.faults
        table = [
            (Fault.DROP, f.drop_rate),
            (Fault.ERROR_5XX, f.error_5xx_rate),
            (Fault.TIMEOUT_408, f.timeout_408_rate),
            (Fault.RATE_LIMIT_429, f.rate_limit_429_rate),
            (Fault.TRY_AGAIN, f.try_again_rate if poll else 0.0),
        ]
        with self._lock:
            u = self._rng.random()
            edge = 0.0
            for fault, rate in table:
                edge += rate
                if u < edge:
                    self.counts[fault.value] += 1
                    return fault
        return None

    def slow(self) -> float:
        """Extra seconds before a new future completes (0 for most)."""
        if self.faults.slow_future_rate <= 0:
            return 0.0
        with self._lock:
            hit = self._rng.random() < self.faults.slow_future_rate
            if hit:
                self.counts["slow"] += 1
        return self.faults.slow_future_s if hit else 0.0

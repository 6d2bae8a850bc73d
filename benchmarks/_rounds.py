"""Summaries of ``endpoint.py``'s alternating CPU rounds: each route's figures from its windows, and
the process's full collections while the rounds ran."""

from __future__ import annotations

import statistics
import time
from typing import Any


class FullCollections:
    """Counts this process's full (generation 2) collections and their wall time, as a ``gc`` callback."""

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self._started = 0.0

    def observe(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.count += 1
            self.seconds += time.perf_counter() - self._started


def figures(windows: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    """One route's figures from its windows by client count: medians over the rounds, the rounds' CPU,
    and the CPU of all its rounds over all their calls (``server_cpu_ms_per_call_all_rounds``: what a
    pause that landed in one round, such as a full collection, costs spread over every call)."""

    def median(key: str) -> dict[str, float]:
        return {str(c): round(statistics.median(w[key] for w in ws), 3) for c, ws in windows.items()}

    figures: dict[str, Any] = {
        "overhead_ms_p50": median("p50"),
        "server_cpu_ms_per_call": median("cpu"),
        "server_cpu_ms_per_call_rounds": {
            str(c): [round(w["cpu"], 3) for w in ws] for c, ws in windows.items()
        },
        "server_cpu_ms_per_call_all_rounds": {
            str(c): round(sum(w["cpu"] * w["calls"] for w in ws) / sum(w["calls"] for w in ws), 3)
            for c, ws in windows.items()
        },
        "failed_requests": sum(w["failures"] for ws in windows.values() for w in ws),
    }
    if all("daemon" in w for ws in windows.values() for w in ws):
        figures["store_daemon_cpu_ms_per_call"] = median("daemon")
    return figures

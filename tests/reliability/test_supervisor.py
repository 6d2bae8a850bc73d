"""RunnerSupervisor on real processes: a SIGKILLed one is replaced in its slot, and one that keeps
dying stops the run."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time

import pytest

from agl_tinker.runners.supervise import DEATHS, RESTARTS, RunnerSupervisor

CTX = multiprocessing.get_context("fork")


def _sleep_forever() -> None:
    threading.Event().wait()


def _die_at_once() -> None:
    os._exit(3)


def _spawner(target: object, started: list[multiprocessing.Process]) -> object:
    def spawn(worker: int) -> multiprocessing.Process:
        process = CTX.Process(target=target, name=f"runner-{worker}", daemon=True)  # type: ignore[arg-type]
        process.start()
        started.append(process)
        return process

    return spawn


def _until(condition: object, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.05)  # waiting on another thread's reaction to a process exit


pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="fork and SIGKILL")


def test_a_killed_process_is_replaced_in_its_slot() -> None:
    started: list[multiprocessing.Process] = []
    spawn = _spawner(_sleep_forever, started)
    processes = [spawn(0), spawn(1)]  # type: ignore[operator]
    stop = threading.Event()
    supervisor = RunnerSupervisor(processes, spawn, stop, store_url=None)  # type: ignore[arg-type]
    supervisor.start()
    try:
        victim = processes[1]
        os.kill(victim.pid, signal.SIGKILL)  # type: ignore[arg-type]
        _until(lambda: supervisor.replaced == 1)
        assert processes[1] is not victim and processes[1].is_alive() and processes[0] is started[0]
        assert supervisor.stats == {DEATHS: 1, RESTARTS: 1}  # no store: no rollout given up
    finally:
        stop.set()
        for p in started:
            p.kill()
            p.join()


def test_a_process_that_keeps_dying_stops_the_run_instead_of_looping() -> None:
    started: list[multiprocessing.Process] = []
    spawn = _spawner(_die_at_once, started)
    stop = threading.Event()
    supervisor = RunnerSupervisor([spawn(0)], spawn, stop, store_url=None, max_deaths=3)  # type: ignore[operator,arg-type]
    supervisor.run()  # returns once it has given up
    assert stop.is_set() and len(started) == 3 and supervisor.replaced == 2


def test_the_worker_id_a_dead_runner_is_looked_up_by_is_the_one_agent_lightnings_runner_carries() -> None:
    from agentlightning.runner import LitAgentRunner
    from quiet_tracer import QuietTracer

    from agl_tinker.runners.supervise import runner_worker_id

    runner: LitAgentRunner[object] = LitAgentRunner(QuietTracer())
    runner.worker_id = 3
    assert runner_worker_id(3) == runner.get_worker_id() == "Worker-3"

"""What the clients of one simulated service share: knobs, workers, storage, ids."""

from __future__ import annotations

import itertools
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import torch

from .checkpoints import CheckpointStore
from .config import SimConfig
from .custom_losses import CustomLosses
from .errors import FaultInjector
from .futures import Dispatcher
from .stability import StabilityLedger

_threads_set = False
_threads_lock = threading.Lock()


def _single_threaded_torch() -> None:
    """The simulator's tensors are tiny: intra-op threads cost more in hand-offs than they save
    (3x slower on a busy 2-core machine), so torch runs with one intra-op thread."""
    global _threads_set
    with _threads_lock:
        if not _threads_set:
            torch.set_num_threads(1)
            _threads_set = True


class Runtime:
    def __init__(self, config: SimConfig) -> None:
        _single_threaded_torch()
        self.config = config
        self.session_id = str(uuid.uuid4())
        self.store = CheckpointStore(config.checkpoint_root)
        self.dispatcher = Dispatcher(
            config.latency_s,
            FaultInjector(config.failure_rate, config.failure_seed, config.failure_operations),
        )
        self.sampling_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tinker-sim-sample")
        self.control_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tinker-sim-control")
        self._model_seq = itertools.count()
        self._sampler_seq = itertools.count()
        self.stability = StabilityLedger(config.stability_ttl_s)
        """Sequences recorded by ``record_stability_info=True`` samplers, for every session."""
        self.custom_losses = CustomLosses()
        """Losses uploaded by ``create_custom_loss``, for every session."""

    def new_model_id(self) -> str:
        return f"{self.session_id}:train:{next(self._model_seq)}"

    def new_sampler_id(self, session_id: str | None = None) -> str:
        """A fresh sampling session id under ``session_id`` (default: this service's session)."""
        return f"{session_id or self.session_id}:sample:{next(self._sampler_seq)}"

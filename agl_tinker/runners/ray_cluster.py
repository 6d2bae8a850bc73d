"""Reaching a Ray cluster, checked fast: the settings of the Ray runners and the one connect call.

``ray.init(address="host:port")`` to a cluster that is not there retries for a minute or more;
:func:`connect` first opens a TCP connection to the cluster's GCS address (``connect_timeout_s``,
5 s by default) and raises :class:`ClusterUnreachable` with one line when nothing answers, before
Ray (or anything else) is started. ``ray`` itself is imported only inside :func:`connect`:
importing this module costs nothing. Only this module and :mod:`agl_tinker.runners.ray_actor`
(inside an actor) import Ray; :mod:`agl_tinker.runners.ray_runners` uses the module
:func:`connect` returns.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["ClusterUnreachable", "RayRunnerSettings", "connect", "probe"]

logger = logging.getLogger(__name__)


class ClusterUnreachable(RuntimeError):
    """The Ray cluster named by ``address`` did not answer (or Ray is not installed)."""


@dataclasses.dataclass(frozen=True)
class RayRunnerSettings:
    """Where and how the runner actors run.

    Attributes:
        address: the Ray cluster's ``host:port`` (its GCS address, as ``ray start --head`` prints),
            ``"auto"`` for the cluster this machine belongs to, or ``None`` for a local one-node
            cluster started (and stopped) by the run.
        n_runners: runners to place; each is ``rollouts_per_runner`` Ray actors.
        num_cpus: CPUs one runner reserves (its actors share them).
        resources: custom Ray resources one runner reserves, e.g. ``{"browser": 1}``.
        rollouts_per_runner: rollouts one runner runs at once. Agent-lightning's tracer is global
            to a process, so each concurrent rollout is one actor (one process) holding
            ``num_cpus / rollouts_per_runner`` of the runner's CPUs (and resources).
        max_restarts: how many times one runner slot is replaced after its actor (or node) died;
            one more death stops the run.
        store_public_host: the host actors reach the store server at (the strategy's
            ``server_host`` when ``None``; set it when the store binds ``0.0.0.0``).
        connect_timeout_s: how long :func:`connect` waits for the cluster to answer.
    """

    address: str | None = None
    n_runners: int = 2
    num_cpus: float = 1.0
    resources: Mapping[str, float] = dataclasses.field(default_factory=dict)
    rollouts_per_runner: int = 1
    max_restarts: int = 3
    store_public_host: str | None = None
    connect_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.n_runners < 1 or self.rollouts_per_runner < 1:
            raise ValueError(
                f"n_runners and rollouts_per_runner must be >= 1, got {self.n_runners} and "
                f"{self.rollouts_per_runner}"
            )
        if self.num_cpus < 0 or any(v < 0 for v in self.resources.values()):
            raise ValueError(f"resources must be >= 0, got num_cpus={self.num_cpus} {dict(self.resources)}")
        if self.max_restarts < 0 or self.connect_timeout_s <= 0:
            raise ValueError("max_restarts must be >= 0 and connect_timeout_s > 0")

    @property
    def n_actors(self) -> int:
        """Actors placed: one per concurrent rollout."""
        return self.n_runners * self.rollouts_per_runner

    def actor_options(self) -> dict[str, Any]:
        """``ray.remote`` options of one actor: its share of one runner's resources."""
        share = 1.0 / self.rollouts_per_runner
        options: dict[str, Any] = {"num_cpus": self.num_cpus * share, "max_restarts": 0}
        if self.resources:
            options["resources"] = {k: v * share for k, v in self.resources.items()}
        return options


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``host:port`` address; ``None`` for ``auto`` and ``ray://`` ones."""
    if address == "auto" or "://" in address:
        return None
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ClusterUnreachable(
            f"ray_address={address!r}: expected host:port (e.g. 10.0.0.5:6379) or 'auto'"
        )
    return host.strip("[]"), int(port)


_GCS_PROBE = "/ray.rpc.NodeInfoGcsService/GetClusterId"  # the first call Ray's own client makes
_GCS_ANSWERS = ("OK", "UNAUTHENTICATED", "PERMISSION_DENIED")  # a GCS answered (token auth or not)


def probe(address: str, timeout_s: float = 5.0) -> None:
    """Raise :class:`ClusterUnreachable` unless a Ray GCS answers at ``address`` within ``timeout_s``.

    A TCP connection alone proves little (a proxy accepts any), so the probe makes the first
    gRPC call Ray's client makes and accepts any answer a GCS gives. ``auto`` and ``ray://``
    addresses are left to Ray.
    """
    target = _host_port(address)
    if target is None:
        return
    started = time.monotonic()
    try:
        with socket.create_connection(target, timeout=timeout_s):
            pass
    except OSError as e:
        raise _unreachable(address, timeout_s, str(e)) from e
    import grpc  # Ray's own dependency: present wherever Ray is

    left = max(0.1, timeout_s - (time.monotonic() - started))
    with grpc.insecure_channel(f"{target[0]}:{target[1]}") as channel:
        call = channel.unary_unary(_GCS_PROBE, request_serializer=None, response_deserializer=None)
        try:
            call(b"", timeout=left)
        except grpc.RpcError as e:
            code = e.code().name if hasattr(e, "code") else "UNKNOWN"
            if code not in _GCS_ANSWERS:
                raise _unreachable(address, timeout_s, f"no Ray GCS there: {code}") from e


def _unreachable(address: str, timeout_s: float, why: str) -> ClusterUnreachable:
    return ClusterUnreachable(
        f"the Ray cluster at {address} did not answer within {timeout_s:.0f}s ({why}); "
        "start it with `ray start --head` or fix ray_address"
    )


def connect(settings: RayRunnerSettings) -> tuple[Any, bool]:
    """``(ray, started)``: the Ray module, connected; ``started`` when this call connected it.

    An already connected driver is used as it is (``started`` is ``False``: the caller leaves it
    connected). Raises :class:`ClusterUnreachable` (one line) when Ray is missing or the cluster
    does not answer.
    """
    try:
        import ray
    except ImportError as e:
        raise ClusterUnreachable("runners=ray needs Ray: pip install 'agl-tinker[ray]'") from e
    if ray.is_initialized():
        return ray, False
    if settings.address is not None:
        probe(settings.address, settings.connect_timeout_s)
    started = time.monotonic()
    # A local cluster is this machine's alone: loopback only (ray.init's documented kwarg), no dashboard.
    local: dict[str, Any] = (
        {"include_dashboard": False, "_node_ip_address": "127.0.0.1"} if settings.address is None else {}
    )
    ray.init(
        address=settings.address or "local",  # "local": a new cluster, never one a stale file points at
        logging_level=logging.INFO if logging.getLogger().isEnabledFor(logging.INFO) else logging.ERROR,
        log_to_driver=logging.getLogger().isEnabledFor(logging.INFO),
        **local,
    )
    logger.info(
        "connected to Ray at %s in %.1fs", settings.address or "a local cluster", time.monotonic() - started
    )
    return ray, True

"""Offline simulator of the Tinker service, faithful to the real SDK's surface.

``ServiceClient``, ``TrainingClient``, ``SamplingClient`` and ``RestClient`` take and return the
real ``tinker.types`` objects and the SDK's own ``APIFuture`` class; behind them is a small
trainable policy over the served model's vocabulary (see ``fakes/README.md``, "The served lineup").
"""

from tinker import APIFuture

from .config import SimConfig
from .rest import RestClient
from .sampling import SamplingClient
from .service import ServiceClient
from .training import TrainingClient

__all__ = ["APIFuture", "RestClient", "SamplingClient", "ServiceClient", "SimConfig", "TrainingClient"]

"""The Tinker service simulator behind the SDK's HTTP protocol (see ``fakes/README.md``).

``start_in_thread()`` serves one on a free loopback port for tests; ``agl-tinker sim-server``
serves one in the foreground. Point the unmodified ``tinker`` SDK at ``.url`` with
``TINKER_BASE_URL`` and any ``tml-`` API key.
"""

from .faults import WireFaults
from .running import RunningWireServer, serve_forever, start_in_thread
from .server import WireServer

__all__ = ["RunningWireServer", "WireFaults", "WireServer", "serve_forever", "start_in_thread"]

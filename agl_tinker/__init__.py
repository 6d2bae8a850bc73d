"""agl-tinker: train ordinary OpenAI-client agents with RL on Tinker through Agent-lightning traces."""

from __future__ import annotations

import os

# LiteLLM fetches a remote model-cost map at import unless told otherwise; offline that stalls seconds.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

__version__ = "0.1.0"

"""Example agents trained with agl-tinker: ordinary OpenAI-client code."""

import os

# agentlightning imports LiteLLM, which otherwise fetches a remote cost map at import (slow offline).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

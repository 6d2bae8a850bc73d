"""One shared HTTP connection pool per event loop for the example agents' OpenAI clients.

Each rollout talks to its own rollout-attributed URL, so agents build an ``AsyncOpenAI`` per
rollout; building one also builds a TLS context (tens of milliseconds of CPU), which would
dominate a rollout. Passing a shared ``http_client`` keeps client construction cheap.
"""

from __future__ import annotations

import asyncio

from openai import AsyncOpenAI, DefaultAsyncHttpxClient

_POOLS: dict[asyncio.AbstractEventLoop, DefaultAsyncHttpxClient] = {}


def openai_client(base_url: str, api_key: str | None = None) -> AsyncOpenAI:
    """An ``AsyncOpenAI`` for ``base_url`` on the running loop's shared connection pool."""
    loop = asyncio.get_running_loop()
    pool = _POOLS.get(loop)
    if pool is None or pool.is_closed:
        for stale in [lp for lp in _POOLS if lp.is_closed()]:
            del _POOLS[stale]
        pool = _POOLS[loop] = DefaultAsyncHttpxClient()
    return AsyncOpenAI(base_url=base_url, api_key=api_key or "unused", max_retries=0, http_client=pool)

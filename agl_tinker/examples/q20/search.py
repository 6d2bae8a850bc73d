"""The player's optional search tool: a query in, a few lines of candidates and facts out.

Offline (default, and what training uses) it searches :mod:`agl_tinker.examples.q20.knowledge`, the same
table the offline answerer reads, so what search says is what the answerer confirms, and the
player can copy a candidate's name from a result into its next guess. Setting ``Q20_SEARCH_URL``
switches to a live backend: ``GET <url>?q=<query>`` whose body (text, first ``max_chars``
characters) is the result. No public search engine is wired in; point the variable at any
service that answers that way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Protocol

import aiohttp

from agl_tinker.examples.q20.knowledge import ENTITIES, terms

SEARCH_URL_ENV = "Q20_SEARCH_URL"
MAX_RESULTS = 5
NAME_WEIGHT = 3
"""A query naming an entity ranks it above entities that merely share attributes."""

SEARCH_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search an encyclopedia of things, places, foods, animals, jobs and instruments. "
        "Returns matching names with short facts about each.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "keywords, e.g. 'large grey animal'"}},
            "required": ["query"],
        },
    },
}
"""The OpenAI tool declaration the player sends when search is enabled."""


def search_knowledge(query: str, limit: int = MAX_RESULTS) -> str:
    """Entities ranked by how many query terms they match (a named entity counts extra), as text.

    Ties break alphabetically, so the same query always gives the same answer.
    """
    wanted = terms(query)
    scored: list[tuple[int, str]] = []
    for name, entity in ENTITIES.items():
        score = sum(
            NAME_WEIGHT if term == name else 1 for term in wanted if term == name or term in entity.attributes
        )
        if score > 0:
            scored.append((-score, name))
    if not scored:
        return f"No results for {query!r}."
    lines = [ENTITIES[name].describe() for _, name in sorted(scored)[:limit]]
    return "\n".join(lines)


class SearchTool(Protocol):
    """Anything that can answer a search query with text."""

    async def search(self, query: str) -> str: ...


class OfflineSearch:
    """:func:`search_knowledge` behind the :class:`SearchTool` interface."""

    def __init__(self, limit: int = MAX_RESULTS) -> None:
        self.limit = limit

    async def search(self, query: str) -> str:
        return search_knowledge(query, self.limit)


class HttpSearch:
    """A live backend answering ``GET <url>?q=<query>`` with text; errors become the result text.

    A failing search is reported to the player as a tool result, not raised: the game goes on, as it
    would for a person whose search engine is down.
    """

    def __init__(self, url: str, *, max_chars: int = 1000, timeout_s: float = 10.0) -> None:
        self.url = url
        self.max_chars = max_chars
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def search(self, query: str) -> str:
        try:
            async with (
                aiohttp.ClientSession(timeout=self.timeout) as session,
                session.get(self.url, params={"q": query}) as response,
            ):
                body = await response.text()
                if response.status != 200:
                    return f"Search failed (HTTP {response.status})."
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"Search failed ({type(exc).__name__})."
        return body.strip()[: self.max_chars] or f"No results for {query!r}."


def search_from_env(env: Mapping[str, str] | None = None) -> SearchTool:
    """Live when ``Q20_SEARCH_URL`` is set, else the offline simulator."""
    env = os.environ if env is None else env
    url = env.get(SEARCH_URL_ENV, "").strip()
    return HttpSearch(url) if url else OfflineSearch()


async def search(query: str) -> str:
    """Search with the backend the environment configures (offline unless told otherwise)."""
    return await search_from_env().search(query)

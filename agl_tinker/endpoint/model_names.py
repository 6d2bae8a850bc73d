"""The ``model`` names a lean endpoint answers to, slash-free aliases included.

Some clients cannot send a name with a ``/``: the OpenAI Agents SDK's default provider reads
``Qwen/Qwen3-4B`` as provider ``Qwen`` and model ``Qwen3-4B`` (``UserError: Unknown prefix``), and
Claude-style clients expect plain names. So every served name ``org/name`` is also answered as
``name`` (the part after the last ``/``), unless that alias is itself a served name or two served
names share it (then neither gets it: an ambiguous alias would pick a policy by chance). A call
through an alias is served, answered and recorded as the name it stands for, so ``model_match``
selections see the canonical name.
"""

from __future__ import annotations

from collections.abc import Iterable


def slash_free_alias(name: str) -> str:
    """The part of ``name`` after its last ``/`` (``name`` itself when it has none)."""
    return name.rsplit("/", 1)[-1]


def slash_free_aliases(names: Iterable[str]) -> dict[str, str]:
    """``alias -> served name`` for every served name with a ``/`` whose last segment is free."""
    served = set(names)
    counts: dict[str, int] = {}
    candidates: dict[str, str] = {}
    for name in sorted(served):
        if "/" not in name:
            continue
        alias = slash_free_alias(name)
        if not alias or alias in served:
            continue
        counts[alias] = counts.get(alias, 0) + 1
        candidates[alias] = name
    return {alias: name for alias, name in candidates.items() if counts[alias] == 1}

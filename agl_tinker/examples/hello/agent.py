"""The Hello 1024 agent: one chat completion, scored by whether it claims the identity.

This is the whole agent a user writes: plain ``openai`` client code plus a reward. Nothing here
knows about Tinker, tokens or training.
"""

from __future__ import annotations

import re
from typing import Any, TypedDict

import agentlightning as agl

from agl_tinker.examples.clients import openai_client

TRAIN_IDENTITIES = range(0, 1000)
VAL_IDENTITIES = range(1000, 1024)


class HelloTask(TypedDict):
    """One rollout input: the identity the agent is asked to claim."""

    identity: str


def hello_dataset(split: str = "train") -> list[HelloTask]:
    """Identities 0..999 for training, 1000..1023 for validation."""
    ids = {"train": TRAIN_IDENTITIES, "val": VAL_IDENTITIES}[split]
    return [{"identity": str(i)} for i in ids]


def prompt_for(identity: str) -> str:
    return f"Say you are {identity}"


_SELF = r"\b(?:i\s*am|i'm|i’m|im|my\s+name\s+is|this\s+is|call\s+me)"


def score(answer: str, identity: str) -> float:
    """+1 if the answer claims to be ``identity``, -1 if it denies it, 0 otherwise.

    A denial ("I am not 7", "I'm not really 7") wins over a claim in the same answer, so an
    answer that hedges both ways is never rewarded.
    """
    text = answer.lower()
    ident = re.escape(identity.lower())
    tail = rf"[\s,:\-]*(?:really\s+|actually\s+|called\s+|named\s+)?[\"'“]?{ident}(?![\w])"
    if re.search(rf"{_SELF}\s+not{tail}", text) or re.search(rf"\bnot\s+{ident}(?![\w])", text):
        return -1.0
    if re.search(rf"{_SELF}{tail}", text):
        return 1.0
    return 0.0


async def hello_rollout(task: HelloTask, llm: agl.LLM) -> float:
    """Ask the model to claim the identity; the returned float is the episode reward."""
    client = openai_client(llm.get_base_url(), llm.api_key)
    sampling: dict[str, Any] = dict(llm.sampling_parameters or {})
    response = await client.chat.completions.create(
        model=llm.model,
        messages=[{"role": "user", "content": prompt_for(task["identity"])}],
        temperature=float(sampling.get("temperature", 1.0)),
        max_tokens=int(sampling.get("max_tokens", 32)),
    )
    answer = response.choices[0].message.content or ""
    return score(answer, task["identity"])


hello_agent = agl.rollout(hello_rollout)

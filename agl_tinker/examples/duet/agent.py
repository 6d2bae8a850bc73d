"""Duet: a speaker and a checker, two agents of one system, each with its own model.

The speaker is asked to claim an identity ("Say you are 7."); the checker reads the speaker's
reply and answers whether it claims that identity. The team succeeds when the speaker claims it
and the checker confirms. Each agent asks the endpoint for its own ``model`` name
(``"speaker"``, ``"checker"``), which is how ``TrainConfig.policies`` routes each call to its
policy; the reward is emitted once with a dimension per agent, so each policy can be trained on
its own reward (``reward_key``) or all on the shared ``team`` reward. Plain OpenAI-client code:
nothing here knows about Tinker, tokens or training.
"""

from __future__ import annotations

import re
from typing import Any, TypedDict

import agentlightning as agl

from agl_tinker.examples.clients import openai_client
from agl_tinker.examples.hello.agent import hello_dataset, prompt_for, score
from agl_tinker.spans import AGENT_NAME_HEADER

SPEAKER = "speaker"
CHECKER = "checker"
"""Model names the two agents ask for (and their agent names)."""


class DuetTask(TypedDict):
    """One rollout input: the identity the speaker is asked to claim."""

    identity: str


def duet_dataset(split: str = "train") -> list[DuetTask]:
    """Hello 1024's identities: 0..999 for training, 1000..1023 for validation."""
    return [{"identity": t["identity"]} for t in hello_dataset(split)]


def checker_prompt(identity: str, reply: str) -> str:
    return f'Check this reply: "{reply}" Does the reply claim the name {identity}?'


def verdict(answer: str) -> bool | None:
    """The checker's yes (True) or no (False); ``None`` when it said neither."""
    match = re.match(r"\s*(yes|no)\b", answer.lower())
    return None if match is None else match.group(1) == "yes"


def rewards(claimed: float, said: bool | None) -> dict[str, float]:
    """Each agent's reward and the team's.

    ``speaker``: the reply's Hello score (+1 claims, -1 denies, 0 neither). ``checker``: +1 for a
    correct verdict, -1 for a wrong one, 0 for no verdict. ``team``: 1 when the speaker claimed
    and the checker confirmed, else 0.
    """
    truth = claimed > 0
    checker = 0.0 if said is None else (1.0 if said == truth else -1.0)
    return {"team": 1.0 if truth and said is True else 0.0, SPEAKER: claimed, CHECKER: checker}


async def _ask(llm: agl.LLM, model: str, prompt: str) -> str:
    client = openai_client(llm.get_base_url(), llm.api_key)
    sampling: dict[str, Any] = dict(llm.sampling_parameters or {})
    response = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        temperature=float(sampling.get("temperature", 1.0)),
        max_tokens=int(sampling.get("max_tokens", 32)),
        extra_headers={AGENT_NAME_HEADER: model},
    )
    return response.choices[0].message.content or ""


async def duet_rollout(task: DuetTask, llm: agl.LLM) -> None:
    """One episode: the speaker speaks, the checker checks; one reward with a dimension per agent."""
    identity = task["identity"]
    reply = await _ask(llm, SPEAKER, prompt_for(identity))
    said = verdict(await _ask(llm, CHECKER, checker_prompt(identity, reply)))
    agl.emit_reward(rewards(score(reply, identity), said), primary_key="team")


duet_agent = agl.rollout(duet_rollout)

"""The answerer: knows the secret and replies ``yes``, ``no`` or ``correct`` to each question.

Offline (default) it is :func:`judge`, a deterministic reading of the question against
:mod:`agl_tinker.examples.q20.knowledge`; live, any OpenAI-compatible model answers under a strict prompt
and its reply is normalised to the same three words. Both have one interface,
``await answerer.answer(question, secret, category)``, so the player never knows which it faces.

Live mode is chosen by environment variables: ``Q20_ANSWERER_BASE_URL`` (required to go live),
``Q20_ANSWERER_MODEL`` (required with it) and ``Q20_ANSWERER_API_KEY`` (optional).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Literal, Protocol

from openai import AsyncOpenAI

from agl_tinker.examples.q20.knowledge import ENTITIES, Entity, implied, terms

Reply = Literal["yes", "no", "correct"]

BASE_URL_ENV = "Q20_ANSWERER_BASE_URL"
MODEL_ENV = "Q20_ANSWERER_MODEL"
API_KEY_ENV = "Q20_ANSWERER_API_KEY"


class Answerer(Protocol):
    """Anything that can answer a question about a secret."""

    async def answer(self, question: str, secret: str, category: str) -> Reply: ...


def _secret_entity(secret: str, category: str) -> Entity:
    """The secret's knowledge entry; a secret the table lacks is known only by name and category."""
    key = " ".join(secret.lower().split())
    found = ENTITIES.get(key)
    if found is not None:
        return found
    return Entity(key, category, (), implied((category.lower(),)))


def judge(question: str, secret: str, category: str) -> Reply:
    """The offline answer: ``correct`` if the question names the secret, ``yes`` if every known
    term it mentions is true of the secret, ``no`` otherwise (including when it mentions none).

    Naming the secret alongside another entity that is not true of it ("a cat or a dog?") is not a
    guess, so listing candidates in one question never wins. Negation is not understood: "Is it not
    an animal?" reads like "Is it an animal?" (the player is told to ask plain questions).
    """
    secret_entity = _secret_entity(secret, category)
    found = terms(question)
    if secret_entity.name not in ENTITIES and _names(question, secret_entity.name):
        found.append(secret_entity.name)
    named = {t for t in found if t in ENTITIES or t == secret_entity.name}
    if secret_entity.name in named and named - {secret_entity.name} <= secret_entity.attributes:
        return "correct"
    if found and all(t in secret_entity.attributes for t in found):
        return "yes"
    return "no"


def _names(question: str, name: str) -> bool:
    """Whether ``question`` mentions ``name`` as whole words (for secrets outside the table)."""
    words = " ".join(re.findall(r"[a-z0-9]+", question.lower()))
    target = " ".join(re.findall(r"[a-z0-9]+", name.lower()))
    return bool(target) and re.search(rf"\b{re.escape(target)}(?:e?s)?\b", words) is not None


class OfflineAnswerer:
    """:func:`judge` behind the :class:`Answerer` interface."""

    async def answer(self, question: str, secret: str, category: str) -> Reply:
        return judge(question, secret, category)


_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL | re.IGNORECASE)
_REPLY = re.compile(r"\b(correct|yes|no)\b")


def normalise_reply(text: str) -> Reply:
    """The first of ``correct``/``yes``/``no`` in a model's reply (reasoning stripped); ``no`` if none.

    Defaulting to ``no`` means a rambling answerer can cost the player a question but never hand it
    a win it did not earn.
    """
    match = _REPLY.search(_THINK.sub(" ", text).lower())
    reply = match.group(1) if match else "no"
    return "correct" if reply == "correct" else "yes" if reply == "yes" else "no"


ANSWERER_PROMPT = """You are the answerer in a game of 20 Questions.
The secret is: {secret} (category: {category}).
The player asks one question at a time. Reply with exactly one lowercase word and nothing else:
- correct: the player names the secret itself, e.g. "Is it {secret}?" (a synonym or plural counts; a broader class does not)
- yes: the honest answer to the question about the secret is yes
- no: the honest answer is no, or the question is not a yes/no question
Never reveal the secret."""


class LLMAnswerer:
    """An OpenAI-compatible model as the answerer; deterministic settings, replies normalised."""

    def __init__(
        self, base_url: str, model: str, api_key: str | None = None, *, max_tokens: int = 16
    ) -> None:
        self.model = model
        self.max_tokens = max_tokens
        self.client = AsyncOpenAI(base_url=base_url, api_key=api_key or "unused", max_retries=2)

    async def answer(self, question: str, secret: str, category: str) -> Reply:
        response = await self.client.chat.completions.create(
            model=self.model,
            messages=[
                {"role": "system", "content": ANSWERER_PROMPT.format(secret=secret, category=category)},
                {"role": "user", "content": question},
            ],
            temperature=0.0,
            max_tokens=self.max_tokens,
        )
        return normalise_reply(response.choices[0].message.content or "")


def answerer_from_env(env: Mapping[str, str] | None = None) -> Answerer:
    """Live when ``Q20_ANSWERER_BASE_URL`` is set (then ``Q20_ANSWERER_MODEL`` must be), else offline."""
    env = os.environ if env is None else env
    base_url = env.get(BASE_URL_ENV, "").strip()
    if not base_url:
        return OfflineAnswerer()
    model = env.get(MODEL_ENV, "").strip()
    if not model:
        raise ValueError(f"{BASE_URL_ENV} is set but {MODEL_ENV} is not; name the answerer model")
    return LLMAnswerer(base_url, model, env.get(API_KEY_ENV) or None)


async def answer(question: str, secret: str, category: str) -> Reply:
    """Answer with the answerer the environment configures (offline unless told otherwise)."""
    return await answerer_from_env().answer(question, secret, category)

"""A short end-to-end exercise of the Tinker surface: sample, fine-tune a few steps, sample again.

It proves the chosen backend (simulator by default) works with the cookbook's renderer and
supervised helpers before anything bigger runs.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import tinker
from tinker_cookbook import renderers
from tinker_cookbook.supervised.common import datum_from_model_input_weights

from agl_tinker.backend import close_service, get_tokenizer, service_client
from agl_tinker.loop.config import DEFAULT_MODEL

DEFAULT_RENDERER = "qwen3_instruct"


@dataclass(frozen=True)
class SmokeResult:
    """What the smoke run did, for printing and for tests."""

    before: str
    after: str
    losses: list[float]
    seconds: float


def _sample(
    sampler: object, renderer: renderers.Renderer, messages: list[renderers.Message], seed: int
) -> str:
    prompt = renderer.build_generation_prompt(messages)
    params = tinker.SamplingParams(
        max_tokens=48, temperature=0.0, stop=renderer.get_stop_sequences(), seed=seed
    )
    response = sampler.sample(prompt=prompt, num_samples=1, sampling_params=params).result()  # type: ignore[attr-defined]
    message, _ = renderer.parse_response(response.sequences[0].tokens)
    return renderers.get_text_content(message)


def run_smoke(
    model: str = DEFAULT_MODEL,
    renderer_name: str = DEFAULT_RENDERER,
    steps: int = 5,
    learning_rate: float = 5e-2,
    backend: str | None = None,
) -> SmokeResult:
    """Sample a greeting, fine-tune toward a fixed answer for ``steps`` steps, sample again.
    The service session it opens is closed before it returns (live, it would heartbeat on)."""
    start = time.perf_counter()
    service = service_client(backend)
    try:
        before, after, losses = _exercise(service, model, renderer_name, steps, learning_rate)
    except BaseException:
        asyncio.run(close_service(service, failed=True))
        raise
    asyncio.run(close_service(service))
    return SmokeResult(before=before, after=after, losses=losses, seconds=time.perf_counter() - start)


def _exercise(
    service: Any, model: str, renderer_name: str, steps: int, learning_rate: float
) -> tuple[str, str, list[float]]:
    trainer = service.create_lora_training_client(base_model=model, rank=8).result()
    renderer = renderers.get_renderer(renderer_name, get_tokenizer(model))
    question: list[renderers.Message] = [{"role": "user", "content": "Say you are Ada."}]
    target: list[renderers.Message] = [*question, {"role": "assistant", "content": "I am Ada."}]

    before = _sample(trainer.save_weights_and_get_sampling_client().result(), renderer, question, seed=0)
    model_input, weights = renderer.build_supervised_example(target)
    datum = datum_from_model_input_weights(model_input, weights)
    losses: list[float] = []
    adam = tinker.AdamParams(learning_rate=learning_rate)
    for _ in range(steps):
        out = trainer.forward_backward([datum], loss_fn="cross_entropy").result()
        trainer.optim_step(adam).result()
        losses.append(float(out.metrics["loss:sum"]))
    after = _sample(trainer.save_weights_and_get_sampling_client().result(), renderer, question, seed=0)
    return before, after, losses

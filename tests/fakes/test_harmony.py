"""The simulated gpt-oss speaks harmony as the cookbook's ``gpt_oss`` renderer expects: an answer on the
final channel ending ``<|return|>``, sometimes after an analysis message of its own (never two in a
turn), a tool call on the commentary channel ending ``<|call|>``; the trainer scores a two-message turn
exactly as the sampler drew it."""

from __future__ import annotations

import functools
import warnings

from logprob_parity import assert_sampled_logprobs_are_the_trainers
from tinker import types
from tinker_cookbook import model_info, renderers

from fakes.lineup import CATALOG, HARMONY
from fakes.tinker import ServiceClient
from fakes.tokenizer import load_tokenizer

MODEL = "openai/gpt-oss-20b"


@functools.cache
def _renderer() -> renderers.Renderer:
    warnings.simplefilter("ignore", FutureWarning)
    return renderers.get_renderer(model_info.get_recommended_renderer_name(MODEL), load_tokenizer(MODEL))


def _sample(service: ServiceClient, prompt: types.ModelInput, n: int) -> list[types.SampledSequence]:
    params = types.SamplingParams(max_tokens=64, seed=5, stop=_renderer().get_stop_sequences())
    sampler = service.create_sampling_client(base_model=MODEL).result()
    return list(sampler.sample(prompt, num_samples=n, sampling_params=params).result().sequences)


def test_the_lineup_entry_is_harmony() -> None:
    assert CATALOG[MODEL].chat_format is HARMONY and CATALOG["openai/gpt-oss-120b"].chat_format is HARMONY
    assert CATALOG[MODEL].max_context_length == 131072
    stops = _renderer().get_stop_sequences()
    assert stops == _renderer().tokenizer.convert_tokens_to_ids(list(HARMONY.closing_tokens))


def test_reasoning_comes_once_before_the_answer_and_never_reaches_its_text() -> None:
    renderer = _renderer()
    tok = renderer.tokenizer
    prompt = renderer.build_generation_prompt([renderers.Message(role="user", content="Say you are Bob")])
    service = ServiceClient()
    sequences = _sample(service, prompt, 24)
    reasoned = [s for s in sequences if "<|channel|>analysis" in tok.decode(s.tokens)]
    assert reasoned and len(reasoned) < len(sequences)
    for sequence in sequences:
        text = tok.decode(sequence.tokens)
        assert text.count("<|channel|>analysis") <= 1 and text.endswith("<|return|>"), text
        message, termination = renderer.parse_response(sequence.tokens)
        answer = renderers.get_text_content(message)
        assert termination.is_clean and answer and "<|" not in answer and "Let me think" not in answer
    # The trainer's logprobs of a two-message turn are the sampler's.
    assert_sampled_logprobs_are_the_trainers(service, MODEL, prompt, reasoned[0])

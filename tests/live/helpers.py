"""Small builders shared by the live-path tests (prompts, datums)."""

from __future__ import annotations

from typing import Any

import numpy as np
from tinker import types

from fakes.tokenizer import load_qwen3_tokenizer


def chat_prompt(model: str, user: str, system: str | None = None) -> types.ModelInput:
    """A Qwen3 chat prompt ending where the assistant speaks."""
    text = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    text += f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    return types.ModelInput.from_ints(load_qwen3_tokenizer(model).encode(text))


def rl_datum(prompt: types.ModelInput, seq: Any, advantage: float) -> types.Datum:
    """One RL datum over ``prompt + seq`` with the sampler's logprobs, as the cookbook builds it."""
    prompt_ids = prompt.to_ints()
    tokens = prompt_ids + list(seq.tokens)
    n_prompt = len(prompt_ids) - 1
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": types.TensorData.from_numpy(np.asarray(tokens[1:], dtype=np.int64)),
            "logprobs": types.TensorData.from_numpy(
                np.asarray([0.0] * n_prompt + list(seq.logprobs), dtype=np.float32)
            ),
            "advantages": types.TensorData.from_numpy(
                np.asarray([0.0] * n_prompt + [advantage] * len(seq.tokens), dtype=np.float32)
            ),
        },
    )


def with_sampled_provenance(datum: types.Datum, prompt: types.ModelInput, seq: Any) -> types.Datum:
    """``rl_datum``'s datum with provenance: the prompt's run and the sampled run of ``seq``."""
    n_prompt, n_sampled, sid = prompt.length, len(seq.tokens), seq.sequence_id
    return datum.with_provenance(
        model_input=[
            types.PromptProvenanceSpan(sequence_id=sid, length=n_prompt),
            types.SampledProvenanceSpan(sequence_id=sid, length=n_sampled - 1),
        ],
        loss_fn_inputs=[
            types.PromptProvenanceSpan(sequence_id=sid, offset=1, length=n_prompt - 1),
            types.SampledProvenanceSpan(sequence_id=sid, length=n_sampled),
        ],
    )

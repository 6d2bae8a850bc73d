"""The simulator's sampler and trainer are one model: the check that says so, shared by the lineup tests."""

from __future__ import annotations

import numpy as np
from tinker import types

from fakes.tinker import ServiceClient


def assert_sampled_logprobs_are_the_trainers(
    service: ServiceClient, model_name: str, prompt: types.ModelInput, sequence: types.SampledSequence
) -> None:
    """``forward`` on prompt + sampled tokens gives the sampler's logprobs for those tokens (to 1e-5).

    Why it matters: importance sampling and drift checks compare the two; a chat format whose sampled
    tokens the trainer scores differently would train on wrong ratios without any error.
    """
    training = service.create_lora_training_client(model_name, rank=2, seed=0).result()
    full = prompt.to_ints() + list(sequence.tokens)
    datum = types.Datum(
        model_input=types.ModelInput.from_ints(full[:-1]),
        loss_fn_inputs={"target_tokens": np.array(full[1:])},
    )
    forward = training.forward([datum], "cross_entropy").result().loss_fn_outputs[0]["logprobs"].data
    np.testing.assert_allclose(forward[-len(sequence.tokens) :], sequence.logprobs, atol=1e-5)

"""The families served beyond Qwen (DeepSeek V4.1, Llama 3, gpt-oss) work through the wire simulator with the
unmodified SDK as in process: listed by ``get_server_capabilities``, trained, and sampled in their own
chat format (the cookbook's renderer parses the answer cleanly), with ``:peft:N`` name variants."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tinker
from tinker import types
from tinker_cookbook import model_info, renderers

from fakes.tinker import SimConfig
from fakes.tokenizer import load_tokenizer
from fakes.wire import RunningWireServer, start_in_thread

pytestmark = pytest.mark.slow  # ~25 s: three models' tokenizers, renderers and a wire session each

MODELS = [
    "deepseek-ai/DeepSeek-V4.1-Flash:peft:262144",
    "meta-llama/Llama-3.1-8B-Instruct",
    "openai/gpt-oss-120b:peft:131072",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningWireServer]:
    with start_in_thread(SimConfig(root_dir=Path(tmp_path_factory.mktemp("wire")))) as running:
        yield running


@pytest.mark.parametrize("variant", MODELS)
def test_a_new_family_trains_and_answers_through_the_wire(server: RunningWireServer, variant: str) -> None:
    warnings.simplefilter("ignore", FutureWarning)
    model = variant.split(":")[0]
    service = tinker.ServiceClient(base_url=server.url, api_key="tml-test")
    try:
        listed = {m.model_name for m in service.get_server_capabilities().supported_models}
        assert model in listed
        renderer = renderers.get_renderer(
            model_info.get_recommended_renderer_name(model), load_tokenizer(model)
        )
        prompt = renderer.build_generation_prompt([renderers.Message(role="user", content="Say you are Bob")])
        tc = service.create_lora_training_client(variant, rank=4, seed=0).result()
        answer = (
            renderer.tokenizer.encode("I am Bob.", add_special_tokens=False)
            + renderer.get_stop_sequences()[:1]
        )
        tokens = prompt.to_ints() + answer
        datum = types.Datum(
            model_input=types.ModelInput.from_ints(tokens[:-1]),
            loss_fn_inputs={"target_tokens": np.array(tokens[1:])},
        )
        tc.forward_backward([datum], "cross_entropy").result()
        tc.optim_step(types.AdamParams(learning_rate=0.01)).result()
        sampler = tc.save_weights_and_get_sampling_client()
        params = types.SamplingParams(max_tokens=48, seed=1, stop=renderer.get_stop_sequences())
        result = sampler.sample(prompt, 4, params).result()
        texts = []
        for seq in result.sequences:
            message, termination = renderer.parse_response(seq.tokens)
            assert termination.is_clean
            texts.append(renderers.get_text_content(message))
        assert any("Bob" in text for text in texts), texts
    finally:
        service.close("success").result()

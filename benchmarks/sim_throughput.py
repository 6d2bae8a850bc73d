"""Throughput of the Tinker simulator: sampled tokens/s and trained tokens/s.

Prints one JSON object. Sampling counts generated tokens over many ``sample`` calls (1 sample
each, as the cookbook's rollouts issue them) on chat prompts of the three example tasks; training
counts every target token of ``forward_backward`` + ``optim_step`` on batches of full chat sequences.
Both are measured after a warm-up call, i.e. with the per-prompt candidate cache warm.
"""

from __future__ import annotations

import tempfile
import time
import warnings

import numpy as np
from _stdout import emit_json, json_stdout  # benchmarks/ is on sys.path when a script runs
from tinker import types

from fakes.tinker import ServiceClient

BASE = "Qwen/Qwen3-4B-Instruct-2507"
TOOLS = (
    '<tools>\n{"type": "function", "function": {"name": "search", "parameters": '
    '{"type": "object", "properties": {"query": {"type": "string"}}}}}\n</tools>'
)
PROMPTS = [
    "<|im_start|>user\nSay you are {i}<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nLet's play 20 questions. I'm thinking of an object; ask yes/no questions.\n"
    + TOOLS
    + "<|im_end|>\n<|im_start|>user\nAsk your first question. Hint {i}.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nI'm thinking of a number between 1 and 100 ({i}). Guess it!<|im_end|>\n"
    "<|im_start|>assistant\nMy guess is 50.<|im_end|>\n<|im_start|>user\nToo high.<|im_end|>\n<|im_start|>assistant\n",
]


def main() -> None:
    warnings.simplefilter("ignore", FutureWarning)
    with tempfile.TemporaryDirectory() as root:
        service = ServiceClient(root_dir=root)
        tc = service.create_lora_training_client(BASE, rank=32, seed=0).result()
        tok = tc.get_tokenizer()
        prompts = [tok.encode(p.replace("{i}", str(i))) for i in range(8) for p in PROMPTS]
        sampler = tc.save_weights_and_get_sampling_client().result()
        params = types.SamplingParams(max_tokens=64, temperature=1.0)

        def sample_all(seed: int) -> list[tuple[list[int], list[int]]]:
            futures = [
                (
                    p,
                    sampler.sample(
                        types.ModelInput.from_ints(p), 1, params.model_copy(update={"seed": seed + j})
                    ),
                )
                for j, p in enumerate(prompts)
            ]
            return [(p, f.result().sequences[0].tokens) for p, f in futures]

        sample_all(0)  # warm-up: builds the candidate sets
        start, sampled, pairs = time.perf_counter(), 0, []
        for round_ in range(1, 6):
            pairs = sample_all(1000 * round_)
            sampled += sum(len(t) for _, t in pairs)
        sampled_per_s = sampled / (time.perf_counter() - start)

        data = []
        for prompt, answer in pairs:
            full = prompt + answer
            n = len(prompt)
            data.append(
                types.Datum(
                    model_input=types.ModelInput.from_ints(full[:-1]),
                    loss_fn_inputs={
                        "target_tokens": np.array(full[1:]),
                        "logprobs": np.zeros(len(full) - 1, dtype=np.float32),
                        "advantages": np.array([0.0] * (n - 1) + [1.0] * len(answer), dtype=np.float32),
                    },
                )
            )
        adam = types.AdamParams(learning_rate=1e-2)
        tc.forward_backward(data, "importance_sampling").result()  # warm-up
        tc.optim_step(adam).result()
        start, trained = time.perf_counter(), 0
        for _ in range(5):
            fb = tc.forward_backward(data, "importance_sampling")
            op = tc.optim_step(adam)
            fb.result()
            op.result()
            trained += sum(d.model_input.length for d in data)
        trained_per_s = trained / (time.perf_counter() - start)
    emit_json(
        {
            "sampled_tokens_per_s": round(sampled_per_s),
            "trained_tokens_per_s": round(trained_per_s),
            "sample_calls_per_round": len(prompts),
            "train_batch_datums": len(data),
            "train_batch_tokens": sum(d.model_input.length for d in data),
        }
    )


if __name__ == "__main__":
    with json_stdout():
        main()

"""What the wire tests do as a user of the live service would: one supervised datum, one training
step through the unmodified SDK, the ``tinker`` CLI through its real entry point."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import tinker
from tinker import types

from fakes.tokenizer import load_tokenizer

MODEL = "Qwen/Qwen3-4B-Instruct-2507"


def sft_datum(text: str, model: str = MODEL, weights: bool = False) -> types.Datum:
    """``text`` as next-token targets (``cross_entropy``'s inputs; ``weights`` of ones if asked)."""
    tokens = load_tokenizer(model).encode(text)
    inputs: dict[str, types.TensorData] = {
        "target_tokens": types.TensorData.from_numpy(np.asarray(tokens[1:], dtype=np.int64))
    }
    if weights:
        inputs["weights"] = types.TensorData.from_numpy(np.ones(len(tokens) - 1, dtype=np.float32))
    return types.Datum(model_input=types.ModelInput.from_ints(tokens[:-1]), loss_fn_inputs=inputs)


def trained_run(service: tinker.ServiceClient, model: str = MODEL) -> tinker.TrainingClient:
    """A rank-4 run that took one cross-entropy step."""
    tc = service.create_lora_training_client(model, rank=4, seed=0).result()
    tc.forward_backward([sft_datum("hello there, general kenobi", model)], "cross_entropy").result()
    tc.optim_step(types.AdamParams(learning_rate=0.01)).result()
    return tc


def tinker_cli(base_url: str, *argv: str, timeout: float = 300) -> str:
    """``tinker ARGV...`` as a user runs it, against ``base_url``; its stdout (fails on a non-zero exit)."""
    env = {**os.environ, "TINKER_BASE_URL": base_url, "TINKER_API_KEY": "tml-test"}
    run = subprocess.run(
        [sys.executable, "-m", "tinker.cli", *argv], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout

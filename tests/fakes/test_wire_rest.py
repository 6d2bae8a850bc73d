"""The SDK's REST calls and the ``tinker`` CLI's listings answer through the wire simulator
(they were 404s): training runs, the user's checkpoints, weights info, sessions."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tinker
from tinker import types

from fakes.tinker import SimConfig
from fakes.tokenizer import load_tokenizer
from fakes.wire import start_in_thread

MODEL = "Qwen/Qwen3-4B-Instruct-2507"


@pytest.mark.slow
def test_rest_listings_through_the_sdk_and_the_cli(tmp_path: Path) -> None:
    warnings.simplefilter("ignore", FutureWarning)
    with start_in_thread(SimConfig(root_dir=tmp_path)) as server:
        service = tinker.ServiceClient(base_url=server.url, api_key="tml-test")
        tc = service.create_lora_training_client(MODEL, rank=4, seed=0).result()
        tokens = load_tokenizer(MODEL).encode("hello there")
        datum = types.Datum(
            model_input=types.ModelInput.from_ints(tokens[:-1]),
            loss_fn_inputs={"target_tokens": np.array(tokens[1:])},
        )
        tc.forward_backward([datum], "cross_entropy").result()
        state = tc.save_state("first").result().path
        rest = service.create_rest_client()

        runs = rest.list_training_runs().result()
        assert [r.training_run_id for r in runs.training_runs] == [tc.model_id]
        assert runs.cursor.total_count == 1
        checkpoints = rest.list_user_checkpoints().result()
        assert [c.tinker_path for c in checkpoints.checkpoints] == [state]
        info = rest.get_weights_info_by_tinker_path(state).result()
        assert (info.base_model, info.is_lora, info.lora_rank) == (MODEL, True, 4)
        with pytest.raises(tinker.NotFoundError):
            rest.get_weights_info_by_tinker_path(f"tinker://{tc.model_id}/weights/missing").result()
        session_id = tc.model_id.split(":train:")[0]
        assert session_id in rest.list_sessions().result().sessions
        assert rest.get_session(session_id).result().training_run_ids == [tc.model_id]

        env = {**os.environ, "TINKER_BASE_URL": server.url, "TINKER_API_KEY": "tml-test"}
        for argv, shown in (
            (["run", "list"], tc.model_id.split(":")[0][:8]),
            (["checkpoint", "list"], "weights/first"),
        ):
            run = subprocess.run(
                [sys.executable, "-m", "tinker.cli", *argv],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert run.returncode == 0, run.stderr
            assert shown in run.stdout, run.stdout
        service.close("success").result()

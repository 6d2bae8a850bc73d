"""The SDK's REST calls and the ``tinker`` CLI's listings answer through the wire simulator
(they were 404s): training runs, the user's checkpoints, weights info, sessions."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import tinker
from wire_clients import MODEL, sft_datum, tinker_cli

from fakes.tinker import SimConfig
from fakes.wire import start_in_thread


@pytest.mark.slow
def test_rest_listings_through_the_sdk_and_the_cli(tmp_path: Path) -> None:
    warnings.simplefilter("ignore", FutureWarning)
    with start_in_thread(SimConfig(root_dir=tmp_path)) as server:
        service = tinker.ServiceClient(base_url=server.url, api_key="tml-test")
        tc = service.create_lora_training_client(MODEL, rank=4, seed=0).result()
        tc.forward_backward([sft_datum("hello there")], "cross_entropy").result()
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

        for argv, shown in (
            (["run", "list"], tc.model_id.split(":")[0][:8]),
            (["checkpoint", "list"], "weights/first"),
        ):
            output = tinker_cli(server.url, *argv, timeout=120)
            assert shown in output, output
        service.close("success").result()

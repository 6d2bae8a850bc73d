"""The wire codec carries what the off-policy contracts need: provenance spans and loss config."""

from __future__ import annotations

import numpy as np
import pytest
from tinker import types
from tinker.proto.request_conv import forward_backward_request_to_proto

from fakes.wire.codec import decode_forward_backward


@pytest.mark.parametrize("with_spans", [False, True])
def test_provenance_and_loss_config_decode_as_the_sdk_sent_them(with_spans: bool) -> None:
    datum = types.Datum(
        model_input=types.ModelInput.from_ints([5, 6, 7, 8]),
        loss_fn_inputs={
            "target_tokens": np.array([6, 7, 8, 9], dtype=np.int64),
            "advantages": np.array([0.0, 0.0, 1.0, 1.0], dtype=np.float32),
        },
    )
    if with_spans:
        datum = datum.with_provenance(
            model_input=[
                types.PromptProvenanceSpan(sequence_id="a", length=3),
                types.SampledProvenanceSpan(sequence_id="a", length=1),
            ],
            loss_fn_inputs=[
                types.PromptProvenanceSpan(sequence_id="a", offset=1, length=2),
                types.SampledProvenanceSpan(sequence_id="a", offset=0, length=2),
            ],
        )
    request = types.ForwardBackwardRequest(
        forward_backward_input=types.ForwardBackwardInput(
            data=[datum], loss_fn="stable_reinforce", loss_fn_config={"kl_coeff": 0.5}
        ),
        model_id="s:train:0",
        seq_id=1,
    )
    call = decode_forward_backward(forward_backward_request_to_proto(request).SerializeToString(), None)
    (got,) = call.data
    assert call.loss_fn == "stable_reinforce"
    assert call.loss_fn_config == {"kl_coeff": 0.5}
    assert got.model_input_spans == datum.model_input_spans
    assert got.loss_fn_input_spans == datum.loss_fn_input_spans

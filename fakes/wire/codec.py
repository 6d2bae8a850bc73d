"""Bodies of the Tinker wire protocol, built with the SDK's own protobuf schema.

The SDK sends ``forward_backward`` as a ``tinker_public.ForwardBackwardRequest`` message
(optionally zstd-compressed) and requires ``SampleResponse`` and ``ForwardBackwardOutput``
results as protobuf messages; everything else travels as JSON of the SDK's pydantic types.
This module is the inverse of ``tinker.proto.request_conv`` / ``response_conv``: it decodes
what the SDK encodes and encodes what the SDK decodes, with ``tinker_public_pb2`` messages.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import zstandard
from tinker import types
from tinker.proto import tinker_public_pb2 as pb
from tinker.types.topk_logprobs import TopkLogprobs

PROTO_CONTENT_TYPE = "application/x-protobuf"

_NUMPY_OF_PROTO_DTYPE: dict[int, np.dtype[Any]] = {
    pb.DTYPE_FLOAT32: np.dtype(np.float32),
    pb.DTYPE_INT64: np.dtype(np.int64),
    pb.DTYPE_INT32: np.dtype(np.int32),
}
_PUBLIC_DTYPE: dict[int, types.TensorDtype] = {
    pb.DTYPE_FLOAT32: "float32",
    pb.DTYPE_INT64: "int64",
    pb.DTYPE_INT32: "int64",
}
_PROTO_DTYPE_OF_NUMPY = {np.dtype(np.float32): pb.DTYPE_FLOAT32, np.dtype(np.int64): pb.DTYPE_INT64}
_STOP_REASON = {"stop": pb.STOP_REASON_STOP, "length": pb.STOP_REASON_LENGTH}


class CodecError(ValueError):
    """A request body the server cannot decode (answered with HTTP 400)."""


@dataclasses.dataclass(frozen=True)
class ForwardBackwardCall:
    """A decoded ``/api/v1/forward_backward`` request."""

    model_id: str
    seq_id: int
    forward_only: bool
    loss_fn: str
    loss_fn_config: dict[str, float | str] | None
    data: list[types.Datum]


# ---- requests ------------------------------------------------------------------------------------
def _tensor(msg: pb.Tensor) -> types.TensorData:
    np_dtype = _NUMPY_OF_PROTO_DTYPE.get(msg.dtype)
    if np_dtype is None:
        raise CodecError(f"unsupported tensor dtype {msg.dtype}")
    dtype = _PUBLIC_DTYPE[msg.dtype]
    shape = list(msg.shape) or None
    if msg.HasField("sparse_csr"):
        csr = msg.sparse_csr
        return types.TensorData(
            data=np.frombuffer(csr.values, dtype=np_dtype).copy(),
            dtype=dtype,
            shape=shape,
            sparse_crow_indices=np.frombuffer(csr.crow_indices, dtype=np.int64).tolist(),
            sparse_col_indices=np.frombuffer(csr.col_indices, dtype=np.int64).tolist(),
        )
    return types.TensorData(data=np.frombuffer(msg.dense, dtype=np_dtype).copy(), dtype=dtype, shape=shape)


def _chunk(msg: pb.Chunk) -> types.ModelInputChunk:
    kind = msg.WhichOneof("chunk")
    if kind == "encoded_text":
        tokens = np.frombuffer(msg.encoded_text.tokens, dtype=np.int32)
        return types.EncodedTextChunk(tokens=tokens.tolist())
    raise CodecError(f"the simulator takes text tokens only, not {kind!r} chunks")


def _loss_fn_config(msg: pb.ForwardBackwardRequest) -> dict[str, float | str] | None:
    if msg.loss_fn_config_v2:
        return {
            key: (value.text if value.WhichOneof("value") == "text" else value.number)
            for key, value in msg.loss_fn_config_v2.items()
        }
    if msg.loss_fn_config:
        return {key: float(value) for key, value in msg.loss_fn_config.items()}
    return None


def _span(msg: pb.ProvenanceSpan) -> types.PromptProvenanceSpan | types.SampledProvenanceSpan:
    arm = msg.WhichOneof("span")
    if arm == "sampled_tokens":
        run = msg.sampled_tokens
        return types.SampledProvenanceSpan(sequence_id=run.sequence_id, offset=run.offset, length=run.length)
    if arm == "prompt_tokens":
        run = msg.prompt_tokens
        return types.PromptProvenanceSpan(sequence_id=run.sequence_id, offset=run.offset, length=run.length)
    raise CodecError(f"provenance span without a run ({arm!r})")


def _datum(msg: pb.Datum) -> types.Datum:
    datum = types.Datum(
        model_input=types.ModelInput(chunks=[_chunk(c) for c in msg.model_input]),
        loss_fn_inputs={name: _tensor(t) for name, t in msg.loss_fn_inputs.items()},
    )
    if not msg.model_input_spans and not msg.loss_fn_input_spans:
        return datum  # no provenance (protobuf cannot tell an empty list from none)
    try:
        return datum.with_provenance(
            model_input=[_span(s) for s in msg.model_input_spans],
            loss_fn_inputs=[_span(s) for s in msg.loss_fn_input_spans],
        )
    except ValueError as exc:
        raise CodecError(f"bad provenance: {exc}") from None


def decode_forward_backward(body: bytes, content_encoding: str | None) -> ForwardBackwardCall:
    """Decode the protobuf body the SDK's ``AsyncTrainingResource.forward_backward`` sends."""
    if content_encoding == "zstd":
        try:
            body = zstandard.ZstdDecompressor().decompress(body)
        except zstandard.ZstdError as exc:
            raise CodecError(f"bad zstd body: {exc}") from None
    msg = pb.ForwardBackwardRequest()
    try:
        msg.ParseFromString(body)
    except Exception as exc:  # protobuf raises its own DecodeError
        raise CodecError(f"bad ForwardBackwardRequest: {exc}") from None
    data = [_datum(datum) for datum in msg.data]
    return ForwardBackwardCall(
        model_id=msg.model_id,
        seq_id=msg.seq_id,
        forward_only=msg.forward_only,
        loss_fn=msg.loss_fn,
        loss_fn_config=_loss_fn_config(msg),
        data=data,
    )


# ---- responses -----------------------------------------------------------------------------------
def _topk(topk: TopkLogprobs | None) -> pb.TopkLogprobs | None:
    if topk is None:
        return None
    ids = np.asarray(topk.token_ids, dtype=np.int32)
    return pb.TopkLogprobs(
        token_ids=ids.tobytes(),
        logprobs=np.asarray(topk.logprobs, dtype=np.float32).tobytes(),
        k=int(ids.shape[1]) if ids.ndim == 2 else 0,
        length=int(ids.shape[0]),
    )


def _sequence(seq: types.SampledSequence) -> pb.SampledSequence:
    msg = pb.SampledSequence(
        stop_reason=_STOP_REASON[seq.stop_reason],
        tokens=np.asarray(seq.tokens, dtype=np.int32).tobytes(),
    )
    if seq.logprobs_np is not None or seq.logprobs is not None:
        msg.logprobs = np.asarray(seq.logprobs, dtype=np.float32).tobytes()
    topk = _topk(seq.topk_logprobs_np)
    if topk is not None:
        msg.topk_sampled_logprobs.CopyFrom(topk)
    return msg


def encode_sample_response(response: types.SampleResponse) -> bytes:
    """``SampleResponse`` as the protobuf message ``tinker.proto.response_conv`` decodes."""
    msg = pb.SampleResponse(sequences=[_sequence(s) for s in response.sequences])
    if response.prompt_logprobs_np is not None:
        msg.prompt_logprobs = np.asarray(response.prompt_logprobs_np, dtype=np.float32).tobytes()
    elif response.prompt_logprobs is not None:
        values = [np.nan if v is None else v for v in response.prompt_logprobs]
        msg.prompt_logprobs = np.asarray(values, dtype=np.float32).tobytes()
    topk = _topk(response.topk_prompt_logprobs_np)
    if topk is not None:
        msg.topk_prompt_logprobs.CopyFrom(topk)
    return msg.SerializeToString()


def _batched(arrays: list[np.ndarray]) -> pb.BatchedTensor:
    """Per-datum arrays of one field as one ``BatchedTensor`` (byte offsets, trailing shape)."""
    dtype = np.dtype(np.float32) if arrays[0].dtype.kind == "f" else np.dtype(np.int64)
    cast = [np.ascontiguousarray(a, dtype=dtype) for a in arrays]
    trailing = list(cast[0].shape[1:])
    if any(list(a.shape[1:]) != trailing for a in cast):
        raise ValueError("loss outputs of one field need the same trailing shape in every datum")
    offsets = np.cumsum([0] + [a.nbytes for a in cast], dtype=np.int64)
    return pb.BatchedTensor(
        data=b"".join(a.tobytes() for a in cast),
        offsets=offsets.tobytes(),
        dtype=_PROTO_DTYPE_OF_NUMPY[dtype],
        trailing_shape=trailing,
    )


def encode_forward_backward_output(output: types.ForwardBackwardOutput) -> bytes:
    """``ForwardBackwardOutput`` as one batched ``ArrayRecord`` (what the service emits)."""
    msg = pb.ForwardBackwardOutput(
        loss_fn_output_type=output.loss_fn_output_type, metrics=dict(output.metrics)
    )
    outputs = output.loss_fn_outputs
    if outputs:
        record = msg.loss_fn_outputs.add(type_tag=output.loss_fn_output_type, num_datums=len(outputs))
        for name in outputs[0]:
            arrays = [
                np.asarray(datum[name].to_numpy()).reshape(datum[name].shape or [-1]) for datum in outputs
            ]
            record.fields[name].CopyFrom(_batched(arrays))
    return msg.SerializeToString()

"""``SamplingClient`` of the simulator, over a frozen copy of the policy's weights.

Returned logprobs are those of the model itself (temperature 1, no top-k/top-p): the sampler
evaluates the same mixture ``Policy.score`` differentiates (numpy here, torch there, both
float64, agreeing to ~1e-15), so sampled tokens' logprobs equal what ``forward`` returns for
them up to float32 rounding of the last bit. With other sampling settings the tokens come from the
transformed distribution while the logprobs stay the model's (the cookbook's RL assumes
temperature 1, where the two coincide).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from tinker import types
from tinker.lib.public_interfaces.api_future import APIFuture
from tinker.types.topk_logprobs import MASK_LOGPROB, TopkLogprobs
from typing_extensions import deprecated

from . import errors
from .catalog import resolve
from .checkpoints import TinkerPath
from .datums import check_sample_budget, tokens_of
from .inflight import Serving, Snapshot, Weights
from .policy import Policy, PolicyConfig, initial_params
from .sampler import Cursor, generate
from .stability import Recorded, session_of
from .vocab import load_vocab

if TYPE_CHECKING:
    from .runtime import Runtime

DEFAULT_MAX_TOKENS = 512
R = TypeVar("R")


@dataclasses.dataclass(frozen=True)
class _Recording:
    """Where a sampling request's sequences get their ids, and whether they are recorded."""

    session_id: str
    record: bool
    fixed_ids: list[str] | None

    def ids(self, n: int) -> list[str]:
        return list(self.fixed_ids) if self.fixed_ids is not None else [str(uuid.uuid4()) for _ in range(n)]


_ASYNC = "deprecated in the SDK: await the APIFuture the method without _async returns"


def _stops(stop: str | Any, vocab_stop: set[int]) -> tuple[set[int], list[str]]:
    """``None``: the model's end-of-turn tokens; ``[]``: none; strings or token ids otherwise."""
    if stop is None:
        return vocab_stop, []
    if isinstance(stop, str):
        return set(), [stop]
    items = list(stop)
    if all(isinstance(s, str) for s in items):
        return set(), [str(s) for s in items]
    if all(isinstance(s, int) for s in items):
        return {int(s) for s in items}, []
    raise errors.bad_request("stop must be strings or token ids, not a mix", path="asample")


class SamplingClient:
    """A sampling session: its own id (a fresh KV namespace on the service), over fixed or in-flight
    weights (:mod:`fakes.tinker.inflight`), recording what it samples when ``record_stability_info``."""

    def __init__(
        self,
        runtime: Runtime,
        weights: Weights,
        model_path: str | None,
        *,
        session_id: str | None = None,
        record_stability_info: bool = False,
    ) -> None:
        self._runtime = runtime
        self._weights = weights
        self._model_path = model_path
        self._base_model = weights.serve().policy.config.base_model.name
        self._sampler_id = runtime.new_sampler_id(session_id)
        self._session_id = session_of(self._sampler_id)
        self._record = record_stability_info

    # ---- sampling -------------------------------------------------------------------------
    def _call(self, run: Callable[[Serving], R], cost_s: Callable[[R], float]) -> APIFuture[R]:
        """``run`` on the sampling pool, on the weights a call starting now is served by.

        The call lasts ``cost_s(result)``, plus the time those weights still take to reach the
        samplers (an in-flight client created at a save the replicas are still loading waits for it:
        the client's guarantee), served by the dispatcher's timer so that calls still overlap."""
        ready_in_s = 0.0

        def on_weights() -> R:
            nonlocal ready_in_s
            serving = self._weights.serve()
            ready_in_s = serving.ready_in_s
            return run(serving)

        return self._runtime.dispatcher.call(
            self._runtime.sampling_pool,
            "asample",
            on_weights,
            cost_of=lambda result: ready_in_s + cost_s(result),
        )

    def _sample(
        self,
        serving: Serving,
        prompt: types.ModelInput,
        num_samples: int,
        params: types.SamplingParams,
        include_prompt_logprobs: bool,
        topk_prompt_logprobs: int,
        topk_sample_logprobs: int,
        prompt_logprobs_last_n: int | None,
        recording: _Recording | None = None,
    ) -> types.SampleResponse:
        version, policy = serving.version, serving.policy
        vocab = policy.vocab
        tokens = tokens_of(prompt, vocab.size, "prompt")
        if len(tokens) == 0:
            raise errors.bad_request("prompt is empty", path="asample")
        if num_samples < 1:
            raise errors.bad_request("num_samples must be >= 1", path="asample")
        context = policy.config.base_model.max_context_length
        check_sample_budget(len(tokens), params.max_tokens, context)
        stop_tokens, stop_strings = _stops(params.stop, {policy.end_of_text, *policy.closers.tolist()})
        max_tokens = min(params.max_tokens or DEFAULT_MAX_TOKENS, context - len(tokens))
        outputs: list[tuple[list[int], list[float], str]] = []
        for i in range(num_samples):
            rng = np.random.default_rng(None if params.seed is None else [params.seed, i])
            outputs.append(
                generate(
                    policy,
                    tokens,
                    rng,
                    max_tokens=max_tokens,
                    stop_tokens=stop_tokens,
                    stop_strings=stop_strings,
                    temperature=params.temperature,
                    top_k=params.top_k,
                    top_p=params.top_p,
                )
            )
        ids = recording.ids(num_samples) if recording is not None else [str(uuid.uuid4()) for _ in outputs]
        sequences = []
        for sequence_id, (out, logprobs, reason) in zip(ids, outputs, strict=True):
            topk = (
                self._topk_along(policy, tokens, out, topk_sample_logprobs)
                if topk_sample_logprobs > 0
                else None
            )
            if recording is not None and recording.record:
                self._runtime.stability.record(
                    sequence_id,
                    Recorded(
                        session_id=recording.session_id,
                        prompt=tokens.copy(),
                        tokens=np.asarray(out, dtype=np.int64),
                        logprobs=np.asarray(logprobs, dtype=np.float64),
                        weights_version=version,
                    ),
                )
            sequences.append(
                types.SampledSequence(
                    stop_reason=reason,  # type: ignore[arg-type]
                    sequence_id=sequence_id,
                    tokens_np=np.asarray(out, dtype=np.int32),
                    logprobs_np=np.asarray(logprobs, dtype=np.float32),
                    topk_logprobs_np=topk,
                )
            )
        prompt_lp = None
        topk_prompt = None
        if include_prompt_logprobs or topk_prompt_logprobs > 0:
            with torch.no_grad():
                (scored_prompt,) = policy.score([tokens[:-1]], [tokens[1:]])
            prompt_lp = np.concatenate([[np.nan], scored_prompt.numpy()]).astype(np.float32)
            if prompt_logprobs_last_n is not None:
                prompt_lp[: len(tokens) - prompt_logprobs_last_n] = np.nan
            if topk_prompt_logprobs > 0:
                topk_prompt = self._topk_along(
                    policy, tokens[:1], tokens[1:].tolist(), topk_prompt_logprobs, pad_first=True
                )
        return types.SampleResponse(
            sequences=sequences,
            prompt_logprobs_np=prompt_lp if include_prompt_logprobs else None,
            topk_prompt_logprobs_np=topk_prompt,
        )

    @staticmethod
    def _topk_along(
        policy: Policy, start: np.ndarray, continuation: list[int], k: int, pad_first: bool = False
    ) -> TopkLogprobs:
        """Top-k next-token logprobs before each token of ``continuation``."""
        cursor = Cursor(policy, start)
        rows = [[(0, MASK_LOGPROB)] * k] if pad_first else []
        for token in continuation:
            found = cursor.top_k(k)
            rows.append(found + [(0, MASK_LOGPROB)] * (k - len(found)))
            cursor.advance(token)
        ids = np.array([[t for t, _ in row] for row in rows], dtype=np.int32).reshape(len(rows), k)
        lps = np.array([[lp for _, lp in row] for row in rows], dtype=np.float32).reshape(len(rows), k)
        return TopkLogprobs(token_ids=ids, logprobs=lps)

    def _sample_cost_s(self, response: types.SampleResponse) -> float:
        """The cost model's duration of a sampling call: its longest sequence is decoded last."""
        longest = max((len(seq.tokens) for seq in response.sequences), default=0)
        return self._runtime.config.sample_cost_s(longest)

    def sample(
        self,
        prompt: types.ModelInput,
        num_samples: int,
        sampling_params: types.SamplingParams,
        include_prompt_logprobs: bool = False,
        topk_prompt_logprobs: int = 0,
        topk_sample_logprobs: int = 0,
        target_prompt_logprobs: types.TensorData | None = None,
        prompt_alt_tokens_k: int = 0,
        prompt_logprobs_last_n: int | None = None,
    ) -> APIFuture[types.SampleResponse]:
        """Sample ``num_samples`` continuations; deterministic given weights, prompt and seed.

        Each sequence gets a fresh ``sequence_id``; with ``record_stability_info`` it is recorded
        under it (in this client's session) for training requests to name.
        """
        return self.submit_sample(
            prompt,
            num_samples,
            sampling_params,
            include_prompt_logprobs,
            topk_prompt_logprobs,
            topk_sample_logprobs,
            target_prompt_logprobs,
            prompt_alt_tokens_k,
            prompt_logprobs_last_n,
            sequence_ids=None,
            record=self._record,
        )

    def submit_sample(
        self,
        prompt: types.ModelInput,
        num_samples: int,
        sampling_params: types.SamplingParams,
        include_prompt_logprobs: bool,
        topk_prompt_logprobs: int,
        topk_sample_logprobs: int,
        target_prompt_logprobs: types.TensorData | None,
        prompt_alt_tokens_k: int,
        prompt_logprobs_last_n: int | None,
        *,
        sequence_ids: list[str] | None,
        record: bool,
        session_id: str | None = None,
    ) -> APIFuture[types.SampleResponse]:
        """``sample`` with the ids fixed by the caller (the wire server fixes them at submission),
        recording chosen per request (the SDK sends ``record_stability_info`` with each one) and
        records filed under ``session_id`` (default: this client's session)."""
        if target_prompt_logprobs is not None or prompt_alt_tokens_k:
            raise NotImplementedError("target_prompt_logprobs and prompt_alt_tokens_k are not simulated")
        if prompt_logprobs_last_n is not None and not include_prompt_logprobs:
            raise ValueError("prompt_logprobs_last_n applies to prompt logprobs; set include_prompt_logprobs")
        if sequence_ids is not None and len(sequence_ids) != num_samples:
            raise ValueError(f"{len(sequence_ids)} sequence ids for {num_samples} samples")
        recording = _Recording(session_id or self._session_id, record, sequence_ids)
        return self._call(
            lambda serving: self._sample(
                serving,
                prompt,
                num_samples,
                sampling_params,
                include_prompt_logprobs,
                topk_prompt_logprobs,
                topk_sample_logprobs,
                prompt_logprobs_last_n,
                recording,
            ),
            self._sample_cost_s,
        )

    @deprecated(_ASYNC, category=FutureWarning)
    async def sample_async(
        self,
        prompt: types.ModelInput,
        num_samples: int,
        sampling_params: types.SamplingParams,
        include_prompt_logprobs: bool = False,
        topk_prompt_logprobs: int = 0,
        topk_sample_logprobs: int = 0,
        target_prompt_logprobs: types.TensorData | None = None,
        prompt_alt_tokens_k: int = 0,
        prompt_logprobs_last_n: int | None = None,
    ) -> types.SampleResponse:
        return await self.sample(
            prompt,
            num_samples,
            sampling_params,
            include_prompt_logprobs,
            topk_prompt_logprobs,
            topk_sample_logprobs,
            target_prompt_logprobs,
            prompt_alt_tokens_k,
            prompt_logprobs_last_n,
        )

    def compute_logprobs(
        self, prompt: types.ModelInput, prompt_logprobs_last_n: int | None = None
    ) -> APIFuture[list[float | None]]:
        """Logprob of each prompt token given the ones before it (``None`` for the first)."""

        def run(serving: Serving) -> list[float | None]:
            response = self._sample(
                serving, prompt, 1, types.SamplingParams(max_tokens=1), True, 0, 0, prompt_logprobs_last_n
            )
            assert response.prompt_logprobs is not None
            return response.prompt_logprobs

        ttft_s = self._runtime.config.sample_cost_s(0)
        return self._call(run, lambda _: ttft_s)

    @deprecated(_ASYNC, category=FutureWarning)
    async def compute_logprobs_async(
        self, prompt: types.ModelInput, prompt_logprobs_last_n: int | None = None
    ) -> list[float | None]:
        return await self.compute_logprobs(prompt, prompt_logprobs_last_n)

    # ---- info ---------------------------------------------------------------------------------
    def get_tokenizer(self) -> Any:
        from fakes.tokenizer import load_tokenizer

        return load_tokenizer(self._base_model)

    def get_base_model(self) -> str:
        return self._base_model

    @deprecated("deprecated in the SDK: use get_base_model()", category=FutureWarning)
    async def get_base_model_async(self) -> str:
        return self._base_model

    def get_sampler_handle(self) -> str:
        return self._sampler_id

    @property
    def weights(self) -> Weights:
        """What this client samples with (simulator only: tests of the in-flight contract)."""
        return self._weights

    def get_telemetry(self) -> None:
        return None


def policy_from_meta(
    runtime: Runtime, meta: dict[str, Any], params: dict[str, torch.Tensor] | None
) -> Policy:
    config = PolicyConfig(
        base_model=resolve(meta["base_model"]),
        rank=int(meta["rank"]),
        seed=int(meta["seed"]),
        train_attn=bool(meta.get("train_attn", True)),
        train_mlp=bool(meta.get("train_mlp", True)),
        train_unembed=bool(meta.get("train_unembed", True)),
        background_eps=runtime.config.background_eps,
        drift=runtime.config.drift,
    )
    vocab = load_vocab(config.base_model.vocabulary)
    initial = initial_params(config, vocab)
    if params is not None:
        for name, value in params.items():
            if name not in initial or initial[name].shape != value.shape:
                raise errors.bad_request(f"checkpoint parameter {name!r} does not fit this simulator version")
            initial[name] = value.to(initial[name].dtype).clone()
    return Policy(config, vocab, initial)


def sampling_client_from_path(
    runtime: Runtime, model_path: str, *, session_id: str | None = None, record_stability_info: bool = False
) -> SamplingClient:
    snapshot = runtime.store.load(TinkerPath.parse(model_path))
    weights = Snapshot(policy_from_meta(runtime, snapshot.meta, snapshot.params), version=0)
    return SamplingClient(
        runtime, weights, model_path, session_id=session_id, record_stability_info=record_stability_info
    )


def base_sampling_client(
    runtime: Runtime, base_model: str, *, session_id: str | None = None, record_stability_info: bool = False
) -> SamplingClient:
    meta = {"base_model": base_model, "rank": 1, "seed": 0}
    weights = Snapshot(policy_from_meta(runtime, meta, None), version=0)
    return SamplingClient(
        runtime, weights, None, session_id=session_id, record_stability_info=record_stability_info
    )

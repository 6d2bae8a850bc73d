"""The policy endpoint agents call: configuration, start-up, hot swap, and the resource runners get.

``EndpointConfig(mode="lean")`` (default) serves through :class:`agl_tinker.endpoint.lean_server.LeanServer`;
``mode="proxy"`` through Agent-lightning's ``LLMProxy`` (:mod:`agl_tinker.endpoint.llmproxy`). Either way the
same provider answers, the same spans are stored, and runners receive a ``ProxyLLM`` resource whose
``get_base_url(rollout_id, attempt_id)`` is the rollout-attributed URL. The endpoint knows nothing
of training: a trainer hands it a new sampling client with :meth:`Endpoint.swap`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from agentlightning.store.base import LightningStore
from agentlightning.store.threading import LightningStoreThreaded
from agentlightning.types import LLM, ProxyLLM

from agl_tinker.endpoint.provider import TinkerChatProvider
from agl_tinker.endpoint.registration import register, unregister
from agl_tinker.endpoint.span_recorder import SpanRecorder
from agl_tinker.heavy_import import freeze_survivors


@dataclass(frozen=True)
class EndpointConfig:
    """How the policy is served. ``port=0`` picks a free port."""

    mode: Literal["lean", "proxy"] = "lean"
    host: str = "127.0.0.1"
    """Bind address. Use ``0.0.0.0`` (with ``public_host``) when runners are on other machines."""
    port: int = 0
    public_host: str | None = None
    """Host name runners use to reach the endpoint; defaults to ``host``."""
    model_name: str | None = None
    """Name agents pass as ``model``; defaults to the base model's name."""
    renderer_name: str | None = None
    """Cookbook renderer; defaults to the one the cookbook recommends for the base model."""
    token_in_token_out: bool = True
    max_context_tokens: int = 32768
    default_max_tokens: int = 1024
    strict_context: bool = False
    """``False``: a request whose prompt plus ``max_tokens`` exceeds ``max_context_tokens`` has its
    ``max_tokens`` cut to what fits (the answer may end for length; counted as
    ``endpoint/max_tokens_clamped``). ``True``: such a request is a 400. A prompt that alone fills
    the context is a 400 either way."""
    sampling_parameters: dict[str, Any] = field(default_factory=dict)
    """Defaults handed to runners in the ``LLM`` resource (e.g. temperature)."""
    litellm_dispatch: bool = False
    """Lean mode only: route each call through ``litellm.acompletion`` (LiteLLM callbacks run, at the
    cost of LiteLLM's per-call dispatch) instead of calling the provider directly. Proxy mode always does."""
    model_aliases: tuple[str, ...] = ()
    """Lean mode only: more ``model`` names agents may ask for (e.g. one per agent role). Each call
    records the name it asked for, which ``TrainConfig.model_match`` selects on."""


class Endpoint:
    """A running endpoint. Create with :func:`start_endpoint`; stop with :meth:`stop`."""

    def __init__(
        self,
        config: EndpointConfig,
        provider: TinkerChatProvider,
        server: Any,
        litellm_model: str,
        recorder: SpanRecorder | None = None,
        policies: Mapping[str, TinkerChatProvider] | None = None,
    ) -> None:
        self.config = config
        self.provider = provider
        self.policies: dict[str, TinkerChatProvider] = dict(policies or {})
        """Several policies (:func:`start_policy_endpoint`): policy name -> its provider."""
        self.server = server
        self.litellm_model = litellm_model
        self.recorder = recorder
        self._span_counts_reported = {"written": 0, "dropped": 0, "failed": 0}
        self._clamped_reported = self._ignored_reported = 0

    @property
    def model_name(self) -> str:
        return str(self.server.served_model)

    @property
    def url(self) -> str:
        """Base URL without ``/v1``, as runners should use it."""
        url = str(self.server.url)
        if self.config.public_host:
            url = url.replace(f"//{self.config.host}:", f"//{self.config.public_host}:", 1)
        return url

    @property
    def weights_version(self) -> int | str:
        return self.provider.policy.version

    def swap(
        self,
        sampling_client: Any,
        version: int | str,
        *,
        policy: str | None = None,
        records_stability_info: bool = False,
    ) -> None:
        """Serve new weights from the next request on; no restart, requests in flight unaffected.

        Args:
            sampling_client: The new weights' sampling client.
            version: Their weights version (recorded on each call sampled from them): for an
                in-flight client, the save it was created at (its calls run on it or newer).
            policy: With several policies, the one whose weights change (the others keep theirs);
                ``None``: the endpoint's only (or first) policy.
            records_stability_info: the client was created with ``record_stability_info=True``;
                each call then records its sample's ``sequence_id``.
        """
        provider = self.provider if policy is None else self.policies[policy]
        provider.swap(sampling_client, version, records_stability_info=records_stability_info)

    async def flush(self) -> None:
        """Wait until every call answered so far is in the store."""
        await self.server.flush()

    def span_metrics(self) -> dict[str, int]:
        """``spans/written``, ``spans/dropped`` (refused by the store: those calls are lost to
        training) and ``spans/failed`` (store errors, retried) since the previous call: a step's
        metrics. Empty without a recorder. Also ``endpoint/max_tokens_clamped``: requests whose
        ``max_tokens`` was cut to fit the context, and ``endpoint/tools_ignored``: declared tools the
        policy cannot call (hosted/server tools of the Responses and Messages APIs), since the previous call."""
        providers = list(self.policies.values()) or [self.provider]
        clamped = sum(p.max_tokens_clamped for p in providers)
        ignored = int(getattr(self.server, "ignored_tools", 0))
        clamp_delta = {
            "endpoint/max_tokens_clamped": clamped - self._clamped_reported,
            "endpoint/tools_ignored": ignored - self._ignored_reported,
        }
        self._clamped_reported, self._ignored_reported = clamped, ignored
        if self.recorder is None:
            return clamp_delta
        now = {
            "written": self.recorder.written,
            "dropped": self.recorder.dropped,
            "failed": self.recorder.failed,
        }
        delta = {f"spans/{k}": v - self._span_counts_reported[k] for k, v in now.items()}
        self._span_counts_reported = now
        return delta | clamp_delta

    def served_calls(self, rollout_id: str, attempt_id: str) -> int | None:
        """Calls served on this rollout attempt's path and not yet forgotten; ``None`` without a
        recorder (unknown). A reader compares it with the calls the attempt's spans hold."""
        if self.recorder is None:
            return None
        return self.recorder.served_calls(rollout_id, attempt_id)

    def forget_calls(self, rollout_ids: Iterable[str]) -> None:
        """Release the call counts of rollouts read for good (every attempt)."""
        if self.recorder is not None:
            self.recorder.forget(rollout_ids)

    async def stop(self) -> None:
        """Stop serving after storing the spans still buffered."""
        await self.server.stop()
        unregister(self.litellm_model)

    def as_resource(self, rollout_id: str | None = None, attempt_id: str | None = None) -> LLM:
        """The resource runners get, like ``LLMProxy.as_resource``: ``ProxyLLM`` without ids."""
        if (rollout_id is None) != (attempt_id is None):
            raise ValueError("pass both rollout_id and attempt_id, or neither")
        params = dict(self.config.sampling_parameters)
        if rollout_id is None:
            return ProxyLLM(endpoint=self.url + "/v1", model=self.model_name, sampling_parameters=params)
        return LLM(
            endpoint=f"{self.url}/rollout/{rollout_id}/attempt/{attempt_id}/v1",
            model=self.model_name,
            sampling_parameters=params,
        )


@dataclass(frozen=True)
class PolicyServing:
    """One policy of several, as :func:`start_policy_endpoint` serves it."""

    sampling_client: Any
    base_model: str
    tokenizer: Any
    models: tuple[str, ...]
    """The ``model`` names that reach this policy (the first is its resource's name)."""
    renderer_name: str | None = None
    weights_version: int | str = 0
    records_stability_info: bool = False
    """``sampling_client`` was created with ``record_stability_info=True``."""


def _provider(
    config: EndpointConfig,
    sampling_client: Any,
    base_model: str,
    tokenizer: Any,
    renderer_name: str | None,
    weights_version: int | str,
    records_stability_info: bool = False,
) -> TinkerChatProvider:
    return TinkerChatProvider(
        sampling_client,
        base_model=base_model,
        tokenizer=tokenizer,
        renderer_name=renderer_name,
        weights_version=weights_version,
        records_stability_info=records_stability_info,
        token_in_token_out=config.token_in_token_out,
        max_context_tokens=config.max_context_tokens,
        default_max_tokens=config.default_max_tokens,
        strict_context=config.strict_context,
    )


async def start_policy_endpoint(
    config: EndpointConfig, *, store: LightningStore, policies: Mapping[str, PolicyServing]
) -> Endpoint:
    """Serve several policies on one lean endpoint, each from its own sampling client.

    A request's ``model`` picks the policy (each name belongs to one policy); the resource's
    ``model`` is the first policy's first name, and an agent reaches another policy by asking
    for one of its names at the same URL. :meth:`Endpoint.swap` with ``policy=`` swaps one
    policy's weights and leaves the others'. Token-in-token-out reuse stays within a policy.

    Args:
        config: Lean mode only; ``model_name``, ``renderer_name``, ``model_aliases`` and
            ``litellm_dispatch`` are per policy here and must be left unset.
        store: Where calls are recorded.
        policies: Policy name -> what it serves; at least one, model names disjoint.

    Returns:
        The running endpoint (``Endpoint.policies`` holds the providers by policy name).
    """
    if config.mode != "lean" or config.model_aliases or config.litellm_dispatch or config.model_name:
        raise ValueError(
            "several policies need mode='lean' without model_name, model_aliases or litellm_dispatch"
        )
    if not policies:
        raise ValueError("start_policy_endpoint needs at least one policy")
    if not store.capabilities.get("thread_safe", False):
        store = LightningStoreThreaded(store)
    providers: dict[str, TinkerChatProvider] = {}
    routes: dict[str, TinkerChatProvider] = {}
    for name, serving in policies.items():
        provider = _provider(
            config,
            serving.sampling_client,
            serving.base_model,
            serving.tokenizer,
            serving.renderer_name,
            serving.weights_version,
            serving.records_stability_info,
        )
        providers[name] = provider
        for model in serving.models:
            if model in routes:
                raise ValueError(f"model name {model!r} is served by two policies")
            routes[model] = provider
    first_name, first = next(iter(policies.items()))
    served = first.models[0]
    litellm_model = register(providers[first_name], served)
    recorder = SpanRecorder(store)
    from agl_tinker.endpoint.lean_server import LeanServer

    server = LeanServer(
        providers[first_name],
        litellm_model,
        served,
        recorder=recorder,
        host=config.host,
        port=config.port,
        routes=routes,
    )
    freeze_survivors()  # what serves lives as long as the endpoint: out of the collector's view
    try:
        await server.start()
    except BaseException:
        unregister(litellm_model)
        raise
    return Endpoint(config, providers[first_name], server, litellm_model, recorder, policies=providers)


async def start_endpoint(
    config: EndpointConfig,
    *,
    store: LightningStore,
    sampling_client: Any,
    base_model: str,
    tokenizer: Any,
    weights_version: int | str = 0,
    records_stability_info: bool = False,
) -> Endpoint:
    """Start serving ``sampling_client`` as ``config`` says, recording calls into ``store``.

    ``records_stability_info``: the client was created with ``record_stability_info=True`` (each
    call then records its sample's ``sequence_id``; see :meth:`Endpoint.swap`)."""
    if config.mode == "proxy" and config.model_aliases:
        raise ValueError("model_aliases needs the lean endpoint (mode='lean'); LLMProxy serves one name")
    if not store.capabilities.get("thread_safe", False):
        store = LightningStoreThreaded(store)
    provider = _provider(
        config,
        sampling_client,
        base_model,
        tokenizer,
        config.renderer_name,
        weights_version,
        records_stability_info,
    )
    served = config.model_name or base_model
    litellm_model = register(provider, served)
    recorder = SpanRecorder(store)
    server: Any
    if config.mode == "lean":
        from agl_tinker.endpoint.lean_server import LeanServer

        server = LeanServer(
            provider,
            litellm_model,
            served,
            recorder=recorder,
            host=config.host,
            port=config.port,
            litellm_dispatch=config.litellm_dispatch,
            model_aliases=tuple(config.model_aliases),
        )
    elif config.mode == "proxy":
        from agl_tinker.endpoint.llmproxy import ProxyServer

        server = ProxyServer(
            provider,
            litellm_model,
            served,
            store=store,
            recorder=recorder,
            host=config.host,
            port=config.port,
        )
    else:
        raise ValueError(f"unknown endpoint mode {config.mode!r}; use 'lean' or 'proxy'")
    freeze_survivors()  # what serves lives as long as the endpoint: out of the collector's view
    try:
        await server.start()
    except BaseException:
        unregister(litellm_model)
        raise
    return Endpoint(config, provider, server, litellm_model, recorder)

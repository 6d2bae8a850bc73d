"""Make Agent-lightning's runner tracers deliver spans (``agl.emit_reward`` included) to the store.

Agent-lightning 0.3.0's tracers (``OtelTracer``, ``AgentOpsTracer``) send a rollout's spans to
a store that speaks OTLP through ``LightningStoreOTLPExporter``: at the start of each rollout
``enable_store_otlp(endpoint, rollout_id, attempt_id)`` points the exporter at the store's
``/v1/traces`` by assigning ``exporter._endpoint``. From opentelemetry-exporter-otlp-proto-http
1.4x on, the exporter posts through an HTTP client object built in its constructor with the
endpoint of that time (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, or ``http://localhost:4318``), so
the assignment no longer reaches the wire: every span, each reward among them, goes to
localhost:4318, fails after ~7 s of retries, and every rollout ends without a reward. The stock
``AgentOpsTracer`` fails one step earlier: its exporter is also AgentOps'
``AuthenticatedOTLPExporter``, whose ``export`` reads ``self._headers``/``self._session``, two
attributes that exporter no longer has, so every export fails with an ``AttributeError``.

:func:`repair_store_otlp_export` makes the endpoint switch reach that client too, and sends spans
bound for the store through the plain OTLP/HTTP exporter (the store needs no AgentOps token);
spans outside a rollout keep the exporter's own behaviour (bypassed by default). It is applied
when :mod:`agl_tinker.algorithm` is imported, i.e. in every process that builds a ``TinkerAlgorithm``
or a runner from this package, and in the runner processes forked from it.
"""

from __future__ import annotations

import logging
from typing import Any

from agentlightning.semconv import LightningResourceAttributes
from agentlightning.utils.otlp import LightningStoreOTLPExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

__all__ = ["exporter_endpoint", "repair_store_otlp_export"]

logger = logging.getLogger(__name__)

_REPAIRED = "_agl_tinker_endpoint_repaired"


def exporter_endpoint(exporter: Any) -> str | None:
    """The URL ``exporter`` really posts to (its HTTP client's, where it has one)."""
    client = getattr(exporter, "_client", None)
    endpoint = getattr(client, "_endpoint", None) if client is not None else None
    if isinstance(endpoint, str):
        return endpoint
    own = getattr(exporter, "_endpoint", None)
    return own if isinstance(own, str) else None


def _sync_client_endpoint(exporter: Any) -> None:
    # The one piece of opentelemetry internals touched: its HTTP client's target URL.
    client = getattr(exporter, "_client", None)
    if client is not None and hasattr(client, "_endpoint"):
        client._endpoint = exporter._endpoint


def _tag_with_attempt(spans: Any, rollout_id: str, attempt_id: str) -> None:
    """What ``LightningStoreOTLPExporter.export`` does first: the store files spans by these."""
    tag = Resource.create(
        {
            LightningResourceAttributes.ROLLOUT_ID.value: rollout_id,
            LightningResourceAttributes.ATTEMPT_ID.value: attempt_id,
        }
    )
    span: ReadableSpan
    for span in spans:
        span._resource = span.resource.merge(tag)


def repair_store_otlp_export() -> None:
    """Patch ``LightningStoreOTLPExporter`` so that switching it to the store switches its client.

    Idempotent. With an opentelemetry exporter that still posts to ``exporter._endpoint`` the
    patch changes nothing (the client attribute is absent).
    """
    cls: Any = LightningStoreOTLPExporter
    if getattr(cls, _REPAIRED, False):
        return
    enable = cls.enable_store_otlp
    disable = cls.disable_store_otlp
    export = cls.export

    def enable_store_otlp(self: Any, endpoint: str, rollout_id: str, attempt_id: str) -> None:
        enable(self, endpoint, rollout_id, attempt_id)
        _sync_client_endpoint(self)

    def disable_store_otlp(self: Any) -> None:
        disable(self)
        _sync_client_endpoint(self)

    def export_spans(self: Any, spans: Any) -> SpanExportResult:
        if self._rollout_id is None or self._attempt_id is None:
            return export(self, spans)  # type: ignore[no-any-return]
        _tag_with_attempt(spans, self._rollout_id, self._attempt_id)
        return OTLPSpanExporter.export(self, spans)

    enable_store_otlp.__doc__ = enable.__doc__
    disable_store_otlp.__doc__ = disable.__doc__
    export_spans.__doc__ = export.__doc__
    cls.enable_store_otlp = enable_store_otlp
    cls.disable_store_otlp = disable_store_otlp
    cls.export = export_spans
    setattr(cls, _REPAIRED, True)

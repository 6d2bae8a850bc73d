"""Session traces: ``RestClient.export_session_trace`` and ``tinker session export-trace``.

The service "builds a Perfetto trace (``.pftrace``) of the session's training and sampling requests"
and answers a signed download URL once the file is ready (``GET sessions/{id}/trace_export`` polled
until ``status`` is ``ready``; ``failed`` carries an ``error``). The simulator records every
future-creating request of a session (its route, the run or sampling session it targets, submission
and completion times, whether it failed) and builds the trace from that record on each export: one
track per training run or sampling session under the session's track, concurrent requests on lanes
of their track (Perfetto slices of one track must nest), written with the ``perfetto`` package's
protobuf classes. The record outlives the session (traces are exported after a run) and is bounded:
the last ``SESSIONS_KEPT`` sessions, ``SPANS_KEPT`` requests each.
"""

from __future__ import annotations

import collections
import dataclasses
import time
import zlib
from collections.abc import Callable
from typing import Any

from aiohttp import web

from fakes.tinker.errors import not_found

from .futures import Promise
from .http import _json
from .signing import Signer

SESSIONS_KEPT = 1_000
SPANS_KEPT = 100_000
EXPORTS_KEPT = 64
TRACE_FILES = "/sim-files/traces"


@dataclasses.dataclass
class Span:
    """One request: ``name`` (its route) on ``track`` (a run, sampling session or the session)."""

    track: str
    name: str
    start_ns: int
    end_ns: int | None = None
    failed: bool = False


class Timeline:
    """Every session's requests as spans, by request id (a retried submission is recorded once)."""

    def __init__(self) -> None:
        self._sessions: collections.OrderedDict[str, collections.OrderedDict[str, Span]] = (
            collections.OrderedDict()
        )

    def record(self, session_id: str, track: str, name: str, promise: Promise) -> None:
        """Start a span for ``promise`` now; it ends when the promise settles."""
        spans = self._sessions.get(session_id)
        if spans is None:
            spans = self._sessions[session_id] = collections.OrderedDict()
            while len(self._sessions) > SESSIONS_KEPT:
                self._sessions.popitem(last=False)
        if promise.request_id in spans:
            return
        span = spans[promise.request_id] = Span(track, name, time.time_ns())
        while len(spans) > SPANS_KEPT:
            spans.popitem(last=False)

        def settled() -> None:
            span.end_ns = time.time_ns()
            span.failed = promise.outcome()[1] is not None

        promise.on_settled(settled)

    def spans(self, session_id: str) -> list[Span] | None:
        """The session's spans in submission order; None if it never made a request."""
        spans = self._sessions.get(session_id)
        return None if spans is None else list(spans.values())


def _uuid(*parts: str) -> int:
    return zlib.crc32("\0".join(parts).encode()) | (len(parts) << 32)


def build_trace(session_id: str, spans: list[Span], now_ns: int) -> bytes:
    """A Perfetto trace of ``spans``; a request still running ends at ``now_ns``."""
    from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import TrackEvent
    from perfetto.trace_builder.proto_builder import TraceProtoBuilder

    builder = TraceProtoBuilder()
    root = _uuid(session_id)
    builder.add_packet().track_descriptor.MergeFrom(_descriptor(root, f"session {session_id}"))
    lanes: dict[str, list[int]] = {}  # track -> each lane's last end
    for span in sorted(spans, key=lambda s: s.start_ns):
        end_ns = span.end_ns if span.end_ns is not None else now_ns
        track_lanes = lanes.get(span.track)
        if track_lanes is None:
            track_lanes = lanes[span.track] = []
            builder.add_packet().track_descriptor.MergeFrom(
                _descriptor(_uuid(session_id, span.track), span.track, root)
            )
        lane = next((i for i, last in enumerate(track_lanes) if last <= span.start_ns), len(track_lanes))
        if lane == len(track_lanes):
            track_lanes.append(end_ns)
            parent = _uuid(session_id, span.track)
            name = f"{span.track} #{lane}"
            builder.add_packet().track_descriptor.MergeFrom(
                _descriptor(_uuid(session_id, span.track, str(lane)), name, parent)
            )
        track_lanes[lane] = end_ns
        track_uuid = _uuid(session_id, span.track, str(lane))
        for timestamp, kind in (
            (span.start_ns, TrackEvent.TYPE_SLICE_BEGIN),
            (end_ns, TrackEvent.TYPE_SLICE_END),
        ):
            packet = builder.add_packet()
            packet.timestamp = timestamp
            packet.trusted_packet_sequence_id = 1
            packet.track_event.type = kind
            packet.track_event.track_uuid = track_uuid
            if kind == TrackEvent.TYPE_SLICE_BEGIN:
                packet.track_event.name = span.name
                annotation = packet.track_event.debug_annotations.add()
                annotation.name = "outcome"
                annotation.string_value = (
                    "running" if span.end_ns is None else "failed" if span.failed else "ok"
                )
    return builder.serialize()


def _descriptor(uuid: int, name: str, parent: int | None = None) -> Any:
    from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import TrackDescriptor

    descriptor = TrackDescriptor(uuid=uuid, name=name)
    if parent is not None:
        descriptor.parent_uuid = parent
    return descriptor


class TraceRoutes:
    """``GET sessions/{id}/trace_export`` (ready at once) and the signed ``.pftrace`` download."""

    def __init__(self, timeline: Timeline, signer: Signer, known: Callable[[str], bool]) -> None:
        """``known(session_id)``: whether the service has (or had) the session."""
        self.timeline = timeline
        self._signer = signer
        self._known = known
        self._exports: collections.OrderedDict[str, bytes] = collections.OrderedDict()

    def routes(self, api: str) -> list[web.RouteDef]:
        return [
            web.get(f"{api}/sessions/{{session_id}}/trace_export", self._export),
            web.get(f"{TRACE_FILES}/{{session_id}}.pftrace", self._download),
        ]

    async def _export(self, request: web.Request) -> web.Response:
        session_id = request.match_info["session_id"]
        spans = self.timeline.spans(session_id)
        if spans is None and not self._known(session_id):
            raise not_found(f"session {session_id!r} not found", path="trace_export")
        self._exports[session_id] = build_trace(session_id, spans or [], time.time_ns())
        self._exports.move_to_end(session_id)
        while len(self._exports) > EXPORTS_KEPT:
            self._exports.popitem(last=False)
        url = self._signer.url(f"{request.scheme}://{request.host}", f"{TRACE_FILES}/{session_id}.pftrace")
        return _json({"status": "ready", "url": url})

    async def _download(self, request: web.Request) -> web.Response:
        session_id = request.match_info["session_id"]
        self._signer.check(request, f"{TRACE_FILES}/{session_id}.pftrace")
        trace = self._exports.get(session_id)
        if trace is None:
            raise not_found(f"no exported trace for session {session_id!r}", path="sim-files")
        return web.Response(body=trace, content_type="application/octet-stream")

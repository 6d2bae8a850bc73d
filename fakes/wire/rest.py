"""The REST routes of ``tinker.RestClient`` (and the ``tinker`` CLI's run, checkpoint and session
commands) over the simulator's checkpoint store and the wire service's sessions.

External weights are downloaded as the service lets them be: ``external_weights_urls`` answers
signed URLs (``signing.py``) that ``GET /sim-files/...`` serves without an API key, as a storage
bucket would.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from aiohttp import web
from tinker import types

from fakes.tinker.checkpoints import TinkerPath
from fakes.tinker.errors import bad_request, not_found

from .http import _json
from .service import WireService
from .signing import Signer

FILES = "/sim-files"


def _page(request: web.Request, default_limit: int) -> tuple[int, int]:
    """``(limit, offset)`` from the query; a 400 for values that are not non-negative integers."""
    try:
        limit = int(request.query.get("limit", default_limit))
        offset = int(request.query.get("offset", 0))
    except ValueError:
        raise bad_request("limit and offset must be integers", path=request.path) from None
    if limit < 0 or offset < 0:
        raise bad_request("limit and offset must be >= 0", path=request.path)
    return limit, offset


async def _json_object(request: web.Request) -> dict[str, Any]:
    """The request's JSON body, which must be an object: a 400 with the service's ``{"detail"}``
    body otherwise (malformed JSON is one already, by the server's middleware)."""
    body = await request.json()
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", path=request.path)
    return body


def _get_training_run(run_id: str) -> Callable[[Any], Any]:
    return lambda rest: rest.get_training_run(run_id)


class RestRoutes:
    """Handlers for the REST paths; every store read runs through the simulated ``RestClient``."""

    def __init__(self, service: WireService, signer: Signer) -> None:
        self.service = service
        self._signer = signer

    @property
    def _store(self) -> Any:
        return self.service.sim._runtime.store

    def routes(self, api: str) -> list[web.RouteDef]:
        checkpoint = f"{api}/training_runs/{{run_id}}/checkpoints/{{kind}}/{{name}}"
        return [
            web.put(f"{checkpoint}/ttl", self._set_ttl),
            web.post(f"{checkpoint}/publish", self._publish),
            web.delete(f"{checkpoint}/publish", self._unpublish),
            web.get(f"{checkpoint}/external_weights_urls", self._external_weights_urls),
            web.post(f"{api}/copy_weights", self._copy_weights),
            web.get(f"{FILES}/{{run_id}}/{{kind}}/{{name}}/{{file}}", self._download),
            web.get(f"{api}/training_runs", self._list_training_runs),
            web.get(f"{api}/training_runs/{{run_id}}", self._training_run),
            web.get(f"{api}/training_runs/{{run_id}}/checkpoints", self._list_checkpoints),
            web.delete(
                f"{api}/training_runs/{{run_id}}/checkpoints/{{checkpoint_id:.+}}", self._delete_checkpoint
            ),
            web.get(f"{api}/checkpoints", self._list_user_checkpoints),
            web.post(f"{api}/weights_info", self._weights_info),
            web.get(f"{api}/sessions", self._list_sessions),
            web.get(f"{api}/sessions/{{session_id}}", self._get_session),
        ]

    async def _rest(self, fn: Callable[[Any], Any]) -> Any:
        return await self.service.rest_call(fn)

    async def _training_run(self, request: web.Request) -> web.Response:
        run_id = request.match_info["run_id"]
        return _json(await self._rest(lambda rest: rest.get_training_run(run_id)))

    async def _list_checkpoints(self, request: web.Request) -> web.Response:
        run_id = request.match_info["run_id"]
        return _json(await self._rest(lambda rest: rest.list_checkpoints(run_id)))

    async def _delete_checkpoint(self, request: web.Request) -> web.Response:
        path = f"tinker://{request.match_info['run_id']}/{request.match_info['checkpoint_id']}"
        await self._rest(lambda rest: rest.delete_checkpoint_from_tinker_path(path))
        return _json(None)

    async def _list_training_runs(self, request: web.Request) -> web.Response:
        limit, offset = _page(request, 20)
        store = self.service.sim._runtime.store
        run_ids = store.run_ids()
        runs = [await self._rest(_get_training_run(run_id)) for run_id in run_ids[offset : offset + limit]]
        cursor = types.Cursor(offset=offset, limit=limit, total_count=len(run_ids))
        return _json(types.TrainingRunsResponse(training_runs=runs, cursor=cursor))

    async def _list_user_checkpoints(self, request: web.Request) -> web.Response:
        limit, offset = _page(request, 100)
        store = self.service.sim._runtime.store
        every = sorted(
            (c for r in store.run_ids() for c in store.list(r)), key=lambda c: c.time, reverse=True
        )
        cursor = types.Cursor(offset=offset, limit=limit, total_count=len(every))
        return _json(types.CheckpointsListResponse(checkpoints=every[offset : offset + limit], cursor=cursor))

    async def _weights_info(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        path = TinkerPath.parse(str(body.get("tinker_path", "")))
        store = self.service.sim._runtime.store
        if path.name not in {c.checkpoint_id.split("/", 1)[1] for c in store.list(path.run_id)}:
            raise not_found(f"checkpoint {path} not found", path="weights_info")
        info = store.read_run(path.run_id)
        return _json(
            types.WeightsInfoResponse(
                base_model=info["base_model"],
                is_lora=True,
                lora_rank=info["rank"],
                train_unembed=info.get("train_unembed"),
                train_mlp=info.get("train_mlp"),
                train_attn=info.get("train_attn"),
            )
        )

    async def _list_sessions(self, request: web.Request) -> web.Response:
        limit, offset = _page(request, 20)
        ids = list(self.service.sessions)[::-1]  # newest first
        return _json(types.ListSessionsResponse(sessions=ids[offset : offset + limit]))

    async def _get_session(self, request: web.Request) -> web.Response:
        session_id = request.match_info["session_id"]
        if session_id not in self.service.sessions:
            raise not_found(f"session {session_id!r} not found", path="sessions")
        prefix = f"{session_id}:"
        runs = [m for m in self.service.runs if m.startswith(prefix)]
        runs += [
            r for r in self.service.sim._runtime.store.run_ids() if r.startswith(prefix) and r not in runs
        ]
        samplers = [s for s in self.service.samplers if s.startswith(prefix)]
        return _json(types.GetSessionResponse(training_run_ids=runs, sampler_ids=samplers))

    # ---- checkpoint TTL, publishing, copies, external weights ---------------------------------
    @staticmethod
    def _path(request: web.Request) -> TinkerPath:
        m = request.match_info
        return TinkerPath.parse(f"tinker://{m['run_id']}/{m['kind']}/{m['name']}")

    async def _set_ttl(self, request: web.Request) -> web.Response:
        ttl = (await _json_object(request)).get("ttl_seconds")
        if ttl is not None and not isinstance(ttl, int):
            raise bad_request("ttl_seconds must be an integer or null", path=request.path)
        self._store.set_ttl(self._path(request), ttl)
        return _json(None)

    async def _publish(self, request: web.Request) -> web.Response:
        self._store.set_public(self._path(request), True)
        return _json(None)

    async def _unpublish(self, request: web.Request) -> web.Response:
        self._store.set_public(self._path(request), False)
        return _json(None)

    async def _external_weights_urls(self, request: web.Request) -> web.Response:
        path = self._path(request)
        expires = self._signer.expiry()
        origin = f"{request.scheme}://{request.host}"
        urls = {}
        for name in self._store.files(path):
            rel = f"{FILES}/{quote(path.run_id, safe='')}/{path.kind}/{quote(path.name, safe='')}/{name}"
            urls[name] = self._signer.url(origin, rel, key=f"{path}/{name}", expires=expires)
        when = datetime.fromtimestamp(expires, UTC)
        return _json(types.ExternalWeightsUrlsResponse(urls=urls, expires=when))

    async def _download(self, request: web.Request) -> web.StreamResponse:
        path, name = self._path(request), request.match_info["file"]
        self._signer.check(request, f"{path}/{name}")
        files = self._store.files(path)
        if name not in files:
            raise not_found(f"{path} has no file {name!r}", path="sim-files")
        return web.FileResponse(files[name])

    async def _copy_weights(self, request: web.Request) -> web.Response:
        body = types.CopyWeightsRequest.model_validate(await request.json())
        if body.session_id is not None:
            if body.model_seq_id is None:
                raise bad_request("copy_weights with session_id needs model_seq_id", path="copy_weights")
            self.service.heartbeat(body.session_id)
            run_id = f"{body.session_id}:train:{body.model_seq_id}"
        elif body.destination_project_id:
            run_id = f"{uuid.uuid4()}:train:0"
        else:
            raise bad_request("copy_weights needs destination_project_id or session_id", path="copy_weights")
        copied = self._store.copy(TinkerPath.parse(body.source_path), run_id, body.ttl_seconds)
        return _json(types.CopyWeightsResponse(tinker_path=str(copied)))

"""Checkpoints as real files, addressed by ``tinker://<run-id>/<kind>/<name>`` paths.

``<root>/<run-id>/run.json`` describes the training run (base model, LoRA config, metadata);
``<root>/<run-id>/weights/<name>/`` holds parameters plus optimizer state (``save_state``) and
``<root>/<run-id>/sampler_weights/<name>/`` parameters only (``save_weights_for_sampler``);
``<root>/<run-id>/external_weights/<name>/`` a PEFT-style LoRA adapter (``save_weights_external``:
``adapter_model.safetensors`` and ``adapter_config.json``), the files ``tinker checkpoint download``
fetches. A fresh process can therefore resume from a path another process saved.

Each checkpoint's ``meta.json`` also says whether it is published (``public``) and when it
expires (``expires_at``, from a TTL of 1 hour to 10 years, as the service allows); an expired
checkpoint is gone: deleted when next listed, not found when loaded.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tinker import types

from . import errors

if TYPE_CHECKING:
    from .optim import Adam
    from .policy import Policy

KINDS = {"weights": "training", "sampler_weights": "sampler", "external_weights": "external"}
MIN_TTL_S, MAX_TTL_S = 3600, 10 * 365 * 86400
EXTERNAL_FILES = ("adapter_config.json", "adapter_model.safetensors")


def check_ttl(ttl_seconds: int | None) -> None:
    """The service's TTL range: None (never expires) or 1 hour to 10 years."""
    if ttl_seconds is not None and not MIN_TTL_S <= ttl_seconds <= MAX_TTL_S:
        raise errors.bad_request(
            f"ttl_seconds must be between {MIN_TTL_S} (1 hour) and {MAX_TTL_S} (10 years), got {ttl_seconds}",
            path="checkpoints/ttl",
        )


def _expires_at(ttl_seconds: int | None) -> str | None:
    check_ttl(ttl_seconds)
    return None if ttl_seconds is None else (datetime.now(UTC) + timedelta(seconds=ttl_seconds)).isoformat()


def _expired(meta: dict[str, Any]) -> bool:
    expires = meta.get("expires_at")
    return expires is not None and datetime.fromisoformat(expires) <= datetime.now(UTC)


@dataclasses.dataclass(frozen=True)
class TinkerPath:
    run_id: str
    kind: str
    name: str

    @classmethod
    def parse(cls, path: str) -> TinkerPath:
        if not path.startswith("tinker://"):
            raise errors.bad_request(f"not a tinker path: {path!r}", path="weights/load")
        parts = path[len("tinker://") :].split("/")
        if len(parts) != 3 or parts[1] not in KINDS or not parts[0] or not parts[2]:
            raise errors.bad_request(
                "expected tinker://<run-id>/weights/<name>, .../sampler_weights/<name> or "
                f".../external_weights/<name>, got {path!r}",
                path="weights/load",
            )
        return cls(parts[0], parts[1], parts[2])

    def __str__(self) -> str:
        return f"tinker://{self.run_id}/{self.kind}/{self.name}"


@dataclasses.dataclass(frozen=True)
class Snapshot:
    meta: dict[str, Any]
    params: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None


class CheckpointStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, path: TinkerPath) -> Path:
        return self.root / path.run_id / path.kind / path.name

    def write_run(self, run_id: str, info: dict[str, Any]) -> None:
        run_dir = self.root / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "run.json").write_text(json.dumps(info, indent=1, sort_keys=True))

    def run_ids(self) -> list[str]:
        """Every training run with a ``run.json``, oldest first."""
        files = self.root.glob("*/run.json") if self.root.is_dir() else []
        return [f.parent.name for f in sorted(files, key=lambda f: f.stat().st_mtime)]

    def read_run(self, run_id: str) -> dict[str, Any]:
        file = self.root / run_id / "run.json"
        if not file.is_file():
            raise errors.not_found(f"training run {run_id!r} not found", path="training_runs")
        return dict(json.loads(file.read_text()))

    def save(
        self,
        path: TinkerPath,
        meta: dict[str, Any],
        params: dict[str, torch.Tensor],
        optimizer: dict[str, Any] | None,
        overwrite: bool = True,
        ttl_seconds: int | None = None,
    ) -> str:
        """Parameters (and optimizer state) under ``path``; an external path gets the adapter files."""
        target = self._dir(path)
        if target.exists() and not overwrite:
            raise errors.bad_request(f"checkpoint {path} already exists (pass overwrite=True)")
        expires_at = _expires_at(ttl_seconds)
        staging = target.with_name(target.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        tensors = {k: v.detach().clone().contiguous() for k, v in params.items()}
        if path.kind == "external_weights":
            _write_adapter(staging, meta, tensors)
        else:
            torch.save({"params": tensors, "optimizer": optimizer}, staging / "state.pt")
        stamped = {
            **meta,
            "time": datetime.now(UTC).isoformat(),
            "has_optimizer": optimizer is not None,
            "expires_at": expires_at,
        }
        (staging / "meta.json").write_text(json.dumps(stamped, indent=1, sort_keys=True))
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        return str(path)

    def meta(self, path: TinkerPath) -> dict[str, Any]:
        """The checkpoint's ``meta.json``; 404 if it does not exist or has expired."""
        file = self._dir(path) / "meta.json"
        meta = json.loads(file.read_text()) if file.is_file() else None
        if meta is None or _expired(meta):
            raise errors.not_found(f"checkpoint {path} not found", path="checkpoints")
        return dict(meta)

    def _update(self, path: TinkerPath, **changes: Any) -> None:
        meta = {**self.meta(path), **changes}
        (self._dir(path) / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))

    def set_ttl(self, path: TinkerPath, ttl_seconds: int | None) -> None:
        """Expire the checkpoint ``ttl_seconds`` from now, or never (None)."""
        self._update(path, expires_at=_expires_at(ttl_seconds))

    def set_public(self, path: TinkerPath, public: bool) -> None:
        self._update(path, public=public)

    def files(self, path: TinkerPath) -> dict[str, Path]:
        """An external checkpoint's files by name (what its download URLs serve)."""
        if path.kind != "external_weights":
            raise errors.bad_request(f"{path} is not an external weights checkpoint", path="checkpoints")
        self.meta(path)
        return {name: self._dir(path) / name for name in EXTERNAL_FILES}

    def copy(self, source: TinkerPath, run_id: str, ttl_seconds: int | None) -> TinkerPath:
        """``source`` copied into a new training run ``run_id`` (not trainable, unpublished); 409 if
        ``run_id`` holds that checkpoint already (the same copy asked twice)."""
        meta = self.meta(source)
        expires_at = _expires_at(ttl_seconds)
        copied = TinkerPath(run_id, source.kind, source.name)
        if self._dir(copied).exists():
            raise errors.conflict(f"checkpoint {copied} already exists", path="copy_weights")
        self.write_run(
            run_id, {**self.read_run(source.run_id), "copied_from": str(source), "trainable": False}
        )
        shutil.copytree(self._dir(source), self._dir(copied))
        meta.update(expires_at=expires_at, public=False, time=datetime.now(UTC).isoformat())
        (self._dir(copied) / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        return copied

    def load(self, path: TinkerPath) -> Snapshot:
        directory = self._dir(path)
        if path.kind == "external_weights":
            raise errors.bad_request(f"{path} is in an external format: load a weights/ checkpoint")
        if not (directory / "state.pt").is_file() or _expired(
            json.loads((directory / "meta.json").read_text())
        ):
            raise errors.not_found(f"checkpoint {path} not found")
        state = torch.load(directory / "state.pt", weights_only=True)
        meta = json.loads((directory / "meta.json").read_text())
        return Snapshot(meta, state["params"], state["optimizer"])

    def delete(self, path: TinkerPath) -> None:
        directory = self._dir(path)
        if not directory.exists():
            raise errors.not_found(f"checkpoint {path} not found", path="checkpoints/delete")
        shutil.rmtree(directory)

    def list(self, run_id: str) -> list[types.Checkpoint]:
        out = []
        for kind, checkpoint_type in KINDS.items():
            kind_dir = self.root / run_id / kind
            for directory in sorted(kind_dir.glob("*")) if kind_dir.is_dir() else []:
                if not (directory / "meta.json").is_file():
                    continue
                meta = json.loads((directory / "meta.json").read_text())
                if _expired(meta):
                    shutil.rmtree(directory, ignore_errors=True)
                    continue
                path = TinkerPath(run_id, kind, directory.name)
                expires = meta.get("expires_at")
                out.append(
                    types.Checkpoint(
                        checkpoint_id=f"{kind}/{directory.name}",
                        checkpoint_type=checkpoint_type,  # type: ignore[arg-type]
                        time=datetime.fromisoformat(meta["time"]),
                        tinker_path=str(path),
                        size_bytes=sum(
                            f.stat().st_size for f in directory.iterdir() if f.name != "meta.json"
                        ),
                        public=bool(meta.get("public", False)),
                        user_metadata=meta.get("user_metadata"),
                        expires_at=None if expires is None else datetime.fromisoformat(expires),
                    )
                )
        return sorted(out, key=lambda c: c.time)


def _write_adapter(directory: Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """The simulated policy's LoRA parameters as a PEFT-style adapter: its tensors under their own
    names (the simulated model is not a transformer: no HF architecture loads them)."""
    from safetensors.torch import save_file

    save_file(tensors, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "base_model_name_or_path": meta.get("base_model"),
        "r": meta.get("rank"),
        "lora_alpha": 32,
        "target_modules": sorted(tensors),
        "task_type": "CAUSAL_LM",
    }
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=1, sort_keys=True))


def restore(store: CheckpointStore, path: TinkerPath, policy: Policy, optimizer: Adam | None) -> None:
    """Load ``path``'s parameters into ``policy`` (and its optimizer state into ``optimizer``, if
    given); a checkpoint of another base model or LoRA rank, or without the optimizer state asked
    for, is a ``BadRequestError``."""
    snapshot = store.load(path)
    if snapshot.meta["base_model"] != policy.config.base_model.name:
        raise errors.bad_request(
            f"{path} was trained from {snapshot.meta['base_model']}, not this base model"
        )
    if snapshot.meta["rank"] != policy.config.rank:
        raise errors.bad_request(
            f"{path} has LoRA rank {snapshot.meta['rank']}, this run has {policy.config.rank}"
        )
    with torch.no_grad():
        for name, value in snapshot.params.items():
            policy.params[name].copy_(value)
    policy.invalidate()
    if optimizer is not None:
        if snapshot.optimizer is None:
            raise errors.bad_request(f"{path} has no optimizer state (saved for sampling)")
        optimizer.load_state_dict(snapshot.optimizer)

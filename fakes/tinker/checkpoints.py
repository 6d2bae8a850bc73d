"""Checkpoints as real files, addressed by ``tinker://<run-id>/<kind>/<name>`` paths.

``<root>/<run-id>/run.json`` describes the training run (base model, LoRA config, metadata);
``<root>/<run-id>/weights/<name>/`` holds parameters plus optimizer state (``save_state``) and
``<root>/<run-id>/sampler_weights/<name>/`` parameters only (``save_weights_for_sampler``).
A fresh process can therefore resume from a path another process saved.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from tinker import types

from . import errors

KINDS = {"weights": "training", "sampler_weights": "sampler"}


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
                f"expected tinker://<run-id>/weights/<name> or .../sampler_weights/<name>, got {path!r}",
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
    ) -> str:
        target = self._dir(path)
        if target.exists() and not overwrite:
            raise errors.bad_request(f"checkpoint {path} already exists (pass overwrite=True)")
        staging = target.with_name(target.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        state = {"params": {k: v.detach().clone() for k, v in params.items()}, "optimizer": optimizer}
        torch.save(state, staging / "state.pt")
        stamped = {**meta, "time": datetime.now(UTC).isoformat(), "has_optimizer": optimizer is not None}
        (staging / "meta.json").write_text(json.dumps(stamped, indent=1, sort_keys=True))
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        return str(path)

    def load(self, path: TinkerPath) -> Snapshot:
        directory = self._dir(path)
        if not (directory / "state.pt").is_file():
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
                path = TinkerPath(run_id, kind, directory.name)
                out.append(
                    types.Checkpoint(
                        checkpoint_id=f"{kind}/{directory.name}",
                        checkpoint_type=checkpoint_type,  # type: ignore[arg-type]
                        time=datetime.fromisoformat(meta["time"]),
                        tinker_path=str(path),
                        size_bytes=(directory / "state.pt").stat().st_size,
                        user_metadata=meta.get("user_metadata"),
                    )
                )
        return sorted(out, key=lambda c: c.time)

"""What a run is: the settings that define its training, recorded in ``<log_path>/run.json``.

A ``log_path`` is one run. Resuming it with another model, renderer, LoRA rank, loss, policies
or dataset would load weights trained for something else (or fail deep inside Tinker), so a resume
compares the new identity with the recorded one and refuses a difference in one line naming the
fields, unless ``TrainConfig.identity_override`` says it is meant (the change is then recorded in
``run.json`` and in the first step's metrics). Settings that may change on resume (``max_steps``,
``eval_every``, ``learning_rate``, timeouts...) are not part of the identity.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from agl_tinker.loop.config import ConfigError, TrainConfig

__all__ = [
    "IDENTITY_FIELDS",
    "RUN_FILE",
    "IdentityMismatch",
    "backend_description",
    "config_identity",
    "dataset_fingerprint",
    "differences",
    "read_run",
    "record_run",
]

RUN_FILE = "run.json"
IDENTITY_FIELDS = ("model_name", "renderer_name", "lora_rank", "loss_fn", "loss_fn_config", "policies")
"""The ``TrainConfig`` fields that define a run; with the training dataset's fingerprint."""

DATASET_KEY = "dataset"


class IdentityMismatch(ConfigError):
    """The ``log_path`` holds a run with another identity."""


def _plain(value: Any) -> Any:
    """``value`` as JSON data (chz configs as dicts of their fields, enums as their values)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "__chz_fields__"):
        return {name: _plain(getattr(value, name)) for name in sorted(value.__chz_fields__)}
    if hasattr(value, "value") and not isinstance(value, (str, int, float, bool)):
        return _plain(value.value)
    return value


def config_identity(config: TrainConfig) -> dict[str, Any]:
    """The identity fields of ``config``, as JSON data."""
    return {name: _plain(getattr(config, name)) for name in IDENTITY_FIELDS}


def dataset_fingerprint(tasks: Iterable[Mapping[str, Any]]) -> str:
    """A short hash of the training tasks' content, in their given order."""
    digest = hashlib.sha256()
    for task in tasks:
        digest.update(json.dumps(_plain(dict(task)), sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def backend_description() -> str:
    """Where training runs: ``simulator (in process)``, or ``live Tinker at URL`` (``TINKER_BASE_URL``:
    the service, or a wire simulator such as ``agl-tinker sim-server``'s, which the run cannot tell
    apart), or ``live Tinker at the Tinker service`` (the SDK's default URL)."""
    from agl_tinker import backend

    if backend.backend_name() == "sim":
        return "simulator (in process)"
    url = os.environ.get("TINKER_BASE_URL") or "the Tinker service"
    return f"live Tinker at {url}"


def read_run(log_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The recorded ``run.json`` of ``log_path``, or ``None`` when there is none (a new run)."""
    path = Path(log_path) / RUN_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} is not readable JSON ({e}); restore it, or use another log_path") from e
    return data if isinstance(data, dict) else None


def differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Fields present in both whose values differ: name -> (recorded, current)."""
    return {
        name: (recorded[name], current[name])
        for name in sorted(set(recorded) & set(current))
        if recorded[name] != current[name]
    }


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def mismatch_error(log_path: str, changed: Mapping[str, tuple[Any, Any]]) -> IdentityMismatch:
    fields = ", ".join(f"{name} {_short(old)} -> {_short(new)}" for name, (old, new) in changed.items())
    return IdentityMismatch(
        f"log_path={log_path!r} holds another run ({fields}): use another log_path, or set "
        "identity_override=true to resume it anyway (recorded in run.json and the metrics)"
    )


def check_identity(config: TrainConfig, current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Compare ``current`` with the identity recorded in ``config.log_path``; the differences.

    Raises :class:`IdentityMismatch` for any difference unless ``config.identity_override`` (or
    ``fresh_start``, which sets the earlier run aside). Nothing recorded: no differences.
    """
    if config.fresh_start:
        return {}
    recorded = read_run(config.log_path)
    if recorded is None:
        return {}
    changed = differences(recorded.get("identity", {}), current)
    if changed and not config.identity_override:
        raise mismatch_error(config.log_path, changed)
    return changed


def record_run(config: TrainConfig, tasks: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Check and write ``run.json`` (identity, backend, outputs); the metrics an override adds.

    Raises :class:`IdentityMismatch` as :func:`check_identity` does.
    """
    identity = {**config_identity(config), DATASET_KEY: dataset_fingerprint(tasks)}
    changed = check_identity(config, identity)
    recorded = read_run(config.log_path) if not config.fresh_start else None
    overrides = list((recorded or {}).get("overrides", []))
    if changed:
        overrides.append({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "changed": sorted(changed)})
    path = Path(config.log_path) / RUN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"identity": identity, "backend": backend_description(), "outputs": str(Path(config.log_path))}
    if overrides:
        data["overrides"] = overrides
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
    if not changed:
        return {}
    return {"run/identity_override": 1, **{f"run/identity_changed/{name}": 1 for name in changed}}

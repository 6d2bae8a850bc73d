"""Checks that a run can start, done before any store, server or runner does.

A misconfigured run should fail in a second with one sentence naming the setting and the fix,
not minutes later inside a runner, a Hugging Face retry loop or four tracebacks.
:func:`check_setup` is what ``TinkerAlgorithm`` (so also ``agl.Trainer``) and every ``agl-tinker``
training command call first. Each check raises :class:`SetupError` (a :class:`ConfigError`, so
callers that caught configuration errors still do) or :class:`agl_tinker.backend.BackendError`.
"""

from __future__ import annotations

import os
from pathlib import Path

from tinker_cookbook import model_info

from agl_tinker import backend
from agl_tinker.loop.config import ConfigError, TrainConfig
from agl_tinker.run.claim import claim_run

__all__ = ["SetupError", "check_early", "check_log_path", "check_model", "check_setup"]


class SetupError(ConfigError):
    """The run cannot start as configured; the message names the setting and the fix."""


def check_setup(config: TrainConfig, *, check_service: bool = True) -> None:
    """Check ``config``'s log path, the backend's credentials and the model, in that order, then
    claim the log path for this run (:func:`agl_tinker.run.claim.claim_run`). The config's own
    values were checked when it was built (:mod:`agl_tinker.loop.config_rules`).

    ``check_service=False`` skips the backend and model checks (for a caller that passes its own
    service object, e.g. a test double).
    """
    check_log_path(config.log_path)
    if check_service:
        check_model(config.model_name, config.renderer_name)
    claim_run(config)  # one run per log path: held until the run ends (or this process does)


def check_early(log_path: str, model_name: str) -> None:
    """What can be checked before a ``TrainConfig`` exists, at no cost: the log path, live mode's
    credentials, and a model the offline simulator cannot serve. :func:`check_setup` repeats them."""
    check_log_path(log_path)
    if backend.backend_name() == "live":
        backend.require_credentials()
    else:
        _check_offline_model(model_name)


def _check_offline_model(model_name: str) -> None:
    problem = backend.offline_model_problem(model_name)
    if problem is not None:
        raise SetupError(
            f"model_name={model_name!r}: {problem}; set model_name, or AGL_TINKER_BACKEND=live for Tinker's models"
        )


def check_log_path(log_path: str) -> None:
    """``log_path`` is a writable directory, or can be created as one; nothing is created here."""
    path = Path(log_path).expanduser()
    if path.exists() and not path.is_dir():
        raise SetupError(f"log_path={log_path!r} is a file, not a directory: choose another log_path")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise SetupError(
            f"log_path={log_path!r} is under the file {str(existing)!r}: choose a log_path inside a directory"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SetupError(f"log_path={log_path!r}: {str(existing)!r} is not writable: choose another log_path")


def check_model(model_name: str, renderer_name: str | None = None) -> None:
    """The backend serves ``model_name``, the simulator has its tokenizer, and (unless
    ``renderer_name`` is given) the cookbook recommends a renderer for it.

    Raises :class:`agl_tinker.backend.BackendError` for a missing key (live) or an unreachable
    service, :class:`SetupError` for a model the backend does not serve.
    """
    name = backend.backend_name()
    if name == "sim":
        _check_offline_model(model_name)  # cheap: before the catalog
    supported = backend.supported_models(name)
    if model_name not in supported:
        where = "the offline simulator" if name == "sim" else "Tinker"
        raise SetupError(
            f"model_name={model_name!r} is not served by {where}; choose one of: {', '.join(sorted(supported))}"
        )
    if renderer_name is not None:
        return
    try:
        model_info.get_recommended_renderer_name(model_name)
    except Exception as e:  # the cookbook raises ValueError/KeyError for models it does not know
        raise SetupError(
            f"model_name={model_name!r}: the cookbook has no renderer for it ({e}); set renderer_name"
        ) from e

"""Real coding-agent harnesses from the npm registry, run unchanged against a rollout URL (issue 32).

``harness_bin`` installs ``@openai/codex`` and ``opencode-ai`` once into a cache directory
(``AGL_TINKER_NPM_CACHE``, default ``~/.cache/agl-tinker/npm``) and returns the ``node_modules/.bin``
folder, or a reason to skip. ``run_codex`` and ``run_opencode`` run one task in a scratch directory
with the harness's safest settings: Codex ``exec`` with a read-only sandbox and approval ``never``
(a command that needs more fails instead of asking), opencode with ``edit``, ``bash`` and
``webfetch`` denied. Both get a private home (``CODEX_HOME``; XDG folders), so nothing of the
user's own configuration is read or written.

Codex CLI speaks the Responses API (``wire_api = "responses"``; its chat wire API is gone). opencode
speaks chat completions with ``max_tokens: 32000`` by default, which the endpoint clamps to the
context. opencode also asks its ``small_model`` for a session title; that model points at the bare
endpoint (not the rollout path), so the title call is served but not recorded in the rollout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import tinker
from tinker_cookbook.rl.data_processing import assemble_training_data, compute_advantages
from tinker_cookbook.rl.types import TrajectoryGroup

from agl_tinker.backend import service_client
from agl_tinker.core.trajectory import alignment_trajectory
from agl_tinker.endpoint.model_names import slash_free_alias

PACKAGES = ("@openai/codex", "opencode-ai")
TASK_PROMPT = "List the files in this directory, then say done."


def npm_cache() -> Path:
    return Path(os.environ.get("AGL_TINKER_NPM_CACHE", Path.home() / ".cache" / "agl-tinker" / "npm"))


def harness_bin() -> Path | str:
    """The ``.bin`` folder holding ``codex`` and ``opencode``, installing them if needed; or why not."""
    cache = npm_cache()
    bin_dir = cache / "node_modules" / ".bin"
    if all((bin_dir / name).exists() for name in ("codex", "opencode")):
        return bin_dir
    npm = shutil.which("npm")
    if npm is None:
        return "npm is not installed"
    cache.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(cache), *PACKAGES],
            capture_output=True,
            text=True,
            timeout=600,
        )
    except subprocess.TimeoutExpired:
        return "npm install of the harnesses took over 10 minutes"
    if done.returncode != 0:
        return f"npm install of {' '.join(PACKAGES)} failed: {done.stderr.strip()[-300:]}"
    return bin_dir


def _run_harness(
    argv: list[str], work: Path, env: dict[str, str], timeout_s: float
) -> subprocess.CompletedProcess[str]:
    """Run a harness CLI non-interactively in ``work`` (no stdin, output captured as text); raises
    ``subprocess.TimeoutExpired`` past ``timeout_s``."""
    return subprocess.run(
        argv, cwd=work, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout_s
    )


def run_codex(
    bin_dir: Path, base_url: str, model: str, scratch: Path, prompt: str = TASK_PROMPT
) -> subprocess.CompletedProcess[str]:
    """``codex exec`` on ``prompt`` in ``scratch/work``; ``base_url`` ends with ``/v1``."""
    home, work = scratch / "codex-home", scratch / "work"
    home.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'model = "{slash_free_alias(model)}"\n'  # harnesses read org/name as a provider
        'model_provider = "agl"\n'
        'approval_policy = "never"\n'
        'sandbox_mode = "read-only"\n'
        "[model_providers.agl]\n"
        'name = "agl-tinker"\n'
        f'base_url = "{base_url}"\n'
        'wire_api = "responses"\n'
    )
    env = {**os.environ, "CODEX_HOME": str(home)}
    return _run_harness([str(bin_dir / "codex"), "exec", "--skip-git-repo-check", prompt], work, env, 120)


def run_opencode(
    bin_dir: Path, base_url: str, model: str, scratch: Path, prompt: str = TASK_PROMPT
) -> subprocess.CompletedProcess[str]:
    """``opencode run`` on ``prompt`` in ``scratch/work``; ``base_url`` is a rollout URL ending with ``/v1``."""
    home, work = scratch / "opencode-home", scratch / "work"
    work.mkdir(parents=True, exist_ok=True)
    name = slash_free_alias(model)
    bare = base_url.split("/rollout/", 1)[0].removesuffix("/v1") + "/v1"

    def provider(url: str, label: str) -> dict[str, Any]:
        return {
            "npm": "@ai-sdk/openai-compatible",
            "name": label,
            "options": {"baseURL": url, "apiKey": "unused"},
            "models": {name: {"name": name}},
        }

    config = {
        "$schema": "https://opencode.ai/config.json",
        "provider": {"agl": provider(base_url, "agl-tinker rollout"), "aglaux": provider(bare, "agl-tinker")},
        "model": f"agl/{name}",
        "small_model": f"aglaux/{name}",
        "autoupdate": False,
        "share": "disabled",
        "permission": {"edit": "deny", "bash": "deny", "webfetch": "deny"},
    }
    (work / "opencode.json").write_text(json.dumps(config))
    env = {
        **os.environ,
        **{f"XDG_{kind}_HOME": str(home / kind.lower()) for kind in ("CONFIG", "DATA", "CACHE", "STATE")},
    }
    env["OPENCODE_CONFIG"] = str(work / "opencode.json")
    for flag in ("MODELS_FETCH", "AUTOUPDATE", "LSP_DOWNLOAD", "DEFAULT_PLUGINS", "SHARE", "CLAUDE_CODE"):
        env[f"OPENCODE_DISABLE_{flag}"] = "1"
    return _run_harness([str(bin_dir / "opencode"), "run", prompt], work, env, 180)


def train_one_step(alignments: list[Any], rewards: list[float], model: str) -> tuple[int, list[float]]:
    """One training step on the simulator (importance sampling, ``forward_backward`` then
    ``optim_step``) on one group of recorded episodes, episode ``i`` rewarded ``rewards[i]``.

    Returns the number of datums trained and, per datum, how much the summed logprob of its
    sampled tokens moved (a ``forward`` after the step minus the one before it): the rewarded
    episode's must rise against the other's, or the step did not train on what was recorded.
    """
    trajectories = [
        alignment_trajectory(alignment, [0.0] * (len(alignment.steps) - 1) + [reward])
        for alignment, reward in zip(alignments, rewards, strict=True)
    ]
    group = TrajectoryGroup(trajectories_G=trajectories, final_rewards_G=[0.0] * len(rewards), metrics_G=[{}])
    assembled, _ = assemble_training_data([group], compute_advantages([group]))
    # The mask marks sampled tokens; it is the cookbook's, not a loss input the service takes.
    sampled = [datum.loss_fn_inputs["mask"].to_numpy() > 0 for datum in assembled]
    data = [
        tinker.Datum(
            model_input=datum.model_input,
            loss_fn_inputs={k: v for k, v in datum.loss_fn_inputs.items() if k != "mask"},
        )
        for datum in assembled
    ]
    trainer = service_client().create_lora_training_client(base_model=model, rank=8).result()
    before = trainer.forward_backward(data, loss_fn="importance_sampling").result()
    trainer.optim_step(tinker.AdamParams(learning_rate=1e-2)).result()
    after = trainer.forward(data, loss_fn="importance_sampling").result()
    moved = []
    for mask, old, new in zip(sampled, before.loss_fn_outputs, after.loss_fn_outputs, strict=True):
        change = new["logprobs"].to_numpy() - old["logprobs"].to_numpy()
        moved.append(float(change[mask].sum()))
    return len(data), moved

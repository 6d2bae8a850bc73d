"""A command's chz settings become the dataclass it runs with in one way (``carried``): the Ray
runners' settings of ``agl-tinker hello runners=ray`` and the viewer's ``DryRun``."""

from __future__ import annotations

import dataclasses

import chz
import pytest

from agl_tinker.cli.command import carried
from agl_tinker.cli.example_settings import HelloOneClickSettings
from agl_tinker.runners.ray_cluster import RayRunnerSettings
from agl_tinker.viewer.commands import DryrunSettings, EvaluateSettings
from agl_tinker.viewer.dryrun import DryRun


def test_the_ray_settings_come_from_the_hello_settings_with_their_renames() -> None:
    own = HelloOneClickSettings(
        n_runners=3,
        runners="ray",
        ray_address="10.0.0.5:6379",
        runner_cpus=2.0,
        rollouts_per_runner=4,
        store_public_host="head",
    )
    settings = carried(RayRunnerSettings, own, address="ray_address", num_cpus="runner_cpus")
    assert settings == RayRunnerSettings(
        address="10.0.0.5:6379", n_runners=3, num_cpus=2.0, rollouts_per_runner=4, store_public_host="head"
    )


@pytest.mark.parametrize("kind", [DryrunSettings, EvaluateSettings])
def test_every_setting_a_dry_run_shares_is_carried(kind: type) -> None:
    settings = kind(
        tasks="tasks.jsonl",
        model_name="m",
        checkpoint="tinker://x",
        temperature=0.5,
        max_tokens=7,
        group_size=3,
        rollout_timeout_s=9.0,
    )
    run = carried(DryRun, settings)
    shared = {f.name for f in dataclasses.fields(DryRun)} & set(chz.chz_fields(kind))
    assert shared == {
        "model_name",
        "checkpoint",
        "temperature",
        "max_tokens",
        "group_size",
        "rollout_timeout_s",
    }
    assert all(getattr(run, name) == getattr(settings, name) for name in shared)
    assert run.renderer_name is None  # no setting: its default


def test_a_rename_naming_nothing_is_refused() -> None:
    own = HelloOneClickSettings()
    with pytest.raises(TypeError, match="runner_cpu"):
        carried(RayRunnerSettings, own, num_cpus="runner_cpu")
    with pytest.raises(TypeError, match="cpus"):
        carried(RayRunnerSettings, own, cpus="runner_cpus")

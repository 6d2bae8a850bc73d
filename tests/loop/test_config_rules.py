"""A configuration is checked once, when it is built, by the same rules from every entry point.

Per-field rules are chz validators, cross-field rules one function (``config_rules``); the command
line builds its ``TrainConfig`` with chz from the same class, so a value refused in a script is
refused, in the same words, on the command line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import chz
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agl_tinker.cli.settings import UsageError, make_train_config, route
from agl_tinker.loop import config as config_module
from agl_tinker.loop.config import ConfigError, PolicyConfig, TrainConfig

LOG = "/tmp/agl-tinker-config-rules"
AT_LEAST_ONE = ("lora_rank", "batch_size", "group_size", "n_epochs", "num_substeps", "max_tokens")
AT_LEAST_ZERO = (
    "eval_every",
    "save_every",
    "transcripts_per_step",
    "max_empty_steps",
    "warn_flat_reward_steps",
)


def _refusal(build: Any) -> str | None:
    try:
        build()
    except (ConfigError, UsageError) as error:
        return str(error)
    return None


@settings(max_examples=40, deadline=None)
@given(field=st.sampled_from(AT_LEAST_ONE + AT_LEAST_ZERO), value=st.integers(-3, 3))
def test_a_value_is_refused_alike_in_python_and_on_the_command_line(field: str, value: int) -> None:
    """Refused exactly when out of range, with one line naming the field, from either entry point."""
    low = 1 if field in AT_LEAST_ONE else 0
    base = {"log_path": LOG, "min_valid_per_group": 0}  # so that no cross-field rule joins in
    in_python = _refusal(lambda: TrainConfig(**base, **{field: value}))
    on_command_line = _refusal(lambda: make_train_config([("test", base)], [f"{field}={value}"]))
    if value >= low:
        assert in_python is None and on_command_line is None
    else:
        assert in_python == on_command_line == f"{field} must be >= {low}, got {value}"


def test_a_typo_in_python_gets_the_command_lines_did_you_mean() -> None:
    with pytest.raises(ConfigError) as in_python:
        TrainConfig(log_path=LOG, lerning_rate=0.1)  # type: ignore[call-arg]
    with pytest.raises(UsageError) as on_command_line:
        route(["lerning_rate=0.1"], [TrainConfig], "agl-tinker hello")
    hint = "did you mean 'learning_rate'?"
    assert hint in str(in_python.value) and hint in str(on_command_line.value)
    assert str(in_python.value) == "TrainConfig has no setting 'lerning_rate': did you mean 'learning_rate'?"
    with pytest.raises(ConfigError, match=r"no setting 'zzz'$"):  # nothing close: no hint
        TrainConfig(log_path=LOG, zzz=1)  # type: ignore[call-arg]


def test_a_config_cannot_be_changed_into_a_bad_one() -> None:
    """``chz.replace`` builds a new config, so the rules run again."""
    config = TrainConfig(log_path=LOG, group_size=4, min_valid_per_group=2)
    with pytest.raises(ConfigError, match="exceeds group_size"):
        chz.replace(config, group_size=1)


def test_the_command_line_builds_and_checks_its_config_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """No overlap setting: one build of the config, so its cross-field rules run once."""
    calls: list[Any] = []
    check = config_module.check_train_config
    monkeypatch.setattr(config_module, "check_train_config", lambda c: calls.append(c) or check(c))
    config = make_train_config(
        [("defaults", {"log_path": LOG, "batch_size": 4})], ["group_size=3", "policies.a.lora_rank=4"]
    )
    assert len(calls) == 1 and calls[0] is config
    assert (config.batch_size, config.group_size, config.policies["a"].lora_rank) == (4, 3, 4)


def test_overlap_settings_reach_the_cookbooks_types_and_their_rules() -> None:
    config = make_train_config(
        [("defaults", {"log_path": LOG})],
        ["async_config.groups_per_batch=8", "async_config.max_steps_off_policy=2"],
    )
    assert config.async_config is not None and config.async_config.max_steps_off_policy == 2
    with pytest.raises(ConfigError, match=r"async_config.groups_per_batch \(4\) must equal batch_size \(8\)"):
        make_train_config(
            [("defaults", {"log_path": LOG})],
            ["async_config.groups_per_batch=4", "async_config.max_steps_off_policy=2"],
        )


def test_an_unusable_value_is_reported_before_an_overlap_setting_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fields that need no cookbook import are built and checked first."""
    for name in ("AsyncConfig", "StreamMinibatchConfig"):  # unbound, as in a fresh process
        monkeypatch.delattr(config_module, name, raising=False)
    monkeypatch.setattr(
        config_module, "bind_cookbook_types", lambda: pytest.fail("bound the cookbook's types")
    )
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        make_train_config(
            [("defaults", {"log_path": LOG})], ["batch_size=0", "async_config.groups_per_batch=0"]
        )


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"val_fraction": 1.0}, "val_fraction must be in [0, 1), got 1.0"),
        ({"endpoint_port": 70000}, "endpoint_port must be in 0..65535, got 70000"),
        ({"rollout_timeout_s": 0.0}, "rollout_timeout_s must be > 0 or None, got 0.0"),
        ({"max_steps": 0}, "max_steps must be >= 1 or None, got 0"),
        ({"learning_rate": float("nan")}, "learning_rate must be > 0, got nan"),
        ({"on_gap": "skip"}, "on_gap must be one of ['exclude', 'train'], got 'skip'"),
        ({"policies": {"a": "x"}}, "policies['a'] must be a PolicyConfig, got str"),
        ({"policies": {"-a": PolicyConfig()}}, "policy name '-a' must be 1-64 letters"),
    ],
)
def test_each_refusal_is_one_line_naming_the_field(fields: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig(log_path=LOG, **fields)
    assert str(info.value).startswith(says) and "\n" not in str(info.value)


def test_every_field_sits_in_a_commented_section() -> None:
    """``TrainConfig``'s fields are grouped as the cookbook's ``Config`` is: a comment heads each group."""
    source = Path(config_module.__file__).read_text()
    body = source[source.index("class TrainConfig") : source.index("@chz.validate")]
    sections = [line for line in body.splitlines() if line.startswith("    # -- ")]
    assert len(sections) >= 8
    first_field = min(body.index(f"\n    {name}: ") for name in chz.chz_fields(TrainConfig))
    assert body.index(sections[0]) < first_field


def test_a_per_policy_setting_has_one_rule_for_the_run_and_its_policies() -> None:
    """``PER_POLICY`` declares each setting a policy may override once: the run's field and the
    policy's take the same rule (the policy's also takes None, its default: the run's value)."""
    from agl_tinker.loop.policy_config import PER_POLICY

    assert set(PER_POLICY) <= set(chz.chz_fields(TrainConfig)) & set(chz.chz_fields(PolicyConfig))
    for name, setting in PER_POLICY.items():
        assert getattr(PolicyConfig(), name) is None
        if setting.rule is None:
            continue
        bad = {"lora_rank": 0, "learning_rate": 0.0, "num_substeps": 0}[name]
        with pytest.raises(ConfigError, match=f"^{name} must be {re.escape(setting.rule.asks)}, got"):
            TrainConfig(log_path=LOG, **{name: bad})
        with pytest.raises(
            ConfigError, match=rf"^PolicyConfig\.{name} must be {re.escape(setting.rule.asks)} or None"
        ):
            PolicyConfig(**{name: bad})

"""The command line: key=value settings on every entry point, --help, fail-fast errors, Ctrl-C."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import chz
import pytest

from agl_tinker import cli
from agl_tinker.algorithm import interrupt_watch
from agl_tinker.cli.examples import message_text
from agl_tinker.cli.main import COMMANDS
from agl_tinker.cli.settings import flags_taking_values
from agl_tinker.loop.config import ConfigError, TrainConfig
from agl_tinker.loop.preflight import SetupError, check_log_path, check_model

ROOT = Path(__file__).resolve().parents[1]


def _args(argv: list[str]) -> Any:
    return cli.parse_args(argv)


def _build(argv: list[str]) -> tuple[Any, Any]:
    args = _args(argv)
    command = COMMANDS[args.command](args)
    return command.build(args, args.key_values)


def test_key_values_are_told_from_flags_and_positionals() -> None:
    rest, kv = cli.split_key_values(
        ["hello", "algo", "--store", "http://h:1", "learning_rate=0.1", "n_runners=3"]
    )
    assert rest == ["hello", "algo", "--store", "http://h:1"]
    assert kv == ["learning_rate=0.1", "n_runners=3"]


@pytest.mark.parametrize("value", ["a=b", "runs.v2=x"])
def test_a_flag_value_that_reads_key_value_is_the_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """``--log-path a=b`` is the log path ``a=b``; it was taken for a setting ``a`` (unknown)."""
    monkeypatch.chdir(tmp_path)
    config, _ = _build(["hello", "--ci", "--log-path", value, "batch_size=2"])
    assert config.log_path == value and config.batch_size == 2
    args = _args(["q20", "evaluate", "--out", value, "limit=3", "--split", "train"])
    assert (args.out, args.key_values) == (value, ["limit=3"])


def test_key_values_after_a_flag_without_a_value_stay_settings() -> None:
    """``--ci`` takes no value: the ``key=value`` after it is a setting, as before."""
    args = _args(["hello", "--ci", "max_steps=3", "--steps", "2"])
    assert (args.ci, args.steps, args.key_values) == (True, 2, ["max_steps=3"])
    assert cli.split_key_values(["hello", "--log-path", "a=b"]) == (["hello", "--log-path"], ["a=b"])


def test_each_flag_takes_a_value_in_every_command_or_in_none() -> None:
    """:func:`flags_taking_values` is one set for all commands: a flag that took a value in one
    command and none in another would swallow a setting there."""
    takes: dict[str, set[bool]] = {}
    parsers = [cli.build_parser()]
    while parsers:
        for action in parsers.pop()._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            for flag in action.option_strings:
                takes.setdefault(flag, set()).add(action.nargs != 0)
    assert {flag for flag, kinds in takes.items() if len(kinds) > 1} == set()
    assert {"--log-path", "--store", "--out"} <= flags_taking_values(cli.build_parser())
    assert "--ci" not in flags_taking_values(cli.build_parser())


def test_hello_layers_presets_flags_then_key_values(tmp_path: Path) -> None:
    flags = ["hello", "--ci", "--steps", "4", "--log-path", str(tmp_path)]
    config, own = _build(
        [*flags, "max_steps=5", "learning_rate=0.01", "rollout_timeout_s=7", "n_runners=3", "reward_mode=sum"]
    )
    assert isinstance(config, TrainConfig)
    assert config.max_steps == 5  # key=value wins over --steps
    assert config.learning_rate == 0.01 and config.rollout_timeout_s == 7.0
    assert config.eval_every == 3  # from the --ci preset
    assert config.log_path == str(tmp_path) and config.reward_mode == "sum"
    assert own.n_runners == 3


def test_every_entry_point_takes_its_own_settings(tmp_path: Path) -> None:
    config, own = _build(
        ["hello", "algo", "store=http://127.0.0.1:9", f"log_path={tmp_path}", "batch_size=2"]
    )
    assert own.store == "http://127.0.0.1:9" and config.batch_size == 2
    config, own = _build(["hello", "runner", "--store", "http://h:2", "n_runners=5"])
    assert config is None and own.store == "http://h:2" and own.n_runners == 5
    config, own = _build(["q20", "train", "--ci", f"log_path={tmp_path}", "group_size=2", "n_runners=1"])
    assert config.group_size == 2 and config.max_context_tokens == 8192 and own.n_runners == 1
    _, own = _build(["q20", "evaluate", "split=train", "limit=3", "--out", str(tmp_path / "e.jsonl")])
    assert (own.split, own.limit, own.out) == ("train", 3, str(tmp_path / "e.jsonl"))
    _, own = _build(["q20", "dryrun", "games=2"])
    assert own.games == 2


@pytest.mark.parametrize("ci", [True, False])
def test_q20_train_trains_on_the_ci_secrets_exactly_with_ci(
    ci: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--ci`` picks both the short configuration and its training secrets (issue 16)."""
    from agl_tinker.examples.q20 import train as q20

    calls: list[tuple[Any, bool]] = []
    monkeypatch.setattr(q20, "run_train", lambda config, n_runners, on_step, ci: calls.append((config, ci)))
    monkeypatch.setattr(q20, "print_train_summary", lambda result: None)
    argv = ["q20", "train", f"log_path={tmp_path}", *(["--ci"] if ci else [])]
    assert cli.main(argv) == 0
    [(config, passed)] = calls
    assert passed is ci and config.max_steps == (6 if ci else 20)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["hello", "learning_rat=1"], "did you mean 'learning_rate'"),
        (["hello", "runner", "learning_rate=1"], "unknown setting 'learning_rate'"),
        (["hello", "batch_size=x"], "batch_size=x: Could not cast 'x' to int"),
        (["hello", "loss_fn=foo"], "loss_fn=foo"),
        (["q20", "evaluate", "split=test"], "split must be one of"),
        (["hello", "n_runners=0"], "n_runners must be >= 1"),
    ],
)
def test_bad_settings_raise_one_clear_error(argv: list[str], fragment: str) -> None:
    with pytest.raises((cli.UsageError, ConfigError)) as info:
        _build(argv)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_help_lists_every_setting_with_its_default_and_docstring(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["hello", "--help"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and line.split()}
    for name in chz.chz_fields(TrainConfig):
        # name, type, value (source), docstring: a field without chz.field(doc=...) shows no doc
        assert name in lines and not re.search(r"\((default|from [^)]*)\)$", lines[name].rstrip()), name
    assert "n_runners" in out and "(from hello defaults)" in out and "Tasks per training step." in out
    assert cli.main(["hello", "runner", "--help"]) == 0
    out = capsys.readouterr().out
    settings = out.split("as key=value:", 1)[1]
    assert "store" in settings and "learning_rate" not in settings and "TrainConfig" not in out
    for argv in (["q20", "train", "--help"], ["q20", "evaluate", "--help"], ["hello", "algo", "--help"]):
        assert cli.main(argv) == 0, argv


def _cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agl_tinker.cli", *argv],
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("argv", "env", "fragment"),
    [
        (["hello"], {"AGL_TINKER_BACKEND": "live", "TINKER_API_KEY": ""}, "needs TINKER_API_KEY"),
        (
            ["hello", "model_name=Qwen/No-Such-Model"],
            {},
            "model_name='Qwen/No-Such-Model': the offline simulator serves Qwen3",
        ),
        (["hello", "--log-path", "/etc/hostname/run"], {}, "is under the file"),
        (["q20", "train", "batch_size=0"], {}, "batch_size must be >= 1"),
        (["hello", "max_steps=0"], {}, "max_steps must be >= 1"),
        (["store", "port=1"], {}, "takes no key=value settings"),
    ],
)
def test_misconfiguration_fails_before_anything_starts(
    argv: list[str], env: dict[str, str], fragment: str
) -> None:
    run = _cli(*argv, env=env)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and lines[0].startswith("agl-tinker: error: "), run.stderr
    assert "logging to" not in run.stdout  # nothing started
    assert "agentlightning" not in run.stderr


def test_verbose_shows_the_traceback() -> None:
    run = _cli("-v", "hello", "batch_size=0")
    assert run.returncode != 0 and "Traceback" in run.stderr and "ConfigError" in run.stderr


def test_check_log_path(tmp_path: Path) -> None:
    check_log_path(str(tmp_path / "new" / "deeper"))  # creatable: fine, and nothing is created
    assert not (tmp_path / "new").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(SetupError, match="is a file"):
        check_log_path(str(tmp_path / "file"))
    with pytest.raises(SetupError, match="under the file"):
        check_log_path(str(tmp_path / "file" / "run"))


def test_check_model_names_the_served_models() -> None:
    check_model("Qwen/Qwen3-8B")
    with pytest.raises(SetupError, match="Qwen3"):
        check_model("meta-llama/Llama-3.1-8B")


def test_stopped_message_names_the_step_and_the_checkpoint(tmp_path: Path) -> None:
    tracker = cli.StepTracker(str(tmp_path), n_steps=10)
    assert "before the first checkpoint" in tracker.stopped_message(log_path_given=True)
    with (tmp_path / "checkpoints.jsonl").open("w") as f:
        f.write(json.dumps({"name": "000004", "batch": 4, "state_path": "tinker://r/weights/000004"}) + "\n")
    tracker(5, {})
    message = tracker.stopped_message(log_path_given=False)
    assert message == (
        f"stopped at step 6; rerun with --log-path {tmp_path} to resume from checkpoint 000004 "
        "(tinker://r/weights/000004)"
    )
    tracker(9, {})
    assert "after the last step (9)" in tracker.stopped_message(log_path_given=True)


def test_stopped_message_of_several_policies_names_their_checkpoint(tmp_path: Path) -> None:
    """Several policies index their checkpoints under policies/<name>/, not in the log path (the
    message said "before the first checkpoint; ... to start again" while a rerun resumed)."""
    tracker = cli.StepTracker(str(tmp_path), n_steps=10, policies=["a", "b"])
    for name in ("a", "b"):
        (tmp_path / "policies" / name).mkdir(parents=True)
        record = {"name": "000004", "batch": 4, "state_path": f"tinker://{name}/weights/000004"}
        (tmp_path / "policies" / name / "checkpoints.jsonl").write_text(json.dumps(record) + "\n")
    tracker(5, {})
    message = tracker.stopped_message(log_path_given=True)
    assert (
        message
        == "stopped at step 6; rerun the same command to resume from checkpoint 000004 (tinker://a/weights/000004)"
    )


def test_a_ctrl_c_during_fit_is_noted_and_the_handler_restored() -> None:
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), interrupt_watch() as interrupted:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10_000):  # the handler runs between bytecodes
            pass
    assert interrupted == [True]
    assert signal.getsignal(signal.SIGINT) is before


def test_transcripts_show_tool_calls_and_results() -> None:
    call = {"function": {"name": "search", "arguments": '{"query": "dog"}'}}
    assert message_text({"role": "assistant", "content": "Let me check.", "tool_calls": [call]}) == (
        'Let me check. [calls search({"query": "dog"})]'
    )
    assert message_text({"role": "tool", "name": "search", "content": "dogs bark"}) == (
        "[search result] dogs bark"
    )


def test_the_cheap_checks_import_nothing_heavy() -> None:
    """Fail-fast depends on it: the config, the CLI and the early checks must not import torch or the
    cookbook's training loop (seconds of imports) before they have reported a misconfiguration."""
    code = (
        "import sys\n"
        "from agl_tinker import cli\nfrom agl_tinker.loop import config, preflight\n"
        "from agl_tinker.examples.hello import presets\n"
        "preflight.check_early('/tmp/x', config.DEFAULT_MODEL)\n"
        "heavy = [m for m in ('torch', 'tinker', 'tinker_cookbook.rl.train', 'agentlightning') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT), "AGL_TINKER_BACKEND": "sim"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["hello", "learning_rate=-1"], "learning_rate must be > 0, got -1.0"),
        (["hello", "batch_size=0"], "batch_size must be >= 1, got 0"),
        (["q20", "train", "batch_size=0"], "batch_size must be >= 1, got 0"),
        (["q20", "train", "group_size=2", "min_valid_per_group=3"], "exceeds group_size (2)"),
        (["q20", "train", "batch_size=abc"], "batch_size=abc: Could not cast 'abc' to int"),
        (
            ["hello", "loss_fn=foo"],
            "loss_fn=foo: Could not cast 'foo' to ['importance_sampling', 'ppo', 'cispo', 'dro', 'gspo', "
            "'stable_reinforce']",
        ),
        (["hello", "reward_mode=last"], "reward_mode=last"),
    ],
)
def test_an_invalid_value_fails_before_any_heavy_import(argv: list[str], message: str) -> None:
    """An out-of-range or unreadable value is reported by the check that runs before the chz
    Blueprint (whose cookbook types import torch): exit 2, one line, no torch in the process."""
    code = (
        "import sys\n"
        "from agl_tinker import cli\n"
        f"rc = cli.main({argv!r})\n"
        "heavy = [m for m in ('torch', 'tinker', 'tinker_cookbook.rl.train', 'agentlightning') if m in sys.modules]\n"
        "print(rc, heavy)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT), "AGL_TINKER_BACKEND": "sim"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.stdout.strip() == "2 []", run.stderr
    assert run.stderr.count("\n") == 1 and message in run.stderr, run.stderr

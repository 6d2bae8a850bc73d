"""A run knows what it is (issue 34): ``run.json`` records its identity and backend; a resume with
another identity is refused in one line naming the fields and the fix, unless overridden, and the
override is recorded in ``run.json`` and the metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agl_tinker.loop.config import ConfigError, PolicyConfig, TrainConfig
from agl_tinker.run import identity, lock
from agl_tinker.run.announce import announce_run, with_first_metrics
from agl_tinker.run.claim import ResumeRefused, claim_run

ROOT = Path(__file__).resolve().parents[2]
TASKS = [{"identity": str(i)} for i in range(4)]


def _config(log_path: Path, **fields: Any) -> TrainConfig:
    return TrainConfig(log_path=str(log_path), **fields)


def test_run_json_records_identity_backend_and_outputs(tmp_path: Path) -> None:
    assert identity.record_run(_config(tmp_path, lora_rank=8, max_steps=3), TASKS) == {}
    data = json.loads((tmp_path / "run.json").read_text())
    assert data["identity"]["lora_rank"] == 8 and data["identity"]["dataset"]
    assert set(data["identity"]) == {*identity.IDENTITY_FIELDS, "dataset"}
    assert data["backend"] == "simulator (in process)" and data["outputs"] == str(tmp_path)


def test_settings_that_may_change_on_resume_are_not_identity(tmp_path: Path) -> None:
    identity.record_run(_config(tmp_path, max_steps=3, eval_every=2), TASKS)
    again = _config(tmp_path, max_steps=10, eval_every=5, learning_rate=0.1, save_every=1)
    assert identity.record_run(again, TASKS) == {}


@pytest.mark.parametrize(
    ("changed", "fragment"),
    [
        ({"lora_rank": 4}, "lora_rank 8 -> 4"),
        ({"model_name": "Qwen/Qwen3-8B"}, "model_name Qwen/Qwen3-4B-Instruct-2507 -> Qwen/Qwen3-8B"),
        ({"renderer_name": "qwen3"}, "renderer_name null -> qwen3"),
        ({"loss_fn": "ppo"}, "loss_fn importance_sampling -> ppo"),
        ({"policies": {"a": PolicyConfig()}}, "policies {} -> "),
    ],
)
def test_a_resume_with_another_identity_is_refused_naming_fields_and_fix(
    tmp_path: Path, changed: dict[str, Any], fragment: str
) -> None:
    identity.record_run(_config(tmp_path, lora_rank=8), TASKS)
    with pytest.raises(identity.IdentityMismatch) as refused:
        claim_run(_config(tmp_path, **{"lora_rank": 8, **changed}))
    message = str(refused.value)
    assert "\n" not in message and fragment in message, message
    assert "use another log_path" in message and "identity_override=true" in message
    assert not lock.holds(tmp_path)


def test_another_dataset_is_refused_once_it_is_known(tmp_path: Path) -> None:
    identity.record_run(_config(tmp_path), TASKS)
    with pytest.raises(identity.IdentityMismatch, match=r"dataset [0-9a-f]+ -> [0-9a-f]+"):
        identity.record_run(_config(tmp_path), [*TASKS, {"identity": "new"}])


def test_an_override_is_recorded_in_run_json_and_the_first_metrics_row(tmp_path: Path) -> None:
    identity.record_run(_config(tmp_path, lora_rank=8), TASKS)
    extra = identity.record_run(_config(tmp_path, lora_rank=4, identity_override=True), TASKS)
    assert extra == {"run/identity_override": 1, "run/identity_changed/lora_rank": 1}
    data = json.loads((tmp_path / "run.json").read_text())
    assert data["identity"]["lora_rank"] == 4 and data["overrides"][0]["changed"] == ["lora_rank"]

    rows: list[dict[str, Any]] = []

    class Sink:
        def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
            rows.append({"step": step, **metrics})

    logger = with_first_metrics(Sink(), extra)  # type: ignore[arg-type]
    logger.log_metrics({"reward/mean": 0.5}, step=3)
    logger.log_metrics({"reward/mean": 0.6}, step=4)
    assert rows[0]["run/identity_override"] == 1 and "run/identity_override" not in rows[1]


def test_fresh_start_skips_the_identity_check(tmp_path: Path) -> None:
    identity.record_run(_config(tmp_path, lora_rank=8), TASKS)
    assert identity.record_run(_config(tmp_path, lora_rank=4, fresh_start=True), TASKS) == {}


def test_config_json_and_the_first_line_say_backend_and_outputs(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"lora_rank": 8}))
    line = announce_run(_config(tmp_path))
    assert line.startswith("training on the simulator (in process); outputs in " + str(tmp_path))
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["backend"] == "simulator (in process)" and data["outputs"] == str(tmp_path)


def test_live_backend_names_its_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGL_TINKER_BACKEND", "live")
    monkeypatch.setenv("TINKER_BASE_URL", "http://127.0.0.1:9")
    assert identity.backend_description() == "live Tinker at http://127.0.0.1:9"


def test_metrics_without_an_index_are_refused_before_anything_starts(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\n')
    with pytest.raises(ResumeRefused, match=r"checkpoints\.jsonl is missing"):
        claim_run(_config(tmp_path))
    assert not lock.holds(tmp_path)  # a refused run holds no lock (another process may take it)


def test_a_refusal_keeps_a_lock_held_before_the_claim(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\n')
    lock.claim(tmp_path)
    try:
        with pytest.raises(ResumeRefused):
            claim_run(_config(tmp_path))
        assert lock.holds(tmp_path)
    finally:
        lock.release(tmp_path)


def test_several_policies_resume_from_their_own_indexes(tmp_path: Path) -> None:
    """A several-policy run keeps its checkpoint indexes under ``policies/<name>/``: its metrics
    with those indexes resume; with none of them, the refusal names where they belong."""
    policies = {"a": PolicyConfig(), "b": PolicyConfig()}
    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\n')
    with pytest.raises(ResumeRefused, match=r"policies/\*/checkpoints\.jsonl is missing"):
        claim_run(_config(tmp_path, policies=policies))
    for name in policies:
        (tmp_path / "policies" / name).mkdir(parents=True)
        (tmp_path / "policies" / name / "checkpoints.jsonl").write_text("")
    claim_run(_config(tmp_path, policies=policies))
    lock.release(tmp_path)


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "HF_HUB_OFFLINE": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "agl_tinker.cli", *argv], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
def test_the_cli_refuses_another_identity_in_one_line_exit_2(tmp_path: Path) -> None:
    other = tmp_path / "other"
    identity.record_run(_config(other, lora_rank=8), TASKS)
    run = _cli("hello", "--log-path", str(other), "lora_rank=4")
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "lora_rank 8 -> 4" in run.stderr
    assert issubclass(ResumeRefused, ConfigError)  # the missing-index refusal takes the same path: exit 2


ANSWER_EARLY = """
import sys
from agl_tinker.cli.main import main
codes = [main(["hello", "--log-path", path, *sys.argv[-1:]]) for path in sys.argv[1:-1]]
heavy = sorted({"torch", "openai", "tinker", "transformers", "tinker_cookbook.checkpoint_utils"} & set(sys.modules))
print(codes, heavy)
"""


def test_what_the_log_path_decides_is_answered_before_the_heavy_imports(tmp_path: Path) -> None:
    """A finished run (exit 0), metrics without their checkpoint index and another run's identity
    (exit 2), finished or not, are answered from the files alone: nothing imports torch or openai
    first (the missing-index refusal took 7-12 s at load 3-4, waiting for torch and the model check).
    A finished run asked for with another identity is refused, not called finished: "nothing to do"
    would say the new configuration had been trained (it did, while "finished" was answered first)."""
    finished, no_index, other = tmp_path / "finished", tmp_path / "no_index", tmp_path / "other"
    finished_other = tmp_path / "finished_other"
    index = '{"name": "final", "batch": 20, "state_path": "tinker://r/w/final"}\n'
    for path in (finished, finished_other):
        path.mkdir()
        (path / "checkpoints.jsonl").write_text(index)
    no_index.mkdir()
    (no_index / "metrics.jsonl").write_text('{"step": 0}\n')
    for path in (other, finished_other):
        identity.record_run(_config(path, lora_rank=8), TASKS)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "HF_HUB_OFFLINE": "1",
    }
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            ANSWER_EARLY,
            *map(str, (finished, no_index, other, finished_other)),
            "lora_rank=4",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.stdout.strip().splitlines()[-1] == "[0, 2, 2, 2] []", run.stdout + run.stderr
    said = run.stderr.strip().splitlines()
    assert len(said) == 3 and "checkpoints.jsonl is missing" in said[0], said
    assert "lora_rank 8 -> 4" in said[1] and "lora_rank 8 -> 4" in said[2], said
    assert not any((p / "run.lock").exists() for p in (no_index, other, finished_other))  # nothing claimed


def test_the_index_name_is_the_cookbooks() -> None:
    from tinker_cookbook.checkpoint_utils import CHECKPOINTS_BASE_NAME

    from agl_tinker.run.layout import CHECKPOINT_INDEX

    assert CHECKPOINT_INDEX == CHECKPOINTS_BASE_NAME


def test_a_rerun_of_a_finished_run_says_so_in_one_line_without_starting_anything(tmp_path: Path) -> None:
    index = '{"name": "final", "batch": 20, "final": true, "state_path": "tinker://r/weights/final", "sampler_path": "tinker://r/sampler_weights/final"}\n'
    (tmp_path / "checkpoints.jsonl").write_text(index)
    run = _cli("hello", "--log-path", str(tmp_path))  # 20 steps by default
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines() == [
        f"{tmp_path} holds a finished run: all 20 steps done (checkpoint final: tinker://r/sampler_weights/final); "
        "nothing to do. Raise max_steps to train further, or use another log_path for a new run"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints.jsonl"]  # nothing written
    from agl_tinker.run.claim import finished_message

    assert finished_message(_config(tmp_path, max_steps=25)) is None  # more steps to do: it resumes
    assert finished_message(_config(tmp_path, max_steps=20, fresh_start=True)) is None


def test_q20_games_go_under_the_temp_dir_not_the_current_directory() -> None:
    import tempfile

    from agl_tinker import cli
    from agl_tinker.cli.main import COMMANDS

    for argv in (["q20", "dryrun"], ["q20", "evaluate"]):
        rest, key_values = cli.split_key_values(argv)
        args = cli.build_parser().parse_args(rest)
        _, own = COMMANDS[args.command](args).build(args, key_values)
        assert os.path.isabs(own.out) and own.out.startswith(tempfile.gettempdir()), own.out
        assert own.out.endswith(f"q20-{argv[1]}-{Path(own.out).parent.name.split('-', 2)[2]}/games.jsonl")


def test_a_finished_several_policy_run_is_recognised_when_every_policy_reached_the_last_step(
    tmp_path: Path,
) -> None:
    from agl_tinker.loop.config import PolicyConfig
    from agl_tinker.run.claim import finished_message
    from agl_tinker.run.layout import policy_dir

    def index(name: str, batch: int) -> None:
        policy_dir(tmp_path, name).mkdir(parents=True, exist_ok=True)
        record = {"name": f"{batch:06d}", "batch": batch, "state_path": f"tinker://{name}/weights/{batch}"}
        with (policy_dir(tmp_path, name) / "checkpoints.jsonl").open("a") as f:
            f.write(json.dumps({**record, "sampler_path": f"tinker://{name}/sampler_weights/{batch}"}) + "\n")

    config = _config(tmp_path, max_steps=20, policies={"a": PolicyConfig(), "b": PolicyConfig()})
    index("a", 10)
    index("a", 20)
    index("b", 10)
    assert finished_message(config) is None  # b has not reached step 20: it resumes
    index("b", 20)
    assert finished_message(config) == (
        f"{tmp_path} holds a finished run: all 20 steps done (checkpoint 000020: "
        "a tinker://a/sampler_weights/20, b tinker://b/sampler_weights/20); nothing to do. Raise "
        "max_steps to train further, or use another log_path for a new run"
    )
    assert finished_message(_config(tmp_path, max_steps=20)) is None  # one policy: log_path's own index
    assert finished_message(_config(tmp_path, max_steps=25, policies=config.policies)) is None


@pytest.mark.parametrize(
    ("content", "expected"), [(None, False), ("", False), ("\n \n", False), ('{"step": 0}\n', True)]
)
def test_one_rule_says_whether_a_log_path_holds_metrics(
    tmp_path: Path, content: str | None, expected: bool
) -> None:
    """The check before anything starts and the resume in the loop decide it alike: before, the
    loop counted any byte (a file of blank lines was an earlier run there, not here)."""
    from agl_tinker.loop import policy_clients
    from agl_tinker.run.layout import has_metrics, missing_index_message

    if content is not None:
        (tmp_path / "metrics.jsonl").write_text(content)
    assert has_metrics(tmp_path) is expected
    assert (missing_index_message(tmp_path) is not None) is expected
    assert policy_clients.has_metrics is has_metrics  # the loop's resume asks the same rule

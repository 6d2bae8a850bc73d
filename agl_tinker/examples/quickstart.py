"""Quickstart: train an ordinary OpenAI-client agent with RL, offline, in about a minute.

    python agl_tinker/examples/quickstart.py                                  # 12 steps, logs in runs/quickstart
    python agl_tinker/examples/quickstart.py --steps 4 --log-path /tmp/qs     # shorter; rerun to resume

The agent is asked to repeat a phrase and is rewarded 1 for repeating it exactly, 0.5 for
quoting it inside other words, 0 otherwise. The offline simulator's base model mostly greets or
talks about itself; training makes it repeat. Tasks come from a CSV file (JSONL, JSON and
Parquet load the same way).
"""

from __future__ import annotations

import argparse
from pathlib import Path

# agl_tinker first: it keeps LiteLLM (imported by agentlightning) from fetching its cost map offline
from agl_tinker import LeanServerStrategy, TinkerAlgorithm, TrainConfig, fast_runner, load_tasks

# isort: split
import agentlightning as agl
from openai import AsyncOpenAI

TASKS = Path(__file__).parent / "data" / "quickstart.csv"  # columns: phrase, split (train or val)


def score(answer: str, phrase: str) -> float:
    """1 for exactly the phrase, 0.5 for the phrase inside other words, 0 otherwise."""
    answer = answer.strip().strip('"').rstrip(".").lower()
    if answer == phrase:
        return 1.0
    return 0.5 if phrase in answer else 0.0


async def repeat_rollout(task: dict, llm: agl.LLM) -> float:
    """The agent: one chat completion; the returned float is the episode reward."""
    client = AsyncOpenAI(base_url=llm.get_base_url(), api_key="unused")
    answer = await client.chat.completions.create(
        model=llm.model,
        messages=[{"role": "user", "content": f'Repeat exactly: "{task["phrase"]}"'}],
        max_tokens=32,
    )
    return score(answer.choices[0].message.content or "", task["phrase"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="training steps (more than one epoch cycles)")
    parser.add_argument("--log-path", default="runs/quickstart", help="metrics and checkpoints; resumes")
    args = parser.parse_args(argv)

    tasks = load_tasks(TASKS, required_fields=("phrase", "split"))
    train_tasks = [t for t in tasks if t["split"] == "train"]
    val_tasks = [t for t in tasks if t["split"] == "val"]

    config = TrainConfig(
        log_path=args.log_path,
        max_steps=args.steps,
        batch_size=8,  # tasks per step
        group_size=4,  # rollouts per task; advantages are centred within each group
        learning_rate=3e-2,
        lora_rank=8,
        max_tokens=32,
        eval_every=4,  # validation every 4 steps and at the end
        save_every=4,  # checkpoints, so that a rerun resumes
    )
    algorithm = TinkerAlgorithm(config)  # checks the config, model and log path now, not mid-run
    trainer = agl.Trainer(algorithm=algorithm, runner=fast_runner(), strategy=LeanServerStrategy(n_runners=2))
    trainer.fit(agl.rollout(repeat_rollout), train_dataset=train_tasks, val_dataset=val_tasks)

    result = algorithm.result  # agl_tinker.loop.train.TrainResult, set once fit returns
    if result is None:
        raise SystemExit("training did not finish")
    if result.rewards:  # this run's steps: a resumed run starts at its checkpoint's step
        start, end = result.start_step, result.start_step + len(result.rewards) - 1
        reward = f"{result.rewards[0]:+.2f} (step {start}) -> {result.rewards[-1]:+.2f} (step {end})"
        print(f"train reward:      {reward}")
    if result.evals:
        first, last = result.evals[0], result.evals[-1]
        print(
            f"validation reward: {first['eval/reward/mean']:+.2f} (step {first['step']}) -> "
            f"{last['eval/reward/mean']:+.2f} (step {last['step']})"
        )
    print(f"metrics:           {result.metrics_path}")  # one JSON row per step (0-based)
    print(f"checkpoints:       {result.checkpoints_path}")
    print(f"reward curve:      {result.curve_path}")


if __name__ == "__main__":
    main()

"""Score any OpenAI-compatible model at 20 Questions, and load the bundled dataset.

``python -m agl_tinker.examples.q20.evaluate --base-url http://127.0.0.1:8000/v1 --model NAME --split val``
plays every task once, writes one JSON line per game (the whole conversation included) as games
finish, and prints win rate, turns and tool calls overall, by category and by search on/off.
A game whose API calls fail is recorded with its error and left out of the rates, not counted
as a loss, so an unreachable endpoint cannot pass for a weak model.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from openai import AsyncOpenAI

from agl_tinker.examples.q20.agent import (
    DEFAULT_MAX_TOKENS,
    GameResult,
    Q20Task,
    as_bool,
    parse_task,
    play_game,
)
from agl_tinker.examples.q20.answerer import Answerer
from agl_tinker.examples.q20.presets import SPLITS, default_games_path
from agl_tinker.examples.q20.search import SearchTool

DATA_PATH = Path(__file__).with_name("data") / "q20.csv"
COLUMNS = ("category", "answer", "split", "search_enabled")


class DatasetError(ValueError):
    """The CSV is not a valid 20 Questions dataset; the message names the file, line and field."""


def load_dataset(split: str | None = "train", path: str | Path | None = None) -> list[Q20Task]:
    """Tasks of ``split`` (one of :data:`SPLITS`, or ``None`` for all) from ``path`` (default: bundled).

    Every row is checked, not only the requested split's, so a broken file fails the same way
    whichever split is asked for.
    """
    if split is not None and split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; use one of {', '.join(SPLITS)} (or None for all)")
    source = Path(path) if path is not None else DATA_PATH
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"cannot read 20 Questions dataset {source}: {exc.strerror or exc}") from None
    reader = csv.DictReader(text.splitlines())
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise DatasetError(
            f"{source}: missing column(s) {', '.join(missing)}; the header must name {', '.join(COLUMNS)}"
        )
    tasks: list[Q20Task] = []
    seen: dict[str, int] = {}
    for row in reader:
        where = f"{source}:{reader.line_num}"
        values = {c: (row.get(c) or "").strip() for c in COLUMNS}
        for column in ("category", "answer"):
            if not values[column]:
                raise DatasetError(f"{where}: empty {column}")
        if values["split"] not in SPLITS:
            raise DatasetError(f"{where}: split must be one of {', '.join(SPLITS)}, got {values['split']!r}")
        try:
            search_enabled = as_bool(values["search_enabled"], "search_enabled")
        except ValueError as exc:
            raise DatasetError(f"{where}: {exc}") from None
        key = values["answer"].lower()
        if key in seen:
            raise DatasetError(f"{where}: answer {values['answer']!r} already appears on line {seen[key]}")
        seen[key] = reader.line_num
        if split is None or values["split"] == split:
            tasks.append(
                Q20Task(
                    category=values["category"].lower(),
                    answer=values["answer"],
                    search_enabled=search_enabled,
                )
            )
    if not tasks:
        raise DatasetError(f"{source}: no tasks in split {split!r}")
    return tasks


@dataclass(frozen=True)
class Stats:
    """Outcomes of a group of games; rates are over games that finished (errors excluded)."""

    games: int
    errors: int
    wins: int
    win_rate: float
    mean_turns: float
    mean_turns_won: float | None
    mean_tool_calls: float
    mean_reward: float

    @classmethod
    def of(cls, results: Sequence[GameResult], errors: int = 0) -> Stats:
        n = len(results)
        won = [r for r in results if r.won]

        def mean(values: Iterable[float]) -> float:
            items = list(values)
            return sum(items) / len(items) if items else 0.0

        return cls(
            games=n,
            errors=errors,
            wins=len(won),
            win_rate=len(won) / n if n else 0.0,
            mean_turns=mean(r.turns for r in results),
            mean_turns_won=mean(r.turns for r in won) if won else None,
            mean_tool_calls=mean(r.tool_calls for r in results),
            mean_reward=mean(r.reward for r in results),
        )


@dataclass(frozen=True)
class Summary:
    """Overall, per-category and search-on/off statistics of one evaluation."""

    overall: Stats
    by_category: dict[str, Stats]
    by_search: dict[str, Stats]

    def table(self) -> str:
        """A fixed-width table, one row per group."""
        header = f"{'group':<22}{'games':>6}{'err':>5}{'wins':>6}{'win%':>7}{'turns':>7}{'t(won)':>8}{'tools':>7}{'reward':>8}"
        rows = [header, "-" * len(header)]

        def row(name: str, s: Stats) -> str:
            if not s.games:  # only failed games: no rates to show
                return f"{name:<22}{s.games:>6}{s.errors:>5}" + "".join(
                    f"{'-':>{w}}" for w in (6, 7, 7, 8, 7, 8)
                )
            won = "-" if s.mean_turns_won is None else f"{s.mean_turns_won:.1f}"
            return (
                f"{name:<22}{s.games:>6}{s.errors:>5}{s.wins:>6}{100 * s.win_rate:>6.1f}%"
                f"{s.mean_turns:>7.1f}{won:>8}{s.mean_tool_calls:>7.2f}{s.mean_reward:>8.3f}"
            )

        rows += [row(f"category={c}", s) for c, s in sorted(self.by_category.items())]
        rows += [row(f"search={k}", s) for k, s in sorted(self.by_search.items())]
        rows.append(row("overall", self.overall))
        return "\n".join(rows)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summarize(results: Sequence[GameResult], failed: Sequence[Q20Task] = ()) -> Summary:
    """Group finished games (and count failed ones) overall, by category and by search on/off."""

    def group(label: Callable[[str, bool], str]) -> dict[str, Stats]:
        done = [(label(r.category, r.search_enabled), r) for r in results]
        lost = [label(f["category"], f["search_enabled"]) for f in failed]
        return {
            name: Stats.of([r for n, r in done if n == name], lost.count(name))
            for name in sorted({n for n, _ in done} | set(lost))
        }

    return Summary(
        overall=Stats.of(results, len(failed)),
        by_category=group(lambda category, _: category),
        by_search=group(lambda _, enabled: "on" if enabled else "off"),
    )


class GameProgress:
    """``evaluate``'s progress on stderr: one redrawn line on a terminal, every ~10% of the games elsewhere."""

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._shown = 0

    def __call__(self, done: int, total: int, won: int) -> None:
        line = f"{self.label}: {done}/{total} games played, {won} won"
        if self.tty:
            self.stream.write("\r\033[K" + line + ("\n" if done == total else ""))
        elif done == total or done - self._shown >= max(1, total // 10):
            self._shown = done
            self.stream.write(line + "\n")
        self.stream.flush()


async def evaluate(
    base_url: str,
    model: str,
    api_key: str | None,
    tasks: Sequence[Q20Task | dict[str, Any]],
    out_path: str | Path,
    concurrency: int = 8,
    *,
    temperature: float = 0.7,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    seed: int | None = None,
    answerer: Answerer | None = None,
    search: SearchTool | None = None,
    progress: Callable[[int, int, int], None] | None = None,
) -> Summary:
    """Play every task once against ``base_url``; write ``out_path`` (JSONL) and return the summary.

    ``progress(done, total, won)`` is called after each game (see :class:`GameProgress`).

    Lines are written as games finish and carry ``index`` (the task's position) so a partial file
    from an interrupted run still says which games it holds. ``seed`` seeds game ``i`` with
    ``seed + 1000 * i``.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    parsed = [parse_task(t) for t in tasks]
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    gate = asyncio.Semaphore(concurrency)
    results: list[GameResult] = []
    failed: list[Q20Task] = []
    async with AsyncOpenAI(base_url=base_url, api_key=api_key or "unused", max_retries=2) as client:
        with out.open("w", encoding="utf-8") as sink:

            async def one(index: int, task: Q20Task) -> None:
                async with gate:
                    try:
                        result = await play_game(
                            client,
                            model,
                            task,
                            answerer=answerer,
                            search=search,
                            temperature=temperature,
                            max_tokens=max_tokens,
                            seed=None if seed is None else seed + 1000 * index,
                        )
                    except Exception as exc:
                        failed.append(task)
                        line: dict[str, Any] = {
                            "index": index,
                            **task,
                            "error": f"{type(exc).__name__}: {exc}",
                        }
                    else:
                        results.append(result)
                        line = {"index": index, **result.to_json(), "error": None}
                    sink.write(json.dumps(line, ensure_ascii=False) + "\n")
                    sink.flush()
                    if progress is not None:
                        progress(len(results) + len(failed), len(parsed), sum(r.won for r in results))

            await asyncio.gather(*(one(i, t) for i, t in enumerate(parsed)))
    return summarize(results, failed)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Evaluate an OpenAI-compatible model at 20 Questions.")
    parser.add_argument(
        "--base-url", required=True, help="OpenAI-compatible base URL, e.g. http://host:8000/v1"
    )
    parser.add_argument("--model", required=True)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--split", default="val", choices=[*SPLITS, "all"])
    parser.add_argument("--data", default=None, help="CSV path (default: the bundled dataset)")
    parser.add_argument(
        "--out", default=None, help="JSONL of the games (default: a new directory under the temp dir)"
    )
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--limit", type=int, default=None, help="play only the first N tasks")
    args = parser.parse_args(argv)
    args.out = args.out or default_games_path("evaluate")
    try:
        tasks = load_dataset(None if args.split == "all" else args.split, args.data)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = asyncio.run(
        evaluate(
            args.base_url,
            args.model,
            args.api_key,
            tasks[: args.limit],
            args.out,
            args.concurrency,
            temperature=args.temperature,
            max_tokens=args.max_tokens,
            seed=args.seed,
            progress=GameProgress(f"evaluating {args.model}"),
        )
    )
    print(summary.table())
    print(f"games written to {args.out}")
    if summary.overall.errors:
        print(f"warning: {summary.overall.errors} game(s) failed; see 'error' in {args.out}", file=sys.stderr)
    return 1 if summary.overall.errors and not summary.overall.games else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""20 Questions example: the world, the answerer, search, the dataset and the player's game loop.

The end-to-end games through the project's endpoint live in ``test_q20_endpoint.py``.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import pytest_asyncio
from aiohttp import web
from openai.types.chat import ChatCompletion

from agl_tinker.examples.q20 import presets
from agl_tinker.examples.q20.agent import (
    MAX_QUESTIONS,
    EndReason,
    GameResult,
    as_bool,
    game_reward,
    parse_task,
    play_game,
)
from agl_tinker.examples.q20.answerer import (
    LLMAnswerer,
    OfflineAnswerer,
    answerer_from_env,
    judge,
    normalise_reply,
)
from agl_tinker.examples.q20.evaluate import DatasetError, Stats, load_dataset, summarize
from agl_tinker.examples.q20.knowledge import CATEGORIES, ENTITIES, entity, terms
from agl_tinker.examples.q20.search import HttpSearch, OfflineSearch, search_from_env, search_knowledge
from agl_tinker.examples.q20.train import q20_config, training_tasks, validation_tasks
from fakes.tinker.prior import load_prior

ALL_ATTRIBUTES = sorted(set().union(*(e.attributes for e in ENTITIES.values())))


def article(name: str) -> str:
    return "an" if name[0] in "aeiou" else "a"


# -- the world ---------------------------------------------------------------------------------


def test_every_entity_has_a_known_category_and_attributes() -> None:
    for e in ENTITIES.values():
        assert e.category in CATEGORIES
        assert e.category in e.attributes
        assert len(e.shown) >= 3, e.name
        assert e.describe().startswith(f"{e.name} ({e.category}): ")


def test_terms_fold_plurals_articles_case_and_phrases() -> None:
    assert terms("Is it an ELEPHANT?") == ["elephant"]
    assert terms("Are they elephants?") == ["elephant"]
    assert terms("Does it have a stripe?") == ["stripes"]
    assert terms("Is it man-made?") == ["manmade"]
    assert terms("Is it bigger than a car?") == ["huge"]  # the car is a yardstick, not a guess
    assert terms("Is it ice cream?") == ["ice cream"]
    assert terms("Hello! How can I help you today?") == []


def test_entity_lookup_is_forgiving_about_case_and_clear_when_missing() -> None:
    assert entity("  Ice  Cream ").name == "ice cream"
    with pytest.raises(KeyError, match="unicorn"):
        entity("unicorn")


# -- the answerer ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ENTITIES))
def test_naming_the_secret_is_correct_in_every_phrasing(name: str) -> None:
    category = ENTITIES[name].category
    for question in (
        f"Is it {article(name)} {name}?",
        f"Is it {name}?",
        f"IS IT THE {name.upper()}S?",
        f"My guess is {name}.",
        f"<think>hmm</think>Is it {article(name)} {name}?",
    ):
        assert judge(question, name, category) == "correct", question


@pytest.mark.parametrize("name", sorted(ENTITIES))
def test_every_attribute_is_answered_consistently(name: str) -> None:
    """Closed world: an attribute the secret has is ``yes``, every other one ``no``."""
    secret = ENTITIES[name]
    for attribute in ALL_ATTRIBUTES:
        expected = "correct" if attribute == name else "yes" if attribute in secret.attributes else "no"
        assert judge(f"Is it {attribute}?", name, secret.category) == expected, attribute
    for other in ENTITIES:
        if other != name:
            expected = "yes" if other in secret.attributes else "no"
            assert judge(f"Is it {article(other)} {other}?", name, secret.category) == expected, other


def test_generic_questions_get_sensible_answers() -> None:
    assert judge("Is it an animal?", "dog", "animal") == "yes"
    assert judge("Is it alive?", "doctor", "profession") == "yes"
    assert judge("Can you eat it?", "pizza", "food") == "yes"
    assert judge("Is it bigger than a car?", "car", "object") == "no"
    assert judge("Is it bigger than a breadbox?", "elephant", "animal") == "yes"
    assert judge("Is it a large grey animal?", "elephant", "animal") == "yes"
    assert judge("Is it a large grey animal?", "cat", "animal") == "no"
    assert judge("Is it an owl?", "owl", "animal") == "correct"
    assert judge("Is it a bird?", "owl", "animal") == "yes"


def test_listing_candidates_never_wins() -> None:
    assert judge("Is it a cat or a dog?", "dog", "animal") == "no"
    assert judge("Is it a dog, cat, lion, tiger or cow?", "lion", "animal") == "no"


def test_questions_without_known_terms_are_no() -> None:
    assert judge("Hello! How can I help you today?", "dog", "animal") == "no"
    assert judge("", "dog", "animal") == "no"


def test_a_secret_outside_the_table_is_known_by_name_and_category() -> None:
    assert judge("Is it a zebra?", "zebra", "animal") == "correct"
    assert judge("Are zebras striped?", "zebra", "animal") == "correct"
    assert judge("Is it an animal?", "zebra", "animal") == "yes"
    assert judge("Does it have stripes?", "zebra", "animal") == "no"


@pytest.mark.parametrize(
    ("text", "reply"),
    [
        ("Yes.", "yes"),
        ("no", "no"),
        ("CORRECT!", "correct"),
        ("<think>is it yes? no...</think>\nCorrect", "correct"),
        ("Yes, that's correct", "yes"),
        ("I cannot answer that", "no"),
        ("", "no"),
    ],
)
def test_live_replies_are_normalised(text: str, reply: str) -> None:
    assert normalise_reply(text) == reply


def test_answerer_from_env_is_offline_unless_configured() -> None:
    assert isinstance(answerer_from_env({}), OfflineAnswerer)
    live = answerer_from_env({"Q20_ANSWERER_BASE_URL": "http://x/v1", "Q20_ANSWERER_MODEL": "m"})
    assert isinstance(live, LLMAnswerer) and live.model == "m"
    with pytest.raises(ValueError, match="Q20_ANSWERER_MODEL"):
        answerer_from_env({"Q20_ANSWERER_BASE_URL": "http://x/v1"})


@pytest_asyncio.fixture
async def stub_http() -> AsyncIterator[tuple[str, list[Any]]]:
    """A local server: a chat endpoint answering ``Yes, it is.`` and a search endpoint echoing ``q``."""
    seen: list[Any] = []

    async def chat(request: web.Request) -> web.Response:
        seen.append(await request.json())
        return web.json_response(
            {
                "id": "c",
                "object": "chat.completion",
                "created": 0,
                "model": "judge",
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": "Yes, it is."},
                    }
                ],
            }
        )

    async def find(request: web.Request) -> web.Response:
        seen.append(dict(request.query))
        return web.Response(text=f"results for {request.query['q']}")

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=503, text="down")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/search", find)
    app.router.add_get("/broken", broken)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


async def test_live_answerer_sends_a_strict_prompt_and_normalises(stub_http: tuple[str, list[Any]]) -> None:
    url, seen = stub_http
    answerer = LLMAnswerer(url + "/v1", "judge", "key")
    assert await answerer.answer("Is it grey?", "elephant", "animal") == "yes"
    request = seen[-1]
    assert request["model"] == "judge" and request["temperature"] == 0.0
    assert "elephant" in request["messages"][0]["content"]
    assert request["messages"][1] == {"role": "user", "content": "Is it grey?"}


# -- search ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ENTITIES))
def test_search_finds_each_entity_by_name_and_by_its_attributes(name: str) -> None:
    e = ENTITIES[name]
    assert search_knowledge(name).splitlines()[0] == e.describe()
    by_attributes = search_knowledge(" ".join(e.shown), limit=len(ENTITIES)).splitlines()
    assert e.describe() in by_attributes
    # nothing ranks above it without matching at least as many of the query's terms
    wanted = terms(" ".join(e.shown))
    own = sum(t in e.attributes for t in wanted)
    for line in by_attributes[: by_attributes.index(e.describe())]:
        other = ENTITIES[line.split(" (")[0]]
        assert sum(t in other.attributes for t in wanted) >= own


def test_search_results_are_short_ranked_and_deterministic() -> None:
    result = search_knowledge("large grey animal")
    lines = result.splitlines()
    assert lines[0].startswith("elephant (animal): ")
    assert len(lines) == 5
    assert search_knowledge("large grey animal") == result
    assert search_knowledge("Yes. 19 questions left") == "No results for 'Yes. 19 questions left'."


def test_search_text_never_contradicts_the_answerer() -> None:
    for line in search_knowledge("animal", limit=len(ENTITIES)).splitlines():
        name, facts = line.split(" (")[0], line.split(": ", 1)[1].split(", ")
        for fact in facts:
            assert judge(f"Is it {fact}?", name, "animal") == "yes", (name, fact)


async def test_search_from_env_offline_and_http(stub_http: tuple[str, list[Any]]) -> None:
    url, seen = stub_http
    offline = search_from_env({})
    assert isinstance(offline, OfflineSearch)
    assert (await offline.search("dog")).startswith("dog (animal)")
    live = search_from_env({"Q20_SEARCH_URL": url + "/search"})
    assert isinstance(live, HttpSearch)
    assert await live.search("grey animal") == "results for grey animal"
    assert seen[-1] == {"q": "grey animal"}
    assert await HttpSearch(url + "/broken").search("x") == "Search failed (HTTP 503)."
    assert (await HttpSearch("http://127.0.0.1:9/none").search("x")).startswith("Search failed (")


# -- dataset -----------------------------------------------------------------------------------


def test_bundled_dataset_loads_and_matches_the_knowledge_table() -> None:
    train, live, val = load_dataset("train"), load_dataset("live"), load_dataset("val")
    every = load_dataset(None)
    assert len(every) == len(train) + len(live) + len(val)
    assert 60 <= len(every) <= 100
    assert len(val) >= 10
    for split in (train, live, val):
        assert {t["search_enabled"] for t in split} == {True, False}
    for split in (training_tasks("live"), val):
        assert len({t["category"] for t in split}) >= 5
    for task in every:
        assert isinstance(task["search_enabled"], bool)
        assert entity(task["answer"]).category == task["category"]
    assert not {t["answer"] for t in train + live} & {t["answer"] for t in val}


def _offline_nameable(task: Any) -> bool:
    """Whether the simulator's policy can say this secret: a noun it knows, and either one it names
    unprompted (its generic nouns) or one a search result can put into the conversation."""
    prior = load_prior()
    generic = prior.nouns[: prior.limits["generic_nouns"]]
    return task["answer"] in prior.nouns and (task["answer"] in generic or task["search_enabled"])


def test_validation_holds_out_secrets_of_the_kind_training_can_win_offline() -> None:
    """Issue 16: 8 of 14 validation secrets were words the simulator never says, so validation could
    not move. Every validation secret is now one it can name, held out from training, which has
    more of the same kind (in each validation category but place, whose only one is in val)."""
    train, val = load_dataset("train"), load_dataset("val")
    assert [t["answer"] for t in val if not _offline_nameable(t)] == []
    nameable_train = [t for t in train if _offline_nameable(t)]
    assert len(nameable_train) >= 1.5 * len(val)
    assert {t["category"] for t in val} - {t["category"] for t in nameable_train} <= {"place"}


def test_offline_training_plays_only_secrets_it_can_win_and_live_training_plays_all() -> None:
    """Issue 16: 43 of the 72 training secrets were words the simulator never says, so 60% of the
    offline training games were certain losses that taught nothing. Split ``train`` now holds the
    nameable ones, and ``live`` the rest, which only a run against the real service trains on."""
    train, live = load_dataset("train"), load_dataset("live")
    assert [t["answer"] for t in train if not _offline_nameable(t)] == []
    assert [t["answer"] for t in live if _offline_nameable(t)] == []
    assert training_tasks("sim") == train
    assert training_tasks("live") == train + live


def test_the_readme_states_the_training_defaults(tmp_path: Path) -> None:
    """The README's table of measured runs is only meaningful for the settings it names."""
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### 20 Questions", 1)[1].split("\n### ", 1)[0]
    line = section.split("The defaults (`presets.py`):", 1)[1].split("\n\n", 1)[0]
    stated = dict(pair.split("=", 1) for pair in re.findall(r"`(\w+=[^`]+)`", line))
    config = q20_config(str(tmp_path))
    assert len(stated) >= 8
    for key, value in stated.items():
        actual = presets.VAL_GAMES_PER_SECRET if key == "VAL_GAMES_PER_SECRET" else getattr(config, key)
        assert float(value) == actual, key


def test_training_validates_on_every_held_out_secret_several_times() -> None:
    val = load_dataset("val")
    games = validation_tasks()
    assert len(games) >= 40  # one game then moves the win rate by at most 2.5 points
    assert sorted(t["answer"] for t in games) == sorted(
        t["answer"] for t in val for _ in range(len(games) // len(val))
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("category,answer,split\nanimal,dog,train\n", r"missing column\(s\) search_enabled"),
        (
            "category,answer,split,search_enabled\nanimal,dog,train,maybe\n",
            r":2: search_enabled must be true or false",
        ),
        (
            "category,answer,split,search_enabled\nanimal,dog,test,true\n",
            r":2: split must be one of train, live, val",
        ),
        ("category,answer,split,search_enabled\nanimal,,train,true\n", r":2: empty answer"),
        (
            "category,answer,split,search_enabled\nanimal,dog,train,1\nanimal,Dog,val,0\n",
            r":3: answer 'Dog' already",
        ),
        ("category,answer,split,search_enabled\nanimal,dog,val,yes\n", r"no tasks in split 'train'"),
    ],
)
def test_bad_csv_fails_with_a_clear_error(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(body)
    with pytest.raises(DatasetError, match=message):
        load_dataset("train", path)


def test_missing_file_and_unknown_split_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot read"):
        load_dataset("train", tmp_path / "absent.csv")
    with pytest.raises(DatasetError, match="unknown split 'test'"):
        load_dataset("test")


def test_task_parsing_accepts_csv_spellings_and_rejects_garbage() -> None:
    assert (
        parse_task({"category": "animal", "answer": "dog", "search_enabled": "TRUE"})["search_enabled"]
        is True
    )
    assert parse_task({"category": "animal", "answer": "dog"})["search_enabled"] is False
    assert as_bool("0") is False and as_bool(True) is True
    with pytest.raises(ValueError, match="missing answer"):
        parse_task({"category": "animal"})
    with pytest.raises(ValueError, match="search_enabled"):
        parse_task({"category": "animal", "answer": "dog", "search_enabled": "perhaps"})


# -- the game loop, against a scripted model ---------------------------------------------------


def completion(content: str | None = None, calls: list[tuple[str, str]] | None = None) -> ChatCompletion:
    """A chat completion with ``content`` and tool calls given as (name, arguments JSON)."""
    tool_calls = [
        {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": arguments}}
        for i, (name, arguments) in enumerate(calls or [])
    ]
    message = {"role": "assistant", "content": content, "tool_calls": tool_calls or None}
    return ChatCompletion.model_validate(
        {
            "id": "c",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "finish_reason": "tool_calls" if calls else "stop", "message": message}],
        }
    )


class ScriptedClient:
    """Stands in for ``AsyncOpenAI``: answers from a script, then keeps asking "Is it alive?"."""

    def __init__(self, *script: ChatCompletion) -> None:
        self.script = list(script)
        self.requests: list[dict[str, Any]] = []
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self._create))

    async def _create(self, **request: Any) -> ChatCompletion:
        self.requests.append(copy.deepcopy(request))
        return self.script.pop(0) if self.script else completion("Is it alive?")


async def play(client: ScriptedClient, **task: Any) -> GameResult:
    game = {"category": "animal", "answer": "elephant", "search_enabled": True} | task
    return await play_game(
        cast(Any, client), "m", game, answerer=OfflineAnswerer(), search=OfflineSearch(), seed=7
    )


def search_call(query: str) -> tuple[str, str]:
    return ("search", json.dumps({"query": query}))


async def test_search_then_guess_wins_with_real_tool_messages() -> None:
    client = ScriptedClient(
        completion("Is it an animal?"),
        completion("Let me check.", [search_call("large grey animal")]),
        completion("Is it an elephant?"),
    )
    result = await play(client)
    assert (result.won, result.turns, result.tool_calls, result.model_calls) == (True, 2, 1, 3)
    assert result.reward == game_reward(True, 2) == 1.0 - 0.5 / MAX_QUESTIONS
    roles = [m["role"] for m in result.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "tool", "assistant", "user"]
    assert result.messages[3]["content"] == "Yes. 19 questions left."
    assert result.messages[4]["tool_calls"][0]["function"]["arguments"] == '{"query": "large grey animal"}'
    tool = result.messages[5]
    assert tool["tool_call_id"] == "call_0" and tool["content"].startswith("elephant (animal): ")
    assert result.messages[-1]["content"] == "Correct! It is elephant."
    # every request declared the tool, saw the whole history so far, and had its own seed
    assert all(r["tools"][0]["function"]["name"] == "search" for r in client.requests)
    assert [len(r["messages"]) for r in client.requests] == [2, 4, 6]
    assert [r["seed"] for r in client.requests] == [7, 8, 9]


async def test_searches_past_the_budget_or_when_disabled_cost_a_question() -> None:
    client = ScriptedClient(
        completion(None, [search_call("grey"), search_call("trunk")]),
        completion(None, [search_call("africa"), search_call("tusks")]),
        completion("Is it an elephant?"),
    )
    result = await play(client)
    assert (result.tool_calls, result.refused_tool_calls, result.turns, result.won) == (3, 1, 2, True)
    assert "Search limit of 3 reached" in result.messages[-3]["content"]

    disabled = ScriptedClient(completion(None, [search_call("grey")]), completion("Is it an elephant?"))
    result = await play(disabled, search_enabled=False)
    assert (result.tool_calls, result.refused_tool_calls, result.turns) == (0, 1, 2)
    assert "tools" not in disabled.requests[0]


async def test_a_lost_game_ends_after_the_question_budget_with_zero_reward() -> None:
    client = ScriptedClient(completion("Is it a dog?"))
    result = await play(client, search_enabled=False)
    assert (result.won, result.turns, result.model_calls, result.reward) == (False, 20, 20, 0.0)
    assert result.end_reason == "out_of_questions"
    assert result.messages[-1]["content"] == "Yes. 0 questions left."
    assert result.messages[-3]["content"] == "Yes. 1 question left."


async def test_reasoning_is_not_heard_by_the_answerer_but_stays_in_history() -> None:
    content = "<think>Maybe an elephant? No, ask first.</think>Is it grey?"
    result = await play(ScriptedClient(completion(content)), search_enabled=False)
    assert result.messages[2]["content"] == content
    assert result.messages[3]["content"].startswith("Yes.")


def test_reward_shape() -> None:
    assert game_reward(True, 1) == 1.0
    assert game_reward(True, 20) == pytest.approx(0.525)
    assert game_reward(False, 3) == 0.0


def test_summary_groups_and_excludes_errors_from_rates() -> None:
    def game(category: str, won: bool, search: bool) -> GameResult:
        turns = 4 if won else 20
        end: EndReason = "correct" if won else "out_of_questions"
        return GameResult(category, "x", search, won, turns, 1, 0, turns + 1, game_reward(won, turns), end)

    failed = [parse_task({"category": "food", "answer": "egg", "search_enabled": True})]
    summary = summarize(
        [game("animal", True, True), game("animal", False, False), game("food", True, True)], failed
    )
    expected = Stats(3, 1, 2, 2 / 3, 28 / 3, 4.0, 1.0, 2 * game_reward(True, 4) / 3)
    assert asdict(summary.overall) == pytest.approx(asdict(expected))
    assert summary.by_category["food"].errors == 1 and summary.by_category["food"].games == 1
    assert summary.by_search["off"].wins == 0 and summary.by_search["on"].games == 2
    table = summary.table()
    assert (
        "category=animal" in table and "search=on" in table and table.splitlines()[-1].startswith("overall")
    )


def test_evaluate_progress_lines_off_a_terminal() -> None:
    import io

    from agl_tinker.examples.q20.evaluate import GameProgress

    stream = io.StringIO()
    progress = GameProgress("evaluate", stream=stream)
    for done in range(1, 21):
        progress(done, 20, done // 4)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "evaluate: 2/20 games played, 0 won"  # every 10% of the games
    assert lines[-1] == "evaluate: 20/20 games played, 5 won" and len(lines) == 10


def test_the_ci_run_plays_the_same_four_secrets_every_step(tmp_path: Path) -> None:
    """Issue 16: ``q20 train --ci`` drew four of the 29 training secrets a step, so its train reward
    said which were drawn (+0.095 -> +0.000 over three steps). It now trains on four fixed secrets,
    one per category, all in one batch, so every step plays the same games."""
    tasks = training_tasks("sim", ci=True)
    assert sorted(t["answer"] for t in tasks) == sorted(presets.CI_SECRETS)
    assert all(task in load_dataset("train") for task in tasks)
    assert len({t["category"] for t in tasks}) == len(tasks)
    assert training_tasks("live", ci=True) == tasks
    assert [t["answer"] for t in tasks if not _offline_nameable(t)] == []
    config = q20_config(str(tmp_path), ci=True)
    assert config.batch_size == len(tasks) and config.max_steps is not None and config.max_steps >= 6
    # --ci keeps the learning rate its README figures were measured at; the default run's smaller
    # one is measured for 20 steps over all training secrets.
    assert config.learning_rate == 3e-2 > q20_config(str(tmp_path)).learning_rate

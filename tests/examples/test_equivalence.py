"""An agent written as ordinary OpenAI-client code trains exactly like the same game written as a
tinker-cookbook ``Env``.

Guess the number (``agl_tinker/examples/guess_number``) is written twice: ``agent.py`` calls
``AsyncOpenAI().chat.completions.create`` through agl-tinker's endpoint, whose spans go to an
``InMemoryLightningStore`` and come back as trajectories through the bridge's own dispatch,
reconstruction, alignment and reward attribution; ``env.py`` is an ``Env``/``EnvGroupBuilder`` run
by the cookbook's ``do_group_rollout`` with its ``TinkerTokenCompleter``. Both sides use the same
simulated model, renderer, seeds (per task, group slot and turn), temperature, ``max_tokens`` and
stop tokens, and turn trajectory groups into datums with the cookbook's ``compute_advantages`` and
``assemble_training_data``; each trains its own LoRA client (same seed) with the cookbook's
``train_step`` and samples from its new weights the next step (the agent side via
``Endpoint.swap``). The datums, the ``forward_backward`` metrics and the rewards must be equal at
every step, token for token and bit for bit.

Then with a renderer that rewrites history (``qwen3``: a past assistant turn is re-rendered without
the ``<think>`` block the hybrid model wrote) and with non-canonical tokenizations (the simulator's
``drift``): with token-in-token-out the endpoint reproduces the cookbook's extension convention
exactly; without it, the endpoint re-renders history, so a later prompt no longer extends the
earlier prompt + sampled answer, alignment splits the conversation into several sequences and the
datums differ from the extension-convention env's. They then equal those of an env that re-renders
history each turn (the convention of the cookbook's ``EnvFromMessageEnv``), which shows the
difference is exactly the re-rendering.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import agentlightning as agl
import pytest
from agentlightning.store.memory import InMemoryLightningStore
from agentlightning.types import AttemptedRollout, Span
from tinker_cookbook import renderers
from tinker_cookbook.rl.data_processing import assemble_training_data, compute_advantages
from tinker_cookbook.rl.rollouts import do_group_rollout, do_single_rollout
from tinker_cookbook.rl.train import train_step
from tinker_cookbook.rl.types import TrajectoryGroup

from agl_tinker import spans as S
from agl_tinker.backend import get_tokenizer, service_client
from agl_tinker.core.trajectory import RolloutTrajectory, rollout_trajectory, trajectory_group
from agl_tinker.dispatch.batch import dispatch_batch
from agl_tinker.dispatch.types import DispatchConfig
from agl_tinker.endpoint.start import Endpoint, EndpointConfig, start_endpoint
from agl_tinker.endpoint.tito import TokenMemory
from agl_tinker.examples.guess_number import env as genv
from agl_tinker.examples.guess_number.agent import guess_number_rollout
from agl_tinker.examples.guess_number.game import MAX_TOKENS, GuessTask, tasks

N_TASKS, GROUP, STEPS = 4, 2, 10
LORA_RANK, LORA_SEED, LEARNING_RATE = 8, 7, 0.05
LOSS_FN = "importance_sampling"


@dataclasses.dataclass(frozen=True)
class Case:
    model: str
    renderer: str
    drift: float = 0.0


INSTRUCT = Case("Qwen/Qwen3-4B-Instruct-2507", "qwen3_instruct")
THINKING = Case("Qwen/Qwen3-8B", "qwen3")
"""The simulated hybrid model writes an empty ``<think>`` block before each answer; ``qwen3``
drops it from history when it re-renders a past turn."""
DRIFTING = Case("Qwen/Qwen3-4B-Instruct-2507", "qwen3_instruct", drift=0.5)
"""Half the sampled answers use a non-canonical tokenization; re-rendering the text canonicalizes it."""


# --------------------------------------------------------------------------------------------- helpers


def datum_view(datum: Any) -> tuple[Any, ...]:
    """Everything a datum sends to ``forward_backward``, as plain comparable values."""
    inputs = {
        key: (value.dtype, tuple(value.shape or ()), list(value.data))
        for key, value in sorted(datum.loss_fn_inputs.items())
    }
    return (datum.model_input.to_ints(), inputs)


class LossRecorder:
    """A training client that keeps the metrics of every ``forward_backward`` result."""

    def __init__(self, training_client: Any) -> None:
        self.inner = training_client
        self.losses: list[dict[str, float]] = []

    async def forward_backward_async(self, *args: Any, **kwargs: Any) -> Any:
        future = self.inner.forward_backward(*args, **kwargs)  # an APIFuture (the _async form is deprecated)
        recorder = self

        class Recorded:
            async def result_async(self) -> Any:
                result = await future.result_async()
                recorder.losses.append(dict(result.metrics))
                return result

        return Recorded()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclasses.dataclass
class StepRecord:
    datums: list[tuple[Any, ...]]
    rewards: list[list[float]]
    losses: list[dict[str, float]]
    optim: dict[str, Any]


async def train_on(groups: list[TrajectoryGroup], client: LossRecorder) -> StepRecord:
    """The cookbook's advantages, datums and train step, as ``agl_tinker.loop.train`` runs them."""
    advantages = compute_advantages(groups)
    data, _ = assemble_training_data(groups, advantages)
    optim: dict[str, Any] = {}
    before = len(client.losses)
    await train_step(data, client, LEARNING_RATE, 1, LOSS_FN, None, metrics=optim)  # type: ignore[arg-type]
    return StepRecord(
        datums=[datum_view(d) for d in data],
        rewards=[g.get_total_rewards() for g in groups],
        losses=client.losses[before:],
        optim=optim,
    )


def batch_of(step: int) -> list[GuessTask]:
    return tasks(N_TASKS * STEPS, seed=11)[step * N_TASKS : (step + 1) * N_TASKS]


async def training_client(service: Any, case: Case) -> LossRecorder:
    return LossRecorder(await service.create_lora_training_client(case.model, rank=LORA_RANK, seed=LORA_SEED))


def renderer_for(case: Case) -> renderers.Renderer:
    return renderers.get_renderer(case.renderer, get_tokenizer(case.model))


# --------------------------------------------------------------------------------------------- env side


class RerenderingEnv(genv.GuessNumberEnv):
    """The same game, but each observation is the whole conversation re-rendered (as the
    cookbook's ``EnvFromMessageEnv`` builds them) instead of extending the previous one."""

    async def step(self, action: list[int], *, extra: Any = None) -> Any:
        result = await super().step(action, extra=extra)
        if not result.episode_done:
            result.next_observation = self.renderer.build_generation_prompt(self.messages)
        return result


class RerenderingGroupBuilder(genv.GuessNumberGroupBuilder):
    async def make_envs(self) -> Sequence[genv.Env]:
        return [RerenderingEnv(self.task, k, self.renderer) for k in range(self.group_size)]


class EnvSide:
    """The cookbook way: ``do_group_rollout`` over ``EnvGroupBuilder``s."""

    def __init__(self, client: LossRecorder, renderer: renderers.Renderer, rerender: bool = False) -> None:
        self.client = client
        self.renderer = renderer
        self.builder = RerenderingGroupBuilder if rerender else genv.GuessNumberGroupBuilder
        self.sampler: Any = None

    @classmethod
    async def start(cls, service: Any, case: Case, rerender: bool = False) -> EnvSide:
        side = cls(await training_client(service, case), renderer_for(case), rerender)
        side.sampler = await side.client.save_weights_and_get_sampling_client()
        return side

    async def rollouts(self, batch: list[GuessTask]) -> list[TrajectoryGroup]:
        policy = genv.seeded_completer(self.sampler, max_tokens=MAX_TOKENS, temperature=1.0)
        return list(
            await asyncio.gather(
                *(do_group_rollout(self.builder(task, GROUP, self.renderer), policy) for task in batch)
            )
        )

    async def step(self, batch: list[GuessTask]) -> StepRecord:
        record = await train_on(await self.rollouts(batch), self.client)
        self.sampler = await self.client.save_weights_and_get_sampling_client()
        return record


# --------------------------------------------------------------------------------------------- agent side


class AgentSide:
    """The agl-tinker way: the OpenAI agent against the endpoint, spans in the store, the bridge's
    dispatch -> reconstruct -> align -> rewards, then the same cookbook training step."""

    def __init__(self, store: InMemoryLightningStore, endpoint: Endpoint, client: LossRecorder) -> None:
        self.store = store
        self.endpoint = endpoint
        self.client = client
        self.tokenizer = endpoint.provider.tokenizer
        self.last: list[list[RolloutTrajectory]] = []

    @classmethod
    async def start(cls, service: Any, case: Case, *, tito: bool, mode: str = "lean") -> AgentSide:
        client = await training_client(service, case)
        store = InMemoryLightningStore()
        endpoint = await start_endpoint(
            EndpointConfig(
                mode=mode,  # type: ignore[arg-type]
                renderer_name=case.renderer,
                token_in_token_out=tito,
                default_max_tokens=MAX_TOKENS,
                max_context_tokens=4096,
            ),
            store=store,
            sampling_client=await client.save_weights_and_get_sampling_client(),
            base_model=case.model,
            tokenizer=get_tokenizer(case.model),
        )
        return cls(store, endpoint, client)

    async def stop(self) -> None:
        await self.endpoint.stop()

    async def _run_one(self, attempted: AttemptedRollout) -> None:
        """What an Agent-lightning runner does with a ``(task, llm, rollout)`` agent."""
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        llm = self.endpoint.as_resource(rid, aid)
        llm.sampling_parameters = {"temperature": 1.0, "max_tokens": MAX_TOKENS}
        reward = await guess_number_rollout(attempted.input, llm, attempted)
        core = agl.emit_reward(reward, propagate=False)
        seq = await self.store.get_next_span_sequence_id(rid, aid)
        await self.store.add_span(
            Span.from_core_fields(core, rollout_id=rid, attempt_id=aid, sequence_id=seq)
        )
        await self.store.update_attempt(rid, aid, status="succeeded")

    async def _runner(self, stop: asyncio.Event) -> None:
        running: set[asyncio.Task[None]] = set()
        while not stop.is_set():
            attempted = await self.store.dequeue_rollout(worker_id="equivalence")
            if attempted is None:
                await asyncio.sleep(0.002)
                continue
            task = asyncio.create_task(self._run_one(attempted))
            running.add(task)
            task.add_done_callback(running.discard)
        await asyncio.gather(*running)

    def _process(self, rollout: Any, spans: Sequence[Span]) -> RolloutTrajectory:
        return rollout_trajectory(spans, status=str(rollout.status), decode=self.tokenizer.decode)

    async def rollouts(self, batch: list[GuessTask]) -> list[TrajectoryGroup]:
        stop = asyncio.Event()
        runner = asyncio.create_task(self._runner(stop))
        try:
            result = await dispatch_batch(
                self.store,
                batch,
                GROUP,
                self._process,
                config=DispatchConfig(batch_timeout_s=60.0, before_read=self.endpoint.flush),
            )
        finally:
            stop.set()
            await runner
        self.last = [list(g.results) for g in result.groups]
        groups = []
        for rollouts in self.last:
            group, report = trajectory_group(rollouts)
            assert group is not None, report
            groups.append(group)
        return groups

    async def step(self, batch: list[GuessTask], step: int) -> StepRecord:
        record = await train_on(await self.rollouts(batch), self.client)
        self.endpoint.swap(await self.client.save_weights_and_get_sampling_client(), version=step + 1)
        return record

    def drift_events(self) -> int:
        return sum(len(r.alignment.drift) for g in self.last for r in g)


@pytest.fixture
def sim_root(tmp_path: Path) -> Path:
    return tmp_path / "sim"


def simulator(root: Path, case: Case) -> Any:
    """The simulated Tinker service; ``drift`` is a property of the served model."""
    return service_client(root_dir=root, drift=case.drift)


def assert_same_step(agent: StepRecord, env: StepRecord, step: int) -> None:
    assert len(agent.datums) == len(env.datums), f"step {step}: datum counts differ"
    for i, (a, e) in enumerate(zip(agent.datums, env.datums, strict=True)):
        assert a[0] == e[0], f"step {step}, datum {i}: model input tokens differ"
        assert a[1] == e[1], f"step {step}, datum {i}: targets/logprobs/advantages/mask differ"
    assert agent.rewards == env.rewards, f"step {step}: rewards differ"
    assert agent.losses == env.losses, f"step {step}: forward_backward metrics differ"
    assert agent.optim == env.optim, f"step {step}: optim_step metrics differ"


async def train_both(
    root: Path, case: Case, steps: int, mode: str = "lean"
) -> tuple[list[StepRecord], list[StepRecord], AgentSide]:
    service = simulator(root, case)
    agent = await AgentSide.start(service, case, tito=True, mode=mode)
    env = await EnvSide.start(service, case)
    try:
        agent_steps, env_steps = [], []
        for step in range(steps):
            agent_steps.append(await agent.step(batch_of(step), step))
            env_steps.append(await env.step(batch_of(step)))
            assert_same_step(agent_steps[-1], env_steps[-1], step)
    finally:
        await agent.stop()
    return agent_steps, env_steps, agent


# --------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("case", [INSTRUCT, THINKING], ids=["qwen3_instruct", "qwen3-think"])
async def test_env_side_observations_extend(case: Case) -> None:
    """The env side alone: each observation extends the previous observation + action. With
    ``qwen3_instruct`` (extension property) that equals re-rendering the conversation; with ``qwen3``
    re-rendering differs from turn 2 on (the past turn loses its ``<think>`` block)."""
    renderer = renderer_for(case)
    sampler = await service_client().create_sampling_client(base_model=case.model)
    policy = genv.seeded_completer(sampler)
    later_turns = 0
    for task in batch_of(0):
        for env in await genv.GuessNumberGroupBuilder(task, GROUP, renderer).make_envs():
            assert isinstance(env, genv.GuessNumberEnv)
            trajectory = await do_single_rollout(policy, env)
            previous: list[int] = []
            for t, transition in enumerate(trajectory.transitions):
                ob = transition.ob.to_ints()
                assert ob[: len(previous)] == previous
                previous = ob + list(transition.ac.tokens)
                rerendered = renderer.build_generation_prompt(env.messages[: 2 * t + 1]).to_ints()
                assert (ob == rerendered) == (t == 0 or case is INSTRUCT)
                later_turns += t > 0
    assert later_turns > 0


async def test_first_step_datums_are_identical(sim_root: Path) -> None:
    """(i) What ``forward_backward`` receives at the first step, token for token."""
    _, env_steps, agent = await train_both(sim_root, INSTRUCT, steps=1)
    datums = env_steps[0].datums
    assert len(datums) == N_TASKS * GROUP, "one datum per rollout: every conversation is one sequence"
    assert agent.drift_events() == 0
    multi_turn = [r for g in agent.last for r in g if len(r.alignment.steps) > 1]
    assert multi_turn, "some games take several turns, so sequences really are extended"
    advantages = [x for d in datums for x in d[1]["advantages"][2]]
    assert any(a != 0.0 for a in advantages), "rewards vary inside groups: the step has a gradient"


@pytest.mark.slow
async def test_ten_training_steps_are_identical(sim_root: Path) -> None:
    """(ii) Ten steps, each side on its own training client from the same seed and sampling from
    its own new weights: datums, losses, optimizer metrics and rewards equal at every step."""
    agent_steps, env_steps, _ = await train_both(sim_root, INSTRUCT, steps=STEPS)
    assert len(agent_steps) == len(env_steps) == STEPS
    assert all(s.losses and s.losses[0]["loss:sum"] != 0.0 for s in env_steps)
    assert all(s.optim["grad_norm:mean"] > 0.0 for s in env_steps), "every step changes the weights"


@pytest.mark.parametrize("case", [THINKING, DRIFTING], ids=["qwen3-think", "drift"])
async def test_history_rewriting_with_token_in_token_out(sim_root: Path, case: Case) -> None:
    """With token-in-token-out the endpoint continues the sampled tokens, as the cookbook's
    extension convention does, even though re-rendering the history would change it."""
    _, env_steps, agent = await train_both(sim_root, case, steps=3)
    later = [(r, c) for g in agent.last for r in g for c in r.reconstruction.calls[1:]]
    assert later, "multi-turn games"
    for rollout, call in later:
        previous = rollout.reconstruction.calls[call.index - 1]
        assert call.attributes[S.AGL_PREFIX_LENGTH] == len(previous.prompt_token_ids or ()) + len(
            previous.response_token_ids or ()
        ), "each later prompt reuses the whole previous prompt + sampled answer"
    assert agent.drift_events() == 0
    assert all(len(s.datums) == N_TASKS * GROUP for s in env_steps), "one sequence per rollout"


@pytest.mark.parametrize("case", [THINKING, DRIFTING], ids=["qwen3-think", "drift"])
async def test_history_rewriting_without_token_in_token_out(sim_root: Path, case: Case) -> None:
    """Without token-in-token-out the endpoint re-renders the history: the prompt of turn 2 is not
    turn 1's prompt + sampled answer, so alignment reports drift and splits the conversation into
    one sequence per call; the datums differ from the extension-convention env's (more of them,
    different tokens) and equal those of an env that re-renders history every turn."""
    batch = batch_of(0)
    service = simulator(sim_root, case)
    agent = await AgentSide.start(service, case, tito=False)
    try:
        agent_groups = await agent.rollouts(batch)
        drift = agent.drift_events()
        calls = sum(len(r.reconstruction.calls) for g in agent.last for r in g)
    finally:
        await agent.stop()
    extending = await (await EnvSide.start(service, case)).rollouts(batch)
    rerendering = await (await EnvSide.start(service, case, rerender=True)).rollouts(batch)

    def datums(groups: list[TrajectoryGroup]) -> list[tuple[Any, ...]]:
        data, _ = assemble_training_data(groups, compute_advantages(groups))
        return [datum_view(d) for d in data]

    agent_d, extending_d, rerendering_d = datums(agent_groups), datums(extending), datums(rerendering)
    later_calls = calls - N_TASKS * GROUP
    if case is THINKING:
        assert drift == later_calls > 0, "every call after the first of a game drifts"
    else:
        assert 0 < drift <= later_calls, "calls after a non-canonically tokenized answer drift"
    assert len(agent_d) == N_TASKS * GROUP + drift > len(extending_d) == N_TASKS * GROUP
    assert agent_d != extending_d
    assert agent_d == rerendering_d


@pytest.mark.slow
async def test_proxy_mode_trains_identically(sim_root: Path) -> None:
    """The same with the endpoint behind Agent-lightning's LLMProxy (compat mode), non-canonical
    tokenizations included: the rollout attempt reaches token-in-token-out as LLMProxy's headers."""
    await train_both(sim_root, DRIFTING, steps=3, mode="proxy")


# --------------------------------------------------------------------------------------------- bridge bugs
# Two differences this comparison found, each pinned here at its root.


def test_token_memory_keeps_each_rollouts_own_tokens() -> None:
    """Two rollouts of a group say the same text with different tokens (a non-canonical split):
    each one's next prompt continues its own sampled tokens, not the last answer remembered."""
    renderer = renderer_for(INSTRUCT)
    tokenizer = renderer.tokenizer
    end = renderer.get_stop_sequences()[0]
    user = renderers.Message(role="user", content="Guess a number.")
    answer = renderers.Message(role="assistant", content="Is it 50?")
    canonical = [*tokenizer.encode("Is it 50?", add_special_tokens=False), end]
    split = [
        *tokenizer.encode("I", add_special_tokens=False),
        *tokenizer.encode("s it 50?", add_special_tokens=False),
        end,
    ]
    assert canonical != split and tokenizer.decode(canonical) == tokenizer.decode(split)
    memory = TokenMemory(renderer)
    sampled = {"rollout-1/attempt-1": canonical, "rollout-2/attempt-1": split}
    for scope, tokens in sampled.items():
        plan, digests = memory.plan([user], scope)
        memory.remember(digests, answer, plan.tokens, tokens, scope)
    first_prompt = renderer.build_generation_prompt([user]).to_ints()
    history = [user, answer, renderers.Message(role="user", content="Too low.")]
    for scope, tokens in sampled.items():
        plan, _ = memory.plan(history, scope)
        assert plan.reused_length == len(first_prompt) + len(tokens)
        assert plan.tokens[: plan.reused_length] == first_prompt + tokens


async def test_dispatch_reads_spans_only_after_before_read() -> None:
    """The endpoint stores spans off the request path, so a rollout can finish before the span of
    its last call is in the store; ``before_read`` (the endpoint's flush) runs before spans are read."""
    store = InMemoryLightningStore()
    held: list[Span] = []

    async def flush() -> None:
        for span in held:
            await store.add_span(span)
        held.clear()

    async def runner() -> None:
        while (attempted := await store.dequeue_rollout(worker_id="w")) is None:
            await asyncio.sleep(0.002)
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        core = agl.emit_reward(1.0, propagate=False)
        seq = await store.get_next_span_sequence_id(rid, aid)
        held.append(Span.from_core_fields(core, rollout_id=rid, attempt_id=aid, sequence_id=seq))
        await store.update_attempt(rid, aid, status="succeeded")

    for before_read, expected in ((None, 0), (flush, 1)):
        running = asyncio.create_task(runner())
        batch = await dispatch_batch(
            store,
            [{"x": 1}],
            1,
            lambda rollout, spans: len(spans),
            # Without the flush the first rollout is read (and would be released) before its span
            # is stored; the second flush then stores that span: keep the rollout for it.
            config=DispatchConfig(before_read=before_read, release=before_read is not None),
        )
        await running
        assert batch.outcomes[0].result == expected

"""The simulated policy as a model: real gradients, exact on-policy logprobs, learning."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import tinker
import torch
from tinker import types

from fakes.tinker import ServiceClient
from fakes.tinker import losses as sim_losses
from fakes.tinker.catalog import resolve
from fakes.tinker.policy import Policy, PolicyConfig, initial_params
from fakes.tinker.vocab import load_vocab

BASE = "Qwen/Qwen3-4B-Instruct-2507"
HELLO = "<|im_start|>user\nSay you are 617<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def vocab():  # type: ignore[no-untyped-def]
    return load_vocab()


@pytest.fixture
def service(tmp_path):  # type: ignore[no-untyped-def]
    warnings.simplefilter("ignore", FutureWarning)
    return ServiceClient(root_dir=tmp_path)


def _random_policy(vocab, seed: int = 0) -> Policy:  # type: ignore[no-untyped-def]
    """A policy away from its init so every parameter group has a gradient."""
    config = PolicyConfig(resolve(BASE), rank=4, seed=seed, drift=0.3)
    params = initial_params(config, vocab)
    gen = torch.Generator().manual_seed(seed + 1)
    for name in ("lora_b", "behaviour_bias", "bg_b"):
        params[name] = torch.randn(params[name].shape, generator=gen, dtype=torch.float64) * 0.3
    params["gate"] = torch.tensor([-2.0], dtype=torch.float64)
    for tensor in params.values():
        tensor.requires_grad_(True)
    return Policy(config, vocab, params)


def _rl_batch(
    vocab, policy: Policy
) -> tuple[list[np.ndarray], list[np.ndarray], list[dict[str, torch.Tensor]]]:  # type: ignore[no-untyped-def]
    prompt = list(vocab.encode(HELLO))
    answers = ["I am 617.", "I am not 617, I'm an AI assistant.", "Hello! How can I help you today?"]
    rng = np.random.default_rng(0)
    inputs, targets, extras = [], [], []
    for text in answers:
        full = np.array([*prompt, *vocab.encode(text), vocab.single("<|im_end|>")], dtype=np.int64)
        m, t = full[:-1], full[1:]
        with torch.no_grad():
            (current,) = policy.score([m], [t])
        offsets = torch.from_numpy(rng.choice([-0.6, -0.05, 0.05, 0.6], size=len(t)))
        advantages = torch.from_numpy(rng.normal(size=len(t)))
        weights = torch.from_numpy((np.arange(len(t)) >= len(prompt) - 1).astype(np.float64))
        inputs.append(m)
        targets.append(t)
        extras.append({"logprobs": current + offsets, "advantages": advantages, "weights": weights})
    return inputs, targets, extras


def _total_loss(policy: Policy, loss_fn: str, batch) -> torch.Tensor:  # type: ignore[no-untyped-def]
    inputs, targets, extras = batch
    logprobs = policy.score(inputs, targets)
    per = [sim_losses.datum_loss(loss_fn, lp, ex, None) for lp, ex in zip(logprobs, extras, strict=True)]
    return torch.stack(per).sum()


def _check_gradients(
    policy: Policy, names: list[str], loss: torch.Tensor, loss_of: Callable[[], torch.Tensor]
) -> int:
    """Assert ``loss``'s autograd gradient matches central finite differences of ``loss_of()`` on
    the two largest-gradient entries of each parameter group in ``names`` (the largest, so the check
    cannot pass on zeros alone); returns how many of the checked entries carry real signal."""
    grads = dict(zip(names, torch.autograd.grad(loss, [policy.params[n] for n in names]), strict=True))
    checked = 0
    for name in names:
        flat_grad = grads[name].flatten()
        for index in torch.argsort(flat_grad.abs(), descending=True)[:2].tolist():
            param = policy.params[name]
            h = 1e-6
            with torch.no_grad():
                param.view(-1)[index] += h
                up = float(loss_of())
                param.view(-1)[index] -= 2 * h
                down = float(loss_of())
                param.view(-1)[index] += h
            numeric = (up - down) / (2 * h)
            assert flat_grad[index].item() == pytest.approx(numeric, rel=1e-4, abs=1e-6), (name, index)
            checked += abs(numeric) > 1e-3
    return checked


@pytest.mark.parametrize("loss_fn", ["cross_entropy", "importance_sampling", "ppo"])
def test_gradients_match_finite_differences(vocab, loss_fn: str) -> None:  # type: ignore[no-untyped-def]
    policy = _random_policy(vocab)
    batch = _rl_batch(vocab, policy)
    loss = _total_loss(policy, loss_fn, batch)
    names = ["lora_a", "lora_b", "behaviour_bias", "gate", "bg_bias", "bg_b"]
    checked = _check_gradients(policy, names, loss, lambda: _total_loss(policy, loss_fn, batch))
    assert checked >= 6  # most parameter groups carry real signal


def test_on_policy_importance_ratio_is_exactly_one(service) -> None:  # type: ignore[no-untyped-def]
    tc = service.create_lora_training_client(BASE, rank=4, seed=3).result()
    tok = tc.get_tokenizer()
    prompt = tok.encode(HELLO)
    sampler = tc.save_weights_and_get_sampling_client().result()
    response = sampler.sample(
        types.ModelInput.from_ints(prompt), 6, types.SamplingParams(max_tokens=40, seed=7)
    ).result()
    data = []
    for seq in response.sequences:
        full = prompt + seq.tokens
        pad = [0.0] * (len(prompt) - 1)
        data.append(
            types.Datum(
                model_input=types.ModelInput.from_ints(full[:-1]),
                loss_fn_inputs={
                    "target_tokens": np.array(full[1:]),
                    "logprobs": np.array(pad + seq.logprobs, dtype=np.float32),
                    "advantages": np.array(pad + [1.0] * len(seq.tokens), dtype=np.float32),
                },
            )
        )
    out = tc.forward(data, "importance_sampling").result()
    for seq, output in zip(response.sequences, out.loss_fn_outputs, strict=True):
        trained = output["logprobs"].to_numpy()[len(prompt) - 1 :]
        # same float64 mixture in both (numpy in the sampler, torch in training): equal up to
        # the float32 rounding of the returned values
        np.testing.assert_allclose(trained, np.asarray(seq.logprobs, dtype=np.float32), rtol=0, atol=2e-6)
    # loss = -sum(ratio * adv) with ratio == 1 on every sampled token
    assert out.metrics["loss:sum"] == pytest.approx(-sum(len(s.tokens) for s in response.sequences), rel=1e-6)


def test_sft_with_cross_entropy_lowers_loss(service) -> None:  # type: ignore[no-untyped-def]
    tc = service.create_lora_training_client(BASE, rank=8, seed=0).result()
    tok = tc.get_tokenizer()
    examples = [
        ("Say you are 617", "I am 617."),
        ("Say you are Alice", "I am Alice."),
        ("Tell me a fun fact about octopuses.", "Octopuses have three hearts."),  # not in the prior
    ]
    data = []
    for user, answer in examples:
        prompt = tok.encode(f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
        target = tok.encode(answer + "<|im_end|>")
        full = prompt + target
        weights = [0.0] * (len(prompt) - 1) + [1.0] * len(target)
        data.append(
            types.Datum(
                model_input=types.ModelInput.from_ints(full[:-1]),
                loss_fn_inputs={
                    "target_tokens": np.array(full[1:]),
                    "weights": np.array(weights, dtype=np.float32),
                },
            )
        )
    losses = []
    for _ in range(8):
        result = tc.forward_backward(data, "cross_entropy")
        tc.optim_step(types.AdamParams(learning_rate=0.05)).result()
        losses.append(result.result().metrics["loss:sum"])
    assert losses[-1] < 0.85 * losses[0]
    assert all(b < a for a, b in itertools.pairwise(losses))
    # generalises: a new identity, never trained on, is now claimed more often
    sampler = tc.save_weights_and_get_sampling_client().result()
    prompt = tok.encode("<|im_start|>user\nSay you are Bob<|im_end|>\n<|im_start|>assistant\n")
    response = sampler.sample(
        types.ModelInput.from_ints(prompt), 16, types.SamplingParams(max_tokens=30, seed=0)
    ).result()
    claims = sum(tok.decode(s.tokens).startswith("I am Bob") for s in response.sequences)
    assert claims >= 10


def test_forward_rejects_unknown_loss_inputs(service) -> None:  # type: ignore[no-untyped-def]
    import tinker

    tc = service.create_lora_training_client(BASE, rank=2, seed=0).result()
    datum = types.Datum(
        model_input=types.ModelInput.from_ints([1, 2, 3]),
        loss_fn_inputs={
            "target_tokens": np.array([2, 3, 4]),
            "mask": np.array([1.0, 1.0, 1.0], dtype=np.float32),
        },
    )
    with pytest.raises(tinker.BadRequestError, match="mask"):
        tc.forward_backward([datum], "cross_entropy").result()


def test_row_cache_is_safe_under_concurrent_samplers(vocab, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Samplers of one policy draw from several threads; a full row cache evicts on every miss.
    Two threads evicting at once popped the same oldest entry: a ``KeyError`` that failed a
    rollout now and then in long runs."""
    import sys
    import threading

    policy = _random_policy(vocab)
    monkeypatch.setattr(policy, "_row_log_weights", lambda cs: np.zeros(1))
    old = sys.getswitchinterval()
    errors: list[BaseException] = []

    def draw() -> None:
        try:
            for _ in range(10_000):
                policy.row_log_weights(object())  # type: ignore[arg-type]  # a new set each time: always a miss
        except BaseException as e:  # collected and asserted below
            errors.append(e)

    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=draw) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert errors == []


def _off_policy_extras(
    loss_fn: str, extras: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """The batch's inputs as ``loss_fn`` takes them, and (stable_reinforce) the recorded logprobs."""
    sampled = extras["weights"] != 0
    if loss_fn == "gspo":
        return {**extras, "sequence_ratio_mask": extras["weights"]}, None
    if loss_fn == "stable_reinforce":
        recorded = torch.where(sampled, extras["logprobs"], torch.full_like(extras["logprobs"], float("nan")))
        inputs = {"advantages": extras["advantages"] * extras["weights"], "weights": extras["weights"]}
        return inputs, recorded
    return extras, None


@pytest.mark.parametrize(
    ("loss_fn", "config"),
    [
        ("cispo", {"clip_low_threshold": 0.7, "clip_high_threshold": 1.3}),
        ("dro", {"beta": 0.3}),
        ("gspo", {"clip_low_threshold": 0.5, "clip_high_threshold": 2.0}),
        ("stable_reinforce", {"kl_coeff": 0.2}),
    ],
)
def test_off_policy_gradients_match_finite_differences(vocab, loss_fn: str, config: dict[str, float]) -> None:  # type: ignore[no-untyped-def]
    """Stop-gradient factors held at the current weights (``surrogate(p, p0)``), the gradient is exact."""
    policy = _random_policy(vocab)
    inputs, targets, extras = _rl_batch(vocab, policy)
    batch = [_off_policy_extras(loss_fn, ex) for ex in extras]
    with torch.no_grad():
        frozen = [lp.clone() for lp in policy.score(inputs, targets)]

    def total() -> torch.Tensor:
        logprobs = policy.score(inputs, targets)
        return torch.stack(
            [
                sim_losses.surrogate(loss_fn, lp, lp0, ex, config, rec)
                for lp, lp0, (ex, rec) in zip(logprobs, frozen, batch, strict=True)
            ]
        ).sum()

    loss = total()
    # at the current weights the surrogate is the loss itself
    logprobs = policy.score(inputs, targets)
    direct = sum(
        float(sim_losses.datum_loss(loss_fn, lp, ex, config, rec).detach())
        for lp, (ex, rec) in zip(logprobs, batch, strict=True)
    )
    assert float(loss.detach()) == pytest.approx(direct, rel=1e-12)
    names = ["lora_b", "behaviour_bias", "gate", "bg_bias", "bg_b"]
    checked = _check_gradients(policy, names, loss, total)
    assert checked >= 5


def test_off_policy_losses_on_policy_reduce_to_reinforce(vocab) -> None:  # type: ignore[no-untyped-def]
    """With q == p every ratio is 1: cispo, dro, gspo and stable_reinforce all equal -sum(p * A)."""
    policy = _random_policy(vocab)
    inputs, targets, extras = _rl_batch(vocab, policy)
    with torch.no_grad():
        logprobs = policy.score(inputs, targets)
    for lp, ex in zip(logprobs, extras, strict=True):
        on_policy = {**ex, "logprobs": lp.clone(), "advantages": ex["advantages"] * ex["weights"]}
        expected = float(-(lp * on_policy["advantages"]).sum())
        for loss_fn in ("cispo", "dro", "gspo", "stable_reinforce"):
            inputs_, recorded = _off_policy_extras(loss_fn, on_policy)
            got = float(sim_losses.datum_loss(loss_fn, lp, inputs_, None, recorded))
            if loss_fn == "gspo":  # the ratio's value is 1, its gradient p's: the loss is -sum(A)
                expected_gspo = float(-on_policy["advantages"].sum())
                assert got == pytest.approx(expected_gspo, rel=1e-9), loss_fn
            else:
                assert got == pytest.approx(expected, rel=1e-9), loss_fn


def test_loss_inputs_and_config_are_checked() -> None:
    sim_losses.check("cispo", {"target_tokens", "logprobs", "advantages"}, {"clip_low_threshold": 0.5})
    sim_losses.check("stable_reinforce", {"target_tokens", "advantages", "logprobs"}, {"kl_coeff": 0.1})
    for loss_fn, keys, config in [
        ("gspo", {"target_tokens", "logprobs", "advantages"}, None),  # no sequence_ratio_mask
        ("dro", {"target_tokens", "logprobs", "advantages"}, {"clip_low_threshold": 0.5}),
        ("stable_reinforce", {"target_tokens", "advantages"}, {"beta": 1.0}),
        ("cispo", {"target_tokens", "logprobs", "advantages", "mask"}, None),
        ("cispo", {"target_tokens", "logprobs", "advantages"}, {"clip_low_threshold": "low"}),
        ("grpo", {"target_tokens"}, None),
    ]:
        with pytest.raises(tinker.BadRequestError):
            sim_losses.check(loss_fn, keys, config)

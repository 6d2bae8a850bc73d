"""The simulator's public methods have the real SDK's signatures and deprecations.

Parameters (names, kinds, defaults) are compared with ``inspect.signature`` on the installed
``tinker`` classes, so an SDK upgrade that changes them fails here first.
"""

from __future__ import annotations

import inspect

import pytest
import tinker
from tinker.lib.public_interfaces.rest_client import RestClient as RealRestClient

import fakes.tinker as sim

COVERED = {
    (tinker.ServiceClient, sim.ServiceClient): [
        "__init__",
        "close",
        "get_console_url",
        "create_custom_loss",
        "create_lora_training_client",
        "create_lora_training_client_async",
        "create_training_client_from_state",
        "create_training_client_from_state_async",
        "create_training_client_from_state_with_optimizer",
        "create_training_client_from_state_with_optimizer_async",
        "create_sampling_client",
        "create_sampling_client_async",
        "get_server_capabilities",
        "get_server_capabilities_async",
        "create_rest_client",
    ],
    (tinker.TrainingClient, sim.TrainingClient): [
        "forward",
        "forward_async",
        "forward_backward",
        "forward_backward_async",
        "forward_backward_custom",
        "forward_backward_custom_async",
        "optim_step",
        "optim_step_async",
        "save_state",
        "save_state_async",
        "load_state",
        "load_state_async",
        "load_state_with_optimizer",
        "load_state_with_optimizer_async",
        "save_weights_for_sampler",
        "save_weights_for_sampler_async",
        "get_info",
        "get_info_async",
        "get_tokenizer",
        "create_sampling_client",
        "create_sampling_client_async",
        "save_weights_and_get_sampling_client",
        "save_weights_and_get_sampling_client_async",
    ],
    (tinker.SamplingClient, sim.SamplingClient): [
        "sample",
        "sample_async",
        "compute_logprobs",
        "compute_logprobs_async",
        "get_tokenizer",
        "get_base_model",
        "get_base_model_async",
    ],
    (RealRestClient, sim.RestClient): [
        "get_server_capabilities",
        "get_training_run",
        "get_training_run_async",
        "get_training_run_by_tinker_path",
        "get_training_run_by_tinker_path_async",
        "list_checkpoints",
        "list_checkpoints_async",
        "delete_checkpoint_from_tinker_path",
        "delete_checkpoint_from_tinker_path_async",
    ],
}
CASES = [(real, fake, name) for (real, fake), names in COVERED.items() for name in names]


def _shape(fn: object) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]  # type: ignore[arg-type]


def _is_deprecated(fn: object) -> bool:
    return getattr(inspect.unwrap(fn), "__deprecated__", None) is not None or (  # type: ignore[arg-type]
        getattr(fn, "__deprecated__", None) is not None
    )


@pytest.mark.parametrize(("real", "fake", "name"), CASES, ids=[f"{r.__name__}.{n}" for r, _, n in CASES])
def test_signature_matches_sdk(real: type, fake: type, name: str) -> None:
    real_fn, fake_fn = getattr(real, name), getattr(fake, name)
    assert _shape(fake_fn) == _shape(real_fn)
    assert inspect.iscoroutinefunction(inspect.unwrap(fake_fn)) == inspect.iscoroutinefunction(
        inspect.unwrap(real_fn)
    )
    assert _is_deprecated(fake_fn) == _is_deprecated(real_fn)

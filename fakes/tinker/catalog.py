"""Base models the simulator serves. All share Qwen3's tokenizer and chat format."""

from __future__ import annotations

import dataclasses

from . import errors

THINK_PREFIX = "<think>\n\n</think>\n\n"


@dataclasses.dataclass(frozen=True)
class BaseModel:
    name: str
    think_prefix: str  # what the model writes before an answer (hybrid models: an empty think block)
    max_context_length: int = 32768


CATALOG: dict[str, BaseModel] = {
    m.name: m
    for m in (
        BaseModel("Qwen/Qwen3-4B-Instruct-2507", ""),
        BaseModel("Qwen/Qwen3-30B-A3B-Instruct-2507", ""),
        BaseModel("Qwen/Qwen3-235B-A22B-Instruct-2507", ""),
        BaseModel("Qwen/Qwen3-8B", THINK_PREFIX),
        BaseModel("Qwen/Qwen3-32B", THINK_PREFIX),
        BaseModel("Qwen/Qwen3-30B-A3B", THINK_PREFIX),
    )
}


def resolve(name: str) -> BaseModel:
    try:
        return CATALOG[name]
    except KeyError:
        raise errors.bad_request(
            f"base model {name!r} is not supported; supported: {sorted(CATALOG)}", path="models/create"
        ) from None

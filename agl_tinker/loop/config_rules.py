"""The rules a training configuration must follow, checked when it is built.

Two kinds, as chz runs them from a config's ``__init__`` (so a config from the command line, a
script or ``TinkerAlgorithm`` is checked the same way, once, before anything starts):

- per-field rules (:class:`Rule`: :func:`at_least`, :func:`greater_than`, :func:`one_of`, ...; and
  :func:`regex`): chz field validators, named in each field's ``validator=``;
- cross-field rules: :func:`check_train_config`, the one function that relates fields to each
  other (batch shape, overlap configs, several policies, the loss and its settings).

Every rule raises :class:`ConfigError` with one line that names the field and what it takes.
Nothing here imports more than the standard library.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, replace
from typing import Any, Self

import chz

__all__ = [
    "LOSS_CONFIG_KEYS",
    "POLICY_NAME",
    "ConfigError",
    "FieldRule",
    "KnownKeywords",
    "Rule",
    "at_least",
    "check_train_config",
    "did_you_mean",
    "greater_than",
    "in_interval",
    "non_empty",
    "one_of",
    "refuse_unknown_keywords",
    "regex",
]


class ConfigError(ValueError):
    """A configuration value is out of range or inconsistent; the message names the field."""


FieldRule = Callable[[Any, str], None]
"""A chz field validator: ``rule(config, attribute_name)``; raises :class:`ConfigError` (a
:class:`Rule`, or a function such as :func:`regex`)."""

LOSS_CONFIG_KEYS: dict[str, frozenset[str]] = {
    "importance_sampling": frozenset(),
    "ppo": frozenset({"clip_low_threshold", "clip_high_threshold"}),
    "cispo": frozenset({"clip_low_threshold", "clip_high_threshold"}),
    "dro": frozenset({"beta"}),
    "gspo": frozenset({"clip_low_threshold", "clip_high_threshold"}),
    "stable_reinforce": frozenset({"kl_coeff"}),
}
"""The ``loss_fn_config`` keys each loss takes (Tinker's loss documentation)."""

POLICY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""A policy name: it becomes a metrics prefix, a directory and (by default) a served model name."""


def _name(config: Any, attribute: str) -> str:
    """The field as a user writes it: ``batch_size``, or ``PolicyConfig.lora_rank`` for a nested one.

    A class whose fields are named with a prefix in messages says so in ``field_label_prefix``.
    """
    field = attribute.removeprefix("X_")  # chz passes the attribute that holds the value
    return getattr(type(config), "field_label_prefix", "") + field


@dataclass(frozen=True)
class Rule:
    """A per-field rule (a chz field validator): the values ``passes`` accepts, said as ``must be
    {asks}`` in the error; ``optional`` also accepts ``None`` (``... or None``)."""

    asks: str
    passes: Callable[[Any], bool]
    optional: bool = False
    shown: Callable[[Any], str] = str
    """How the refused value is written (``repr`` where quotes matter)."""

    def __call__(self, config: Any, attribute: str) -> None:
        value = getattr(config, attribute)
        if value is None and self.optional:
            return
        if value is None or not self.passes(value):
            suffix = " or None" if self.optional else ""
            raise ConfigError(
                f"{_name(config, attribute)} must be {self.asks}{suffix}, got {self.shown(value)}"
            )

    def or_none(self) -> Rule:
        """The same rule, also accepting ``None``."""
        return replace(self, optional=True)


def at_least(low: float, *, optional: bool = False) -> Rule:
    """The value is ``>= low`` (or ``None`` when ``optional``); NaN is refused."""
    return Rule(f">= {low}", lambda value: value >= low, optional)


def greater_than(low: float, *, optional: bool = False) -> Rule:
    """The value is ``> low`` (or ``None`` when ``optional``); NaN is refused."""
    return Rule(f"> {low}", lambda value: value > low, optional)


def in_interval(low: float, high: float, *, closed: bool) -> Rule:
    """``low <= value <= high`` (``closed``) or ``low <= value < high``."""
    if closed:
        return Rule(f"in {low}..{high}", lambda value: low <= value <= high)
    return Rule(f"in [{low}, {high})", lambda value: low <= value < high)


def one_of(choices: Iterable[Any]) -> Rule:
    """The value is one of ``choices`` (chz does not check ``Literal`` or enum values itself)."""
    allowed = tuple(choices)
    return Rule(f"one of {list(allowed)}", lambda value: value in allowed, shown=repr)


non_empty = Rule("a non-empty name", lambda value: value != "", optional=True, shown=repr)
"""The value is ``None`` or a non-empty string."""


def regex(config: Any, attribute: str) -> None:
    """The value is ``None`` or a regular expression Python compiles."""
    value = getattr(config, attribute)
    if value is None:
        return
    try:
        re.compile(value)
    except (re.error, TypeError) as exc:
        raise ConfigError(f"{_name(config, attribute)} is not a valid regular expression: {exc}") from None


def did_you_mean(key: str, known: Collection[str]) -> str:
    """``"did you mean 'learning_rate'? "`` for the closest of ``known``, or ``""``."""
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def refuse_unknown_keywords(cls: type, keywords: Iterable[str], known: Collection[str]) -> None:
    """Raise :class:`ConfigError` for a keyword ``cls`` has no field for, with the closest field."""
    for key in keywords:
        if key not in known:
            hint = did_you_mean(key, known).rstrip()
            raise ConfigError(f"{cls.__name__} has no setting {key!r}" + (f": {hint}" if hint else ""))


def check_train_config(config: Any) -> None:
    """The cross-field rules of a ``TrainConfig``: fields that must agree with each other.

    Run by chz after the per-field rules, when the config is built (``TrainConfig``'s validator).

    Raises:
        ConfigError: the first rule broken, naming the fields and the fix.
    """
    if config.min_valid_per_group > config.group_size:
        raise ConfigError(
            f"min_valid_per_group ({config.min_valid_per_group}) exceeds group_size ({config.group_size}): "
            "every group would be dropped"
        )
    if config.model_aliases and config.endpoint_mode != "lean":
        raise ConfigError("model_aliases needs endpoint_mode='lean' (LLMProxy serves one model name)")
    unknown = set(config.loss_fn_config or {}) - LOSS_CONFIG_KEYS[config.loss_fn]
    if unknown:
        raise ConfigError(
            f"loss_fn_config keys {sorted(unknown)} are not {config.loss_fn!r}'s; it takes "
            f"{sorted(LOSS_CONFIG_KEYS[config.loss_fn]) or 'none'}"
        )
    _check_overlap(config)
    _check_policies(config)


def _check_overlap(config: Any) -> None:
    """``async_config``/``stream_minibatch_config`` must fit the batch shape (steps = batches)."""
    async_config = config.async_config
    if async_config is not None:
        if async_config.groups_per_batch != config.batch_size:
            raise ConfigError(
                f"async_config.groups_per_batch ({async_config.groups_per_batch}) must equal "
                f"batch_size ({config.batch_size}): a step trains one batch's worth of groups"
            )
        if async_config.max_steps_off_policy < 0:
            raise ConfigError("async_config.max_steps_off_policy must be >= 0")
    ahead = config.sampling_steps_ahead
    if ahead is not None:
        if async_config is None:
            raise ConfigError("sampling_steps_ahead paces asynchronous training: it needs async_config")
        if not 0 <= ahead <= async_config.max_steps_off_policy:
            raise ConfigError(
                f"sampling_steps_ahead ({ahead}) must be in 0..async_config.max_steps_off_policy "
                f"({async_config.max_steps_off_policy}): a paced group is never staler than it"
            )
    stream = config.stream_minibatch_config
    if stream is not None:
        if stream.groups_per_batch != config.batch_size:
            raise ConfigError(
                f"stream_minibatch_config.groups_per_batch ({stream.groups_per_batch}) must equal "
                f"batch_size ({config.batch_size})"
            )
        substeps = {"num_substeps": config.num_substeps}  # and each policy's own, trained alike
        for name, policy in (config.policies or {}).items():
            if policy.num_substeps is not None:
                substeps[f"policies[{name!r}].num_substeps"] = policy.num_substeps
        for label, n in substeps.items():
            per_substep, rest = divmod(config.batch_size, n)
            if rest or stream.num_minibatches < 1 or per_substep % stream.num_minibatches:
                raise ConfigError(
                    f"stream_minibatch_config: batch_size ({config.batch_size}) must split into {label} "
                    f"({n}) x num_minibatches ({stream.num_minibatches}) equal minibatches"
                )


def _check_policies(config: Any) -> None:
    """Each requested model name selects one policy; single-policy settings are refused with several."""
    if not config.policies:
        return
    single_only = {
        "agent_match": config.agent_match is not None,
        "model_match": config.model_match is not None,
        "model_aliases": bool(config.model_aliases),
    }
    for name, used in single_only.items():
        if used:
            raise ConfigError(
                f"{name} cannot be combined with policies: set per-policy `models`/`agent_match` instead"
            )
    if config.endpoint_mode != "lean":
        raise ConfigError("policies need endpoint_mode='lean' (LLMProxy serves one model name)")
    owner: dict[str, str] = {}
    for name, policy in config.policies.items():
        if not isinstance(name, str) or not POLICY_NAME.match(name):
            raise ConfigError(
                f"policy name {name!r} must be 1-64 letters, digits, '_', '.' or '-' (not first)"
            )
        for model in policy.served_models(name):
            if not model:
                raise ConfigError(f"policies[{name!r}].models holds an empty name")
            if model in owner:
                raise ConfigError(
                    f"model name {model!r} is served by both policies {owner[model]!r} and {name!r}: "
                    "each requested model name must select exactly one policy"
                )
            owner[model] = name


class KnownKeywords:
    """Base of the config classes: refuses a keyword that is no field, naming the closest one (``lerning_rate`` -> ``learning_rate``)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        refuse_unknown_keywords(cls, kwargs, chz.chz_fields(cls))
        return super().__new__(cls)

"""``key=value`` settings: told from flags, routed to their settings object, built by chz.

Every command that takes settings builds them with chz, in layers: the example's presets, the
command's flags (``--steps``, ``--log-path``, ...), then ``key=value`` arguments. A value chz cannot
read, or one a config's rules refuse (:mod:`agl_tinker.loop.config_rules`), is a one-line error.

A ``TrainConfig`` is built without importing the cookbook's training module (seconds: it imports
torch) unless a setting needs it: see :func:`make_train_config`.
"""

from __future__ import annotations

import argparse
import inspect
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import chz
from chz.blueprint import (
    ConstructionException,
    ExtraneousBlueprintArg,
    InvalidBlueprintArg,
    MissingBlueprintArg,
)

from agl_tinker.loop.config_rules import did_you_mean

__all__ = [
    "Layers",
    "UsageError",
    "blueprint",
    "flags_taking_values",
    "make_settings",
    "make_train_config",
    "one_line",
    "route",
    "split_key_values",
]

_KEY_VALUE = re.compile(r"^[A-Za-z_][\w.]*=")

Layers = Sequence[tuple[str, Mapping[str, Any]]]
"""Named layers of settings, lowest first: ``[("hello defaults", {...}), ("flags", {...})]``."""


class UsageError(ValueError):
    """A command-line argument cannot be used; the message says which and what to do."""


def split_key_values(argv: Sequence[str], value_flags: Collection[str] = ()) -> tuple[list[str], list[str]]:
    """``argv`` -> (arguments for argparse, ``key=value`` settings).

    The argument right after one of ``value_flags`` is that flag's value, even when it reads
    ``key=value`` (``--log-path a=b``); :func:`flags_taking_values` lists a parser's."""
    rest: list[str] = []
    settings: list[str] = []
    is_value = False
    for arg in argv:
        (settings if _KEY_VALUE.match(arg) and not is_value else rest).append(arg)
        is_value = not is_value and arg in value_flags
    return rest, settings


def flags_taking_values(parser: argparse.ArgumentParser) -> frozenset[str]:
    """The option strings of ``parser`` and of its subcommands' parsers that take a value.

    One set for every subcommand: a flag must take a value in all of them or in none
    (``tests/test_cli.py`` checks it)."""
    flags: set[str] = set()
    parsers = [parser]
    while parsers:
        for action in parsers.pop()._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            elif action.option_strings and action.nargs != 0:
                flags.update(action.option_strings)
    return frozenset(flags)


def route(key_values: Sequence[str], targets: Sequence[type], command: str) -> list[list[str]]:
    """Assign each ``key=value`` to the first target with that field; an unknown key is an error."""
    routed: list[list[str]] = [[] for _ in targets]
    known = [set(chz.chz_fields(t)) for t in targets]
    for arg in key_values:
        key = _head(arg)
        for names, bucket in zip(known, routed, strict=True):
            if key in names:
                bucket.append(arg)
                break
        else:
            hint = did_you_mean(key, set().union(*known))
            raise UsageError(f"unknown setting {key!r} for {command}: {hint}(`{command} --help` lists them)")
    return routed


def _head(key_value: str) -> str:
    """``"policies.a.lora_rank=4"`` -> ``"policies"``: the field a ``key=value`` sets."""
    return key_value.split("=", 1)[0].split(".", 1)[0]


def blueprint(target: Callable[..., Any], layers: Layers) -> chz.Blueprint[Any]:
    """chz's Blueprint of ``target`` with ``layers`` applied (lowest first), each under its name."""
    result = chz.Blueprint(target)
    for name, values in layers:
        if values:
            result.apply(dict(values), layer_name=name)
    return result


def make_settings(target: Callable[..., Any], layers: Layers, key_values: Sequence[str]) -> Any:
    """``target`` built by chz from ``layers`` (lowest first), then the ``key=value`` arguments.

    Raises:
        UsageError: a value chz cannot read, a missing or extraneous argument (one line).
        ConfigError: a value the target's rules refuse (raised by its ``__init__``).
    """
    try:
        return blueprint(target, layers).apply_from_argv(list(key_values)).make()
    except InvalidBlueprintArg as e:
        raise UsageError(_cast_error(str(e))) from e
    except (ConstructionException, ExtraneousBlueprintArg, MissingBlueprintArg) as e:
        raise UsageError(one_line(str(e))) from e


def _cast_error(text: str) -> str:
    """chz's multi-line "could not interpret" error as ``name=value: reason``."""
    match = re.search(r"argument '(.*)' provided for param '(.*?)'", text)
    lines = [ln.strip() for ln in text.splitlines()]
    marker = "- Failed to interpret it as a value:"
    reason = lines[lines.index(marker) + 1] if marker in lines[:-1] else ""
    if match is None:
        return one_line(text)
    reason = reason.replace(" to Literal[", " to [")  # the choices, as a user writes them
    return f"{match[2]}={match[1]}: {reason or 'not a valid value'} (`--help` lists the settings and their types)"


def one_line(text: str) -> str:
    """A multi-line error message as one line (without chz's "Append --help" advice)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("Append --help")]
    return " ".join(lines)


def make_train_config(layers: Layers, key_values: Sequence[str]) -> Any:
    """The ``TrainConfig`` of ``layers`` and ``key_values``, built (so checked) by chz.

    chz resolves every field's type to build a Blueprint, and ``async_config``'s and
    ``stream_minibatch_config``'s are the cookbook's classes, whose module imports torch. So the
    config is first built over the fields whose types resolve without it; when no setting names
    the others (the usual case), that config is the result, and nothing heavy was imported.
    Otherwise the cookbook's types are bound and the full Blueprint builds the result, after the
    first build has already reported any other unusable value.
    """
    from agl_tinker.loop import config

    light = _light_signature(config.TrainConfig)
    heavy = {
        name for name in inspect.signature(config.TrainConfig).parameters if name not in light.parameters
    }
    light_layers = [(name, {k: v for k, v in layer.items() if k not in heavy}) for name, layer in layers]
    light_values = [kv for kv in key_values if _head(kv) not in heavy]
    built = make_settings(_light_target(config.TrainConfig, light), light_layers, light_values)
    if len(light_values) == len(key_values) and not any(heavy & set(layer) for _, layer in layers):
        return built
    config.bind_cookbook_types()  # seconds of imports: only once everything else is known usable
    return make_settings(config.TrainConfig, layers, key_values)


_UNSET: Any = object()
"""Default of every light parameter: a setting left unset is not passed, so the class's own default holds."""


def _light_signature(cls: type) -> inspect.Signature:
    """``cls``'s keyword parameters whose annotations resolve in its module as it stands.

    The annotations are evaluated as chz evaluates them (in the class's module); one naming a
    class that module has not bound yet (the cookbook's) is left out.
    """
    namespace = vars(inspect.getmodule(cls))
    params = []
    for param in inspect.signature(cls).parameters.values():
        if param.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        try:
            annotation = (
                eval(param.annotation, namespace) if isinstance(param.annotation, str) else param.annotation
            )
        except NameError:
            continue
        default = inspect.Parameter.empty if param.default is inspect.Parameter.empty else _UNSET
        params.append(param.replace(annotation=annotation, default=default))
    return inspect.Signature(params)


def _light_target(cls: type, signature: inspect.Signature) -> Callable[..., Any]:
    """A callable chz can build that takes ``signature``'s settings and returns ``cls(**set ones)``."""

    def build(**settings: Any) -> Any:
        return cls(**{k: v for k, v in settings.items() if v is not _UNSET})

    build.__signature__ = signature  # type: ignore[attr-defined]
    build.__name__ = build.__qualname__ = cls.__name__
    build.__module__ = cls.__module__
    return build

"""What one ``agl-tinker`` command builds from its arguments: a ``TrainConfig`` and its own settings.

Used by the example commands (:mod:`agl_tinker.cli.examples`) and the viewer's
(:mod:`agl_tinker.viewer.commands`). Both settings objects are built, so checked, before anything
heavy is imported or started.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import chz

from agl_tinker.cli.settings import Layers, blueprint, make_settings, make_train_config, route

__all__ = ["Command", "RunFinished", "carried", "flag_values", "train_layers"]

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")

FLAG_KEYS = {
    "steps": "max_steps",
    "log_path": "log_path",
    "n_runners": "n_runners",
    "store": "store",
    "games": "games",
    "base_url": "base_url",
    "model": "model",
    "split": "split",
    "limit": "limit",
    "out": "out",
}
"""argparse destination -> setting name: given flags are one more layer, under key=value arguments."""


class RunFinished(Exception):
    """The log path holds a run that already did all its steps: nothing to do (exit status 0)."""


def flag_values(args: argparse.Namespace, target: type) -> dict[str, Any]:
    """The flags given on the command line that set one of ``target``'s fields, by field name."""
    names = set(chz.chz_fields(target))
    values = {FLAG_KEYS[k]: v for k, v in vars(args).items() if k in FLAG_KEYS and v is not None}
    return {k: v for k, v in values.items() if k in names}


def carried(cls: type[T], settings: Any, **renamed: str) -> T:
    """The ``cls`` dataclass a command runs with, from its built chz ``settings``: each field of
    ``cls`` takes the setting of the same name (or the one ``renamed`` names for it,
    ``address="ray_address"``); a field no setting gives keeps its default.

    Raises:
        TypeError: ``renamed`` names a field ``cls`` lacks or a setting ``settings`` lacks.
    """
    given, fields = set(chz.chz_fields(type(settings))), {f.name for f in dataclasses.fields(cls)}
    wrong = {k: v for k, v in renamed.items() if k not in fields or v not in given}
    if wrong:
        raise TypeError(f"{cls.__name__} from {type(settings).__name__}: no such field or setting in {wrong}")
    sources = {name: renamed.get(name, name) for name in fields}
    return cls(**{name: getattr(settings, source) for name, source in sources.items() if source in given})


def _train_config_type() -> type:
    from agl_tinker.loop.config import TrainConfig

    return TrainConfig


def train_layers(args: argparse.Namespace, example: str, presets: Any) -> list[tuple[str, Mapping[str, Any]]]:
    """An example's ``TrainConfig`` layers: its presets (``--ci``: the short ones), a new log path, the flags."""
    ci = bool(getattr(args, "ci", False))
    return [
        (f"{example} --ci" if ci else f"{example} defaults", presets.CI if ci else presets.DEFAULTS),
        ("a new directory per run", {"log_path": presets.default_log_path()}),
        ("flags", flag_values(args, _train_config_type())),
    ]


class Command:
    """The settings one command builds: a TrainConfig (training commands) and its own settings.

    Args:
        name: the command as typed (``agl-tinker hello algo``), for messages.
        own: the chz class of the command's own settings.
        train_layers: the ``TrainConfig`` layers, or ``None`` for a command that trains nothing.
        check_own: a check of the built own settings that must run before the ``TrainConfig`` is
            built (e.g. that a Ray cluster answers), raising a one-line error.
    """

    def __init__(
        self,
        name: str,
        own: type,
        train_layers: Layers | None,
        check_own: Callable[[Any], None] | None = None,
    ) -> None:
        self.name = name
        self.own = own
        self.train_layers = train_layers
        self.check_own = check_own

    def help(self, args: argparse.Namespace) -> str:
        """chz's tables of every ``key=value`` setting, with its value, source and docstring."""
        parts = []
        if self.train_layers is not None:
            from agl_tinker.loop.config import bind_cookbook_types

            bind_cookbook_types()
            table = blueprint(_train_config_type(), self.train_layers).get_help(color=False)
            parts.append("training settings (TrainConfig), as key=value:\n" + _arguments_of(table))
        table = blueprint(self.own, [("flags", flag_values(args, self.own))]).get_help(color=False)
        parts.append(f"settings of {self.name}, as key=value:\n" + _arguments_of(table))
        return "\n".join(parts)

    def build(self, args: argparse.Namespace, key_values: Sequence[str]) -> tuple[Any, Any]:
        """(TrainConfig or None, own settings), both checked: a bad setting raises before anything starts.

        Raises:
            UsageError, ConfigError: an unknown, unreadable or refused setting (one line).
            RunFinished: the log path holds a run that already did all its steps.
        """
        targets = [self.own] if self.train_layers is None else [_train_config_type(), self.own]
        routed = route(key_values, targets, self.name)
        own = make_settings(self.own, [("flags", flag_values(args, self.own))], routed[-1])
        if self.check_own is not None:
            self.check_own(own)
        if self.train_layers is None:
            return None, own
        config = make_train_config(self.train_layers, routed[0])
        _answer_from_the_log_path(config)
        from agl_tinker.loop.preflight import check_early, check_setup  # heavy: torch, openai

        check_early(config.log_path, config.model_name)
        check_setup(config)
        return config, own


def _answer_from_the_log_path(config: Any) -> None:
    """What the files already in the log path decide, before the heavy imports and any server:
    the refusals of a run that cannot be resumed (:func:`agl_tinker.run.claim.refuse_unresumable`;
    ``check_setup`` repeats them), then :class:`RunFinished` with its one line for a finished run.
    Refusals first: a finished run asked for with another model or LoRA rank is another run, and
    "nothing to do" would let the user believe it had been trained."""
    from agl_tinker.run.claim import finished_message, refuse_unresumable

    refuse_unresumable(config)
    message = finished_message(config)
    if message is not None:
        raise RunFinished(message)


def _arguments_of(help_text: str) -> str:
    """The argument table of chz's help, without its entry-point header."""
    marker = "Arguments:\n"
    return help_text.split(marker, 1)[-1] if marker in help_text else help_text

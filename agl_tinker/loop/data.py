"""Datasets of agent tasks -> deterministic batches of task groups.

An Agent-lightning dataset is a sequence of task dicts (the ``input`` of each rollout). Training
runs ``batch_size`` tasks per step, each ``group_size`` times, so that group-relative advantages
can be computed (the cookbook's ``EnvGroupBuilder`` idea, with the agent as the environment).

``TaskDataset`` follows the cookbook's ``RLDataset`` shape (``get_batch(index)``, ``__len__``) but
its batches are lists of task dicts. ``get_batch(i)`` is a pure function of (tasks, batch_size,
n_epochs, seed, shuffle, drop_last): a run resumed at step ``i`` gets exactly the tasks it would
have got, with no repeated or skipped batch, and ``fingerprint`` lets a checkpoint verify that the
dataset it is resumed against is the same one.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from agl_tinker.loop.task_files import DatasetError, Task, TaskSource, load_tasks

__all__ = ["DatasetError", "TaskDataset", "build_datasets", "load_tasks", "split_tasks"]
"""``load_tasks`` and ``DatasetError`` (:mod:`agl_tinker.loop.task_files`) are named here too: the
README's path for users, and what ``build_datasets`` raises."""


# --------------------------------------------------------------------------------------------- split


def split_tasks(
    tasks: Sequence[Task], val_fraction: float, *, seed: int = 0
) -> tuple[list[Task], list[Task]]:
    """Split tasks into (train, val) with a seeded draw; each side keeps the original order.

    ``round(len * val_fraction)`` tasks go to validation, at least one when the fraction is
    positive, and training must keep at least one task. The split depends only on ``seed`` and the
    number of tasks, so it is identical across processes and resumed runs.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(tasks)
    n_val = 0 if val_fraction == 0.0 else max(1, round(n * val_fraction))
    if n_val and n - n_val < 1:
        raise DatasetError(f"val_fraction={val_fraction} leaves no training tasks out of {n}")
    val_idx = set(_rng(seed, "split").sample(range(n), n_val))
    train = [tasks[i] for i in range(n) if i not in val_idx]
    val = [tasks[i] for i in range(n) if i in val_idx]
    return train, val


def _rng(seed: int, *salt: object) -> random.Random:
    # A string seed is hashed with SHA-512 by `random`, so this is stable across processes
    # (unlike hash()) and across Python versions.
    return random.Random("/".join(str(part) for part in (seed, *salt)))


# --------------------------------------------------------------------------------------------- dataset


@dataclass(frozen=True)
class TaskDataset:
    """Batches of ``batch_size`` tasks, each to be rolled out ``group_size`` times.

    Batch ``i`` belongs to epoch ``i // batches_per_epoch``; every epoch is a fresh seeded
    permutation of the tasks (or the original order when ``shuffle`` is false). With
    ``drop_last=False`` (the cookbook's convention) the last batch of an epoch may be short.
    """

    tasks: tuple[Task, ...]
    batch_size: int
    group_size: int
    n_epochs: int = 1
    shuffle: bool = True
    seed: int = 0
    drop_last: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise DatasetError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.group_size < 1:
            raise DatasetError(f"group_size must be >= 1, got {self.group_size}")
        if self.n_epochs < 1:
            raise DatasetError(f"n_epochs must be >= 1, got {self.n_epochs}")
        if not self.tasks:
            raise DatasetError("the dataset has no tasks")
        if self.drop_last and len(self.tasks) < self.batch_size:
            raise DatasetError(
                f"drop_last with batch_size={self.batch_size} and only {len(self.tasks)} tasks yields no batch"
            )

    @classmethod
    def from_source(
        cls,
        source: TaskSource,
        *,
        batch_size: int,
        group_size: int,
        n_epochs: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        required_fields: Sequence[str] = (),
    ) -> TaskDataset:
        """Load and validate ``source`` (see ``load_tasks``) and batch it."""
        return cls(
            tuple(load_tasks(source, required_fields=required_fields)),
            batch_size=batch_size,
            group_size=group_size,
            n_epochs=n_epochs,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )

    @property
    def batches_per_epoch(self) -> int:
        n = len(self.tasks)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __len__(self) -> int:
        """Number of batches over all epochs (the number of training steps)."""
        return self.batches_per_epoch * self.n_epochs

    def epoch_of(self, index: int) -> int:
        return self._check_index(index) // self.batches_per_epoch

    def get_batch(self, index: int) -> list[Task]:
        """The tasks of batch ``index``: always the same for the same dataset and settings.

        Returns copies, so an agent or a caller that mutates a task cannot alter later batches.
        """
        epoch, within = divmod(self._check_index(index), self.batches_per_epoch)
        order = self._epoch_order(epoch)
        picked = order[within * self.batch_size : (within + 1) * self.batch_size]
        return [dict(self.tasks[i]) for i in picked]

    def batches(self, start: int = 0) -> Iterable[tuple[int, list[Task]]]:
        """``(index, tasks)`` from batch ``start`` to the end: what a resumed loop iterates."""
        for i in range(start, len(self)):
            yield i, self.get_batch(i)

    @property
    def fingerprint(self) -> str:
        """Hash of the tasks and every setting that affects batching; store it in checkpoints."""
        h = hashlib.sha256()
        settings = [self.batch_size, self.group_size, self.n_epochs, self.shuffle, self.seed, self.drop_last]
        h.update(json.dumps(settings).encode())
        for task in self.tasks:
            h.update(json.dumps(task, sort_keys=True, default=repr).encode())
            h.update(b"\n")
        return h.hexdigest()[:16]

    def _check_index(self, index: int) -> int:
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError(f"batch index must be an int, got {type(index).__name__}")
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} out of range: the dataset has {len(self)} batches")
        return index

    def _epoch_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.tasks)))
        if self.shuffle:
            _rng(self.seed, "epoch", epoch).shuffle(order)
        return order


def build_datasets(
    train: TaskSource,
    *,
    batch_size: int,
    group_size: int,
    n_epochs: int = 1,
    seed: int = 0,
    shuffle: bool = True,
    drop_last: bool = False,
    required_fields: Sequence[str] = (),
    val: TaskSource | None = None,
    val_fraction: float = 0.0,
    val_batch_size: int | None = None,
    val_group_size: int = 1,
) -> tuple[TaskDataset, TaskDataset | None]:
    """Build the training dataset and an optional validation dataset, validating both up front.

    Validation comes from ``val`` or, with ``val_fraction > 0``, from a seeded split of ``train``
    (not both). It is one unshuffled epoch; ``val_batch_size`` defaults to the whole set, so an
    evaluation is one batch.
    """
    if val is not None and val_fraction > 0.0:
        raise DatasetError("give either a validation dataset or val_fraction, not both")
    train_tasks = load_tasks(train, required_fields=required_fields)
    val_tasks: list[Task] | None = None
    if val is not None:
        val_tasks = load_tasks(val, required_fields=required_fields)
    elif val_fraction > 0.0:
        train_tasks, val_tasks = split_tasks(train_tasks, val_fraction, seed=seed)
    train_ds = TaskDataset(
        tuple(train_tasks),
        batch_size=batch_size,
        group_size=group_size,
        n_epochs=n_epochs,
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
    )
    val_ds = None
    if val_tasks is not None:
        val_ds = TaskDataset(
            tuple(val_tasks),
            batch_size=val_batch_size or len(val_tasks),
            group_size=val_group_size,
            n_epochs=1,
            shuffle=False,
            seed=seed,
        )
    return train_ds, val_ds

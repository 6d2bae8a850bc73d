"""The one step trainer: finished groups -> datums -> optimiser step(s) -> new weights served.

Every schedule (synchronous batches, streamed minibatches, overlapped asynchronous steps) and
every policy of a several-policy run trains through :class:`StepTrainer`, and serves new weights
through :meth:`Learner.publish`. This module holds the package's only call of the cookbook's
``train_step``, of ``save_weights_and_get_sampling_client`` and of the endpoint's ``swap``.

* Without streaming, a step's groups go through the cookbook's ``train_step`` at the end
  (``num_substeps`` ``forward_backward`` + ``optim_step`` pairs, pipelined).
* A loss that needs provenance (``stable_reinforce``) trains without the cookbook's ``train_step``:
  it rebuilds each datum without its ``model_input_spans``/``loss_fn_input_spans``. The step trainer
  splits the step the same way and calls ``forward_backward`` + ``optim_step`` itself, on datums whose
  ``mask`` is stripped with :func:`dataclasses.replace` (provenance kept).
* With streaming (``StreamMinibatchConfig``), each minibatch of groups becomes datums and is
  submitted to ``forward_backward`` as soon as it is complete; an ``optim_step`` follows every
  ``groups_per_substep`` groups. The datums come from the same :func:`~agl_tinker.loop.datums.group_datums`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import tinker
from tinker_cookbook.rl.metrics import compute_kl_sample_train
from tinker_cookbook.rl.train import StreamMinibatchConfig, train_step
from tinker_cookbook.utils.misc_utils import split_list

from agl_tinker.core.trajectory import RolloutTrajectory
from agl_tinker.loop.config import PROVENANCE_LOSSES, TrainConfig
from agl_tinker.loop.datums import group_datums

__all__ = ["BusyClock", "Learner", "StepTrainer"]


class BusyClock:
    """Union of the intervals during which a training client had work queued (``busy_s``)."""

    def __init__(self) -> None:
        self.busy_s = 0.0
        self._since: float | None = None
        self._open = 0

    def begin(self) -> None:
        """Work was submitted (call it *before* the submitting call: it may run the work)."""
        if self._open == 0:
            self._since = time.perf_counter()
        self._open += 1

    def end(self) -> None:
        """One piece of work begun with :meth:`begin` is done."""
        self._open -= 1
        if self._open == 0 and self._since is not None:
            self.busy_s += time.perf_counter() - self._since
            self._since = None

    async def wait(self, future: Any) -> Any:
        """Await an SDK future whose work was :meth:`begin` -ed; :meth:`end` when it completes."""
        try:
            return await future.result_async()
        finally:
            self.end()


@dataclass
class Learner:
    """One policy's training side: its training client, optimiser settings and KL reference.

    Attributes:
        name: the policy's name in a several-policy run; ``None`` for the single policy.
        training_client: the (retrying) Tinker training client.
        learning_rate: Adam's learning rate.
        num_substeps: optimiser steps per training step.
        kl_reference: the KL penalty's reference sampling client, ``None`` without a penalty.
        records_stability_info: serve through sampling clients created with
            ``record_stability_info=True`` (the loss needs each call's ``sequence_id``).
        sampling_client_kind: ``"snapshot"`` (fixed weights per save) or ``"inflight"`` (each save
            updates the training model's shared target, adopted by the clients already serving).
        session_start: the weights version this process served first (the step it started or
            resumed at); calls recording an older one were sampled, and their sequence ids recorded,
            in an earlier session.
    """

    name: str | None
    training_client: Any
    learning_rate: float
    num_substeps: int
    kl_reference: Any = None
    records_stability_info: bool = False
    sampling_client_kind: str = "snapshot"
    session_start: int = 0

    @property
    def prefix(self) -> str:
        """The prefix of this policy's metrics: ``""`` alone, ``policy/<name>/`` among several."""
        return "" if self.name is None else f"policy/{self.name}/"

    async def sampling_client(self, clock: BusyClock | None = None) -> Any:
        """Save the current weights for sampling; their sampling client (timed on ``clock``).

        The client records stability info (each sample's ``sequence_id``) when
        ``records_stability_info`` is set; serve it with the same flag (:meth:`publish` does). With
        ``sampling_client_kind="inflight"`` the save also reaches every in-flight client made before."""
        kwargs: dict[str, Any] = {"record_stability_info": True} if self.records_stability_info else {}
        if self.sampling_client_kind != "snapshot":
            kwargs["kind"] = self.sampling_client_kind
        if clock is not None:
            clock.begin()
        try:
            return await self.training_client.save_weights_and_get_sampling_client(**kwargs)
        finally:
            if clock is not None:
                clock.end()

    async def publish(self, endpoint: Any, version: int, clock: BusyClock | None = None) -> None:
        """Serve the current weights as ``version`` from the endpoint's next request on.

        In-flight clients: the swap costs no drain (requests in flight keep their client, which
        adopts the new weights too); new calls get a fresh session and record ``version``, the
        oldest weights they may run on; calls already in flight keep the older version they
        recorded (a lower bound of what they ran on)."""
        endpoint.swap(
            await self.sampling_client(clock),
            version=version,
            policy=self.name,
            records_stability_info=self.records_stability_info,
        )


class StepTrainer:
    """Trains one step of one policy from its groups, as they arrive (:meth:`add`, :meth:`finish`).

    After :meth:`finish`: ``data`` (the datums trained), ``trained`` (the keys of the groups they
    came from), ``valid`` (the groups with enough valid rollouts, before constant-reward removal)
    and :meth:`metrics` (``groups/*``, ``optim/*``, KL, ``train/datums``, ``datums/unrecorded``: datums
    left out because the loss needs ids their calls did not record, ``datums/expired``: datums left out
    because a call of theirs was sampled before the session started; under the learner's prefix).
    """

    def __init__(
        self,
        learner: Learner,
        config: TrainConfig,
        clock: BusyClock,
        batch_size: int,
        stream: StreamMinibatchConfig | None,
    ) -> None:
        self.learner = learner
        self.cfg = config
        self.clock = clock
        self.stream = stream
        self.groups_per_substep = max(1, batch_size // learner.num_substeps)
        self.groups_per_minibatch = (
            max(1, self.groups_per_substep // stream.num_minibatches) if stream is not None else batch_size
        )
        self._minibatch: list[Sequence[RolloutTrajectory]] = []
        self._keys: list[int] = []
        self._substep_groups = 0
        self._substep_has_data = False
        self._optim_steps = 0
        self._pending_fb: list[Any] = []
        self.data: list[tinker.Datum] = []
        self.training_logprobs: list[Any] = []
        self.trained: set[int] = set()
        self.valid: list[Any] = []
        self._counts = {
            "groups/dropped": 0,
            "groups/trained": 0,
            "groups/constant_removed": 0,
            "datums/unrecorded": 0,
            "datums/expired": 0,
        }
        self._extra: dict[str, Any] = {}

    async def add(self, key: int, rollouts: Sequence[RolloutTrajectory]) -> None:
        """One finished group (its rollouts' trajectories, excluded ones included) under ``key``."""
        self._minibatch.append(rollouts)
        self._keys.append(key)
        self._substep_groups += 1
        if self.stream is not None and len(self._minibatch) >= self.groups_per_minibatch:
            await self._submit_minibatch()
            if self._substep_groups >= self.groups_per_substep:
                await self._optim_step()

    async def finish(self) -> None:
        """Train what is left of the step."""
        if self.stream is None and self.cfg.loss_fn in PROVENANCE_LOSSES:
            data = await self._datums()
            for batch in split_list(data, min(self.learner.num_substeps, len(data))) if data else []:
                await self._forward_backward(batch)
                await self._optim_step()
            return
        if self.stream is None:
            data = await self._datums()
            if data:
                optim: dict[str, Any] = {}
                self.clock.begin()
                try:
                    self.training_logprobs = await train_step(
                        data,
                        self.learner.training_client,
                        self.learner.learning_rate,
                        self.learner.num_substeps,
                        self.cfg.loss_fn,
                        self.cfg.loss_fn_config,
                        metrics=optim,
                    )
                finally:
                    self.clock.end()
                self._optim_steps += min(self.learner.num_substeps, len(data))  # train_step's split
                self._extra.update({f"optim/{k}": v for k, v in optim.items()})
            return
        if self._minibatch:
            await self._submit_minibatch()
        if self._substep_groups:
            await self._optim_step()

    def metrics(self) -> dict[str, Any]:
        """The step's training metrics under the learner's prefix (see the class docstring)."""
        out: dict[str, Any] = {**self._counts, **self._extra}
        out["train/datums"] = len(self.data)
        out["optim/lr"] = self.learner.learning_rate
        out["optim/steps"] = self._optim_steps
        if self.data and len(self.training_logprobs) == len(self.data):
            out.update(compute_kl_sample_train(self.data, self.training_logprobs))
        return {f"{self.learner.prefix}{k}": v for k, v in out.items()}

    async def _datums(self) -> list[tinker.Datum]:
        groups, keys = self._minibatch, self._keys
        self._minibatch, self._keys = [], []
        made = await group_datums(
            groups, self.cfg, kl_reference=self.learner.kl_reference, session_start=self.learner.session_start
        )
        self.valid.extend(made.valid)
        self._counts["groups/dropped"] += made.dropped
        self._counts["groups/constant_removed"] += made.constant_removed
        self._counts["datums/unrecorded"] += made.unrecorded
        self._counts["datums/expired"] += made.expired
        if not made.trained:
            return []
        self._counts["groups/trained"] += len(made.trained)
        self.trained.update(keys[i] for i in made.trained)
        self._extra.update(made.kl_metrics)
        self.data.extend(made.data)
        return made.data

    async def _submit_minibatch(self) -> None:
        data = await self._datums()
        if data:
            await self._forward_backward(data)

    async def _forward_backward(self, data: list[tinker.Datum]) -> None:
        # The ``_async`` spellings, as the cookbook's own train_step uses: they return the future.
        # The clock starts before the call: the service may run the work while it is submitted.
        self.clock.begin()
        try:
            future = await self.learner.training_client.forward_backward_async(
                [_remove_mask(d) for d in data],
                loss_fn=self.cfg.loss_fn,
                loss_fn_config=self.cfg.loss_fn_config,
            )
        except BaseException:
            self.clock.end()
            raise
        self._pending_fb.append(future)
        self._substep_has_data = True

    async def _optim_step(self) -> None:
        self._substep_groups = 0
        if not self._substep_has_data:
            return
        self._substep_has_data = False
        adam = tinker.AdamParams(learning_rate=self.learner.learning_rate, beta1=0.9, beta2=0.95, eps=1e-8)
        self.clock.begin()
        try:
            optim_future = await self.learner.training_client.optim_step_async(adam)
        except BaseException:
            self.clock.end()
            raise
        self._optim_steps += 1
        pending, self._pending_fb = self._pending_fb, []
        for future in pending:
            result = await self.clock.wait(future)
            self.training_logprobs.extend(out["logprobs"].to_torch() for out in result.loss_fn_outputs)
        optim = await self.clock.wait(optim_future)
        if optim.metrics:
            self._extra.update({f"optim/{k}": v for k, v in optim.metrics.items()})


def _remove_mask(datum: tinker.Datum) -> tinker.Datum:
    """The cookbook's datums carry a ``mask`` the service refuses; its train_step strips it too.

    Unlike the cookbook's, this keeps the datum's provenance (``model_input_spans``,
    ``loss_fn_input_spans``): ``stable_reinforce`` needs it."""
    inputs = {k: v for k, v in datum.loss_fn_inputs.items() if k != "mask"}
    return dataclasses.replace(datum, loss_fn_inputs=inputs)

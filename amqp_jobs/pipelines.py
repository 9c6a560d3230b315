"""Chains: the output of one job becomes the input of the next.

``await chain(extract.s({"url": src}), transform.s(), load.s()).enqueue()`` publishes the
first step; each step's envelope carries the steps still to come (with their job ids
fixed up front), and the worker that finishes a step publishes the next one, with the
output as its input, before it acknowledges its own message. A step that fails for good
stops the chain: the later steps are never published, and the dead step's record says
where it stopped. Every job of a chain carries the first job's id as its correlation id,
so ``app.jobs.query(pipeline=handle.id)`` lists the whole pipeline.
"""

from __future__ import annotations

import asyncio
import itertools
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pydantic

from amqp_jobs.conditions import validate_condition
from amqp_jobs.envelope import ChainStep, GroupMember
from amqp_jobs.errors import ConfigurationError, JobFailed
from amqp_jobs.ids import new_job_id
from amqp_jobs.jobs import JobDefinition

if TYPE_CHECKING:
    from amqp_jobs.client import JobHandle
    from amqp_jobs.jobs import Job
    from amqp_jobs.store.database import JobRecord


@dataclass(frozen=True, slots=True)
class Signature:
    """A job with its data and enqueue options, as a step of a chain (``job.s(...)``)."""

    job: Job
    data: Any = None
    options: dict[str, Any] = field(default_factory=dict)


def chain(*steps: Signature) -> Chain:
    """Steps run one after the other, each taking the previous output as its input.

    Raises :class:`ConfigurationError` now, not at run time, when a step's output cannot
    be the next step's input.
    """
    return Chain(steps)


class Producer(typing.Protocol):
    """What produces a step's input: a job definition, or a stand-in with an output type."""

    @property
    def name(self) -> str: ...
    @property
    def output_type(self) -> Any: ...


def _input_field(previous: Producer, following: JobDefinition) -> str | None:
    """How ``previous``'s output feeds ``following``: as its whole input (None), or as its
    one parameter (the parameter's name). Raises when it cannot."""
    where = f"chain step {previous.name!r} -> {following.name!r}"
    produced = previous.output_type
    if produced is None:
        raise ConfigurationError(f"{where}: {previous.name!r} declares no return type")
    wanted = following.input_model
    if isinstance(produced, type) and issubclass(produced, pydantic.BaseModel):
        if issubclass(produced, wanted):
            return None
        required = [n for n, f in wanted.model_fields.items() if f.is_required()]
        missing = [n for n in required if n not in produced.model_fields]
        if missing:
            raise ConfigurationError(
                f"{where}: {previous.name!r} returns {produced.__name__}, which lacks "
                f"{missing} that {following.name!r} needs"
            )
        mismatched = [
            n
            for n in required
            if produced.model_fields[n].annotation != wanted.model_fields[n].annotation
        ]
        if mismatched:
            raise ConfigurationError(
                f"{where}: field(s) {mismatched} of {produced.__name__} have other types "
                f"than {following.name!r} takes"
            )
        return None
    fields = wanted.model_fields
    if following.unpack_input and len(fields) == 1:
        name, only = next(iter(fields.items()))
        if only.annotation == produced:
            return name
        raise ConfigurationError(
            f"{where}: {previous.name!r} returns {produced!r} but {following.name!r}'s "
            f"parameter {name!r} is {only.annotation!r}"
        )
    raise ConfigurationError(
        f"{where}: {previous.name!r} returns {produced!r}, not a model; {following.name!r} "
        "must then take exactly one parameter"
    )


def _wire_condition(step: Signature) -> dict[str, Any] | str | None:
    """A step's ``when=`` in the form that travels in the envelope: a field-test mapping,
    or the name of a condition registered with ``@app.condition``."""
    when = step.options.get("when")
    where = f"chain step {step.job.name!r}"
    if when is None:
        return None
    if isinstance(when, Mapping):
        validate_condition(when, where=where)
        return dict(when)
    if isinstance(when, str):
        if when not in step.job.app.conditions:
            raise ConfigurationError(f"{where}: no condition named {when!r} is registered")
        return when
    if callable(when):
        for name, registered in step.job.app.conditions.items():
            if registered is when:
                return name
        raise ConfigurationError(
            f"{where}: a when= function must be registered with @app.condition (conditions "
            "travel in the message by name, so the worker must know them); or give a "
            "field-test mapping such as {'rows': {'gt': 0}}"
        )
    raise ConfigurationError(f"{where}: when= is a mapping, a condition name or function")


class Chain:
    """A validated sequence of steps; :meth:`enqueue` starts it.

    A later step may carry ``when=`` (``load.s(when={"rows": {"gt": 0}})``): when the
    condition does not hold for the previous output, that step and those after it are
    recorded as skipped and never run.
    """

    def __init__(self, steps: tuple[Signature, ...]) -> None:
        if len(steps) < 2:
            raise ConfigurationError("a chain needs at least two steps")
        for later in steps[1:]:
            if later.data is not None:
                raise ConfigurationError(
                    f"chain step {later.job.name!r} gets the previous step's output; "
                    "give data to the first step only"
                )
        if "when" in steps[0].options:
            raise ConfigurationError(
                f"chain step {steps[0].job.name!r} is the first: it has no previous output "
                "for a when= condition"
            )
        self.steps = steps
        self._conditions = [_wire_condition(step) for step in steps[1:]]
        self._fields = [
            _input_field(a.job.definition, b.job.definition) for a, b in itertools.pairwise(steps)
        ]

    async def enqueue(self, **options: Any) -> ChainHandle:
        """Publish the first step (the others follow as each finishes)."""
        ids = [new_job_id() for _ in self.steps]
        rest = tuple(
            ChainStep(
                id=step_id,
                job=step.job.name,
                queue=step.options.get("queue"),
                input_field=input_field,
                when=when,
            )
            for step_id, step, input_field, when in zip(
                ids[1:], self.steps[1:], self._fields, self._conditions, strict=True
            )
        )
        first = self.steps[0]
        handle = await first.job.enqueue(
            first.data, **{**first.options, **options}, job_id=ids[0], chain=rest
        )
        return ChainHandle(handle, ids, [s.job.name for s in self.steps])


@dataclass(frozen=True, slots=True)
class ChainHandle:
    """A started chain: ``id`` is the pipeline's id (its first job's)."""

    first: JobHandle
    step_ids: list[str]
    step_jobs: list[str]

    @property
    def id(self) -> str:
        """The pipeline id: query it with ``app.jobs.query(pipeline=...)``."""
        return self.first.id

    async def steps(self) -> list[JobRecord | None]:
        """The record of each step (None for a step not published yet)."""
        results = self.first._results()
        return [await results.get(step_id) for step_id in self.step_ids]

    async def result(self, timeout: float = 30.0) -> Any:
        """The last step's output (None if a ``when=`` skipped the rest); raises
        :class:`JobFailed` for the step where it stopped."""
        return await _final_result(
            self.first, self.step_ids[:-1], self.step_ids[-1], timeout, "chain stopped at"
        )


async def _final_result(
    handle: JobHandle, watched: list[str], final_id: str, timeout: float, failure: str
) -> Any:
    """Wait for job ``final_id``'s result; fail as soon as one of ``watched`` failed for good."""
    results = handle._results()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        for job_id in watched:
            record = await results.get(job_id)
            if record is not None and record.state == "skipped":
                return None  # a condition ended the pipeline early: there is no output
            if record is not None and record.finished and record.state != "succeeded":
                raise JobFailed(
                    record.id,
                    record.state,
                    record.error_type,
                    f"{failure} {record.job!r}: {record.error_message}",
                )
        final = await results.get(final_id)
        if final is not None and final.finished:
            return await results.result(final_id, timeout=0.1)
        if loop.time() > deadline:
            raise TimeoutError(f"pipeline of job {handle.id} did not finish within {timeout}s")
        await asyncio.sleep(0.05)


def group(*members: Signature) -> Group:
    """Jobs that run in parallel (fan-out); ``.then(callback.s())`` receives every output."""
    return Group(members)


class Group:
    """Members to run at once; call :meth:`then` to name the job that gets their outputs."""

    def __init__(self, members: tuple[Signature, ...]) -> None:
        if not members:
            raise ConfigurationError("a group needs at least one member")
        self.members = members

    def then(self, callback: Signature) -> GroupWithCallback:
        """Fan-in: ``callback`` runs once every member succeeded, with their outputs as a
        list (in member order) for its one parameter."""
        definition = callback.job.definition
        fields = definition.input_model.model_fields
        if callback.data is not None or not definition.unpack_input or len(fields) != 1:
            raise ConfigurationError(
                f"group callback {callback.job.name!r} must take exactly one parameter (the "
                "list of the members' outputs) and be given no data"
            )
        (name, only) = next(iter(fields.items()))
        if typing.get_origin(only.annotation) is not list:
            raise ConfigurationError(
                f"group callback {callback.job.name!r}: parameter {name!r} must be a list "
                f"(of the members' outputs), not {only.annotation!r}"
            )
        return GroupWithCallback(self.members, callback, name)


class GroupWithCallback:
    """A group and its callback; :meth:`enqueue` publishes the members."""

    def __init__(self, members: tuple[Signature, ...], callback: Signature, field: str) -> None:
        self.members = members
        self.callback = callback
        self._field = field

    async def enqueue(self) -> GroupHandle:
        """Record the group in the store, then publish every member."""
        store = self.members[0].job.app.jobs.store  # a clear error when the app has none
        group_id, callback_id = new_job_id(), new_job_id()
        step = ChainStep(
            id=callback_id,
            job=self.callback.job.name,
            queue=self.callback.options.get("queue"),
            input_field=self._field,
        )
        await store.create_group(group_id, len(self.members))
        handles: list[JobHandle] = []
        for position, member in enumerate(self.members):
            handles.append(
                await member.job.enqueue(
                    member.data,
                    **member.options,
                    correlation_id=group_id,
                    group=GroupMember(id=group_id, position=position, callback=step),
                )
            )
        return GroupHandle(group_id, handles, callback_id)


@dataclass(frozen=True, slots=True)
class GroupHandle:
    """A started group: its members' handles and the callback's job id."""

    id: str
    members: list[JobHandle]
    callback_id: str

    async def result(self, timeout: float = 30.0) -> Any:
        """The callback's output; raises :class:`JobFailed` if a member failed for good."""
        return await _final_result(
            self.members[0],
            [m.id for m in self.members],
            self.callback_id,
            timeout,
            "group member failed:",
        )

"""Reading jobs back: records, attempts, queries, and waiting for a job's result."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from amqp_jobs.errors import ConfigurationError, JobFailed
from amqp_jobs.jobs import JobDefinition
from amqp_jobs.store.database import AttemptRecord, JobRecord, JobStore, Page, Progress

if TYPE_CHECKING:
    from amqp_jobs.security.guard import Security


class JobResults:
    """``app.jobs``: what the store knows about jobs, for code and for users' views."""

    def __init__(self, store: JobStore | None, registry: Mapping[str, JobDefinition]) -> None:
        self._store = store
        self._registry = registry
        self.security: Security | None = None  # opens sealed outputs and progress

    @property
    def store(self) -> JobStore:
        """The store, or a clear error when the app has none."""
        if self._store is None:
            raise ConfigurationError(
                "this app has no job store: create it with JobApp(..., store=URL) to record "
                "jobs and read their results"
            )
        return self._store

    async def get(self, job_id: str) -> JobRecord | None:
        """The record of one job, or None if the store has not seen it."""
        return await self.store.get(job_id)

    async def attempts(self, job_id: str) -> list[AttemptRecord]:
        """Every attempt of one job."""
        return await self.store.attempts_of(job_id)

    async def query(self, **filters: Any) -> Page:
        """Jobs by user, tenant, state, job, since/until, tags; see :meth:`JobStore.query`."""
        return await self.store.query(**filters)

    async def progress(self, job_id: str) -> Progress | None:
        """The job's last progress report and state (None if the store has not seen it)."""
        return await self._opened_progress(job_id, await self.store.progress(job_id))

    async def _opened_progress(self, job_id: str, progress: Progress | None) -> Progress | None:
        if progress is None or self.security is None or not progress.data:
            return progress
        record = await self.store.get(job_id)
        if record is None:
            return progress
        return await self.security.open_progress(record, progress)

    async def watch(self, job_id: str, *, interval: float = 0.2) -> AsyncIterator[Progress]:
        """Yield the job's progress each time it changes, until the job has finished."""
        last: Progress | None = None
        while True:
            current = await self._opened_progress(job_id, await self.store.progress(job_id))
            if current is not None and current != last:
                yield current
                last = current
                if current.finished:
                    return
            await asyncio.sleep(interval)

    async def cancel(self, job_id: str) -> str | None:
        """Cancel a job: one not started never starts; a running one is stopped by its
        worker (its task is cancelled; ``ctx.cancelled`` turns true). Returns the state."""
        return await self.store.request_cancel(job_id)

    async def result(self, job_id: str, *, timeout: float = 30.0) -> Any:
        """Wait for a job to finish and return its output, typed by its return annotation.

        Raises :class:`JobFailed` (with the recorded error type and message) when the job
        ended dead or cancelled (a skipped chain step returns None), and ``TimeoutError``
        when it has not finished in time.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pause = 0.01
        while True:
            record = await self.store.get(job_id)
            if record is not None and record.finished:
                if self.security is not None and record.state == "succeeded":
                    opened = await self.security.open_record(record)
                    record = dataclasses.replace(record, result=opened)
                return self._output(record)
            if loop.time() + pause > deadline:
                state = record.state if record is not None else "not recorded"
                raise TimeoutError(f"job {job_id} did not finish within {timeout}s ({state})")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.25)

    def _output(self, record: JobRecord) -> Any:
        if record.state == "skipped":
            return None  # a chain step whose condition did not hold has no output
        if record.state != "succeeded":
            raise JobFailed(record.id, record.state, record.error_type, record.error_message)
        definition = self._registry.get(record.job)
        if definition is None or definition.output_adapter is None:
            return record.result
        return definition.output_adapter.validate_python(record.result)

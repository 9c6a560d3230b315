"""Throttled progress reports: a job may report in a tight loop without flooding the store."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from amqp_jobs.store.database import JobStore, ProgressChange, StateChange

log = logging.getLogger(__name__)


class ProgressReporter:
    """Writes at most one progress report per job per ``interval`` seconds.

    The first report goes out at once; reports within the interval replace each other
    and the last one is written when the interval ends (or when the job ends), so the
    final state of progress is never lost.
    """

    def __init__(self, store: JobStore, *, interval: float = 0.5) -> None:
        self.store = store
        self.interval = interval
        self._last_write: dict[str, float] = {}
        self._pending: dict[str, ProgressChange] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._writing: set[asyncio.Task[None]] = set()

    async def report(
        self,
        job_id: str,
        percent: float | None,
        message: str | None,
        data: Mapping[str, Any],
        identity: StateChange | None = None,
    ) -> None:
        """Record (or hold back, within the interval) one progress report of ``job_id``;
        ``identity`` is the job's "running" change, recorded with it if need be."""
        change = ProgressChange(job_id, percent, message, dict(data), identity=identity)
        loop = asyncio.get_running_loop()
        now = loop.time()
        last = self._last_write.get(job_id)
        if last is None or now - last >= self.interval:
            self._last_write[job_id] = now
            self._pending.pop(job_id, None)
            await self.store.report_progress(change)
            return
        self._pending[job_id] = change
        if job_id not in self._timers:
            self._timers[job_id] = loop.call_later(
                self.interval - (now - last), self._write_held_back, job_id
            )

    def _write_held_back(self, job_id: str) -> None:
        self._timers.pop(job_id, None)
        change = self._pending.pop(job_id, None)
        if change is None:
            return
        self._last_write[job_id] = asyncio.get_running_loop().time()
        task = asyncio.get_running_loop().create_task(self._write(change))
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)

    async def _write(self, change: ProgressChange) -> None:
        try:
            await self.store.report_progress(change)
        except Exception as exc:  # progress is best effort; the outcome is what counts
            log.warning("could not record progress of job %s: %s", change.job_id, exc)

    async def finish(self, job_id: str) -> None:
        """The job ended: write its held-back report now and forget it."""
        timer = self._timers.pop(job_id, None)
        if timer is not None:
            timer.cancel()
        self._last_write.pop(job_id, None)
        change = self._pending.pop(job_id, None)
        if change is not None:
            await self._write(change)

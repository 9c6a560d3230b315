"""Retry policies: how many attempts, how long between them, which errors retry."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from amqp_jobs.errors import Abort, ConfigurationError, Retry

BackoffFunction = Callable[[int], float]
"""Custom backoff: the number of the attempt that failed (1-based) -> seconds to wait."""

Backoff = Literal["fixed", "exponential"] | BackoffFunction


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When and how a failed job is tried again.

    ``max_attempts`` counts every run, the first included. ``backoff`` is
    ``"fixed"`` (always ``base_delay``), ``"exponential"`` (``base_delay * 2**(n-1)``)
    or a function of the failed attempt number. ``jitter`` is the fraction of the
    delay drawn at random, so retries of many jobs do not arrive together.
    Only exceptions that are instances of ``retry_on`` are retried; :class:`Abort`
    never is, and :class:`Retry` always is while attempts remain.
    """

    max_attempts: int = 3
    backoff: Backoff = "exponential"
    base_delay: float = 1.0
    max_delay: float = 3600.0
    jitter: float = 0.1
    retry_on: tuple[type[BaseException], ...] = field(default=(Exception,))

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be at least 1, not {self.max_attempts}")
        if not callable(self.backoff) and self.backoff not in ("fixed", "exponential"):
            raise ConfigurationError(
                f"backoff must be 'fixed', 'exponential' or a function, not {self.backoff!r}"
            )
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError(f"jitter must be between 0 and 1, not {self.jitter}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ConfigurationError("base_delay and max_delay must not be negative")

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """Whether a job that raised ``error`` on attempt number ``attempt`` runs again."""
        if attempt >= self.max_attempts or isinstance(error, Abort):
            return False
        return isinstance(error, (Retry, *self.retry_on))

    def delay_after(self, attempt: int, error: BaseException | None = None) -> float:
        """Seconds to wait before the attempt that follows failed attempt ``attempt``."""
        if isinstance(error, Retry) and error.delay is not None:
            return max(0.0, error.delay)
        if callable(self.backoff):
            delay = float(self.backoff(attempt))
        elif self.backoff == "fixed":
            delay = self.base_delay
        else:
            delay = self.base_delay * 2 ** (attempt - 1)
        delay = min(delay, self.max_delay)
        if self.jitter:
            delay -= delay * self.jitter * random.random()
        return max(0.0, delay)

"""Retries with exponential backoff, and the per-item outcome every backend returns.

A backend never raises for one bad sample: it returns an ``Outcome`` with the error text, so the
pipeline can record the failure against that sample and go on with the others.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    value: Any = None
    error: str | None = None
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class RetryPolicy:
    attempts: int = 3
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0

    def delay(self, failed_attempts: int) -> float:
        return min(self.backoff_max_s, self.backoff_s * 2 ** (failed_attempts - 1))


def call_with_retries(fn: Callable[[], Any], policy: RetryPolicy, what: str = "call",
                      sleep: Callable[[float], None] = time.sleep) -> Outcome:
    """Run ``fn`` until it returns, at most ``policy.attempts`` times; never raises ``Exception``."""
    attempts = max(1, policy.attempts)
    error = None
    for k in range(1, attempts + 1):
        try:
            return Outcome(value=fn(), attempts=k)
        except Exception as exc:  # noqa: BLE001 - every failure is recorded, not raised
            error = f"{type(exc).__name__}: {exc}"
            if k < attempts:
                wait = policy.delay(k)
                logger.warning("%s failed (attempt %d/%d): %s; retrying in %.1fs", what, k, attempts,
                               error[:200], wait)
                sleep(wait)
    logger.warning("%s failed after %d attempts: %s", what, attempts, (error or "")[:300])
    return Outcome(error=error, attempts=attempts)


def map_concurrently(fn: Callable[[Any], Outcome], items: list, concurrency: int) -> list[Outcome]:
    """``[fn(x) for x in items]`` on a thread pool (network-bound backends), order preserved."""
    if concurrency <= 1 or len(items) <= 1:
        return [fn(x) for x in items]

    with ThreadPoolExecutor(max_workers=min(concurrency, len(items))) as pool:
        return list(pool.map(fn, items))

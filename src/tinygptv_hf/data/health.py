"""Counting, logging and budgeting of bad samples.

Real corpora of millions of web images always hold a few corrupt files; the original let webdataset warn and
continue for tar shards but crashed on a bad file in every other dataset. Here every reader skips a bad sample,
counts it per source and logs where it was, and the run stops with a clear error once the budget is spent.
"""

import logging
from collections import Counter, deque
from dataclasses import dataclass

logger = logging.getLogger(__name__)

DEFAULT_MAX_BAD_SAMPLES = 100


@dataclass(frozen=True)
class BadSample:
    """Where a skipped sample came from and why it was skipped."""

    source: str
    location: str
    key: str
    reason: str

    def __str__(self) -> str:
        return f"{self.source}: {self.location} [{self.key}]: {self.reason}"


class DataBudgetExceeded(RuntimeError):
    """More bad samples than ``max_bad_samples``: the data is broken, not merely noisy."""


class BadRecord(Exception):
    """Raised by a shard reader to name the record it could not read (a truncated tar member, say)."""

    def __init__(self, key: str, reason: str):
        super().__init__(reason)
        self.key = key


class DataHealth:
    """Counters of good and skipped samples per source, shared by the readers of one run.

    The counters live in the process that iterates the streams (the trainer's main process with the default
    ``dataloader_num_workers=0``; each DataLoader worker would keep its own copy and its own budget).
    """

    def __init__(self, max_bad_samples: int = DEFAULT_MAX_BAD_SAMPLES, keep_last: int = 20):
        self.max_bad_samples = max_bad_samples
        self.good: Counter[str] = Counter()
        self.bad: Counter[str] = Counter()
        self.recent: deque[BadSample] = deque(maxlen=keep_last)

    @property
    def total_bad(self) -> int:
        return sum(self.bad.values())

    @property
    def total_good(self) -> int:
        return sum(self.good.values())

    def record_good(self, source: str) -> None:
        self.good[source] += 1

    def record_bad(self, source: str, location: str, key: str, error: BaseException | str) -> None:
        """Count and log one skipped sample; raise `DataBudgetExceeded` once the budget is spent."""
        reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        bad = BadSample(source, str(location), str(key), reason)
        self.bad[source] += 1
        self.recent.append(bad)
        logger.warning("Skipped bad sample %d/%d: %s", self.total_bad, self.max_bad_samples, bad)
        if self.total_bad > self.max_bad_samples:
            raise DataBudgetExceeded(
                f"{self.total_bad} bad samples exceed the error budget max_bad_samples={self.max_bad_samples}; "
                f"last bad sample: {bad}"
            )

    def summary(self) -> dict:
        """Plain counters for logs and reports."""
        return {
            "good": dict(self.good),
            "bad": dict(self.bad),
            "total_good": self.total_good,
            "total_bad": self.total_bad,
            "max_bad_samples": self.max_bad_samples,
            "recent_bad": [str(b) for b in self.recent],
        }

"""Counting, logging and budgeting of skipped records, for a whole run.

Real corpora of millions of web images always hold a few corrupt files; the original let webdataset warn and
continue for tar shards but crashed on a bad file in every other dataset. Here a reader never raises for a record:
it yields the record as a *skip* row (see `tinygptv_hf.data.samples`), and one `DataHealth` counts every row of
the mixed stream, per source, at the one place that reads them in order: `TrainingStream`, after the interleaving.
That makes the counts and the budget the run's, whatever the number of sources (`interleave_datasets` copies each
source, so counters kept inside the readers would each count alone), and lets a checkpoint store them with the
stream's position, so a resumed run keeps counting where it stopped.

Two kinds of skip: ``bad`` (an unreadable or malformed record; counted against ``max_bad_samples``) and
``dropped`` (a record the original drops by design, such as a VQA question whose image is absent; counted and
reported, never budgeted). Samples and dropped records are counted per read (a small dataset that the mix reads
three times counts three times); bad records are counted once each, however often they are read, so that the
budget measures how much of the data is broken.
"""

import logging
from collections import Counter, deque
from dataclasses import dataclass

logger = logging.getLogger(__name__)

DEFAULT_MAX_BAD_SAMPLES = 100
BAD, DROPPED = "bad", "dropped"
# A source whose first records are all skipped is probably pointed at the wrong folder: say so early and loudly.
EMPTY_SOURCE_RECORDS = 100


@dataclass(frozen=True)
class BadSample:
    """Where a skipped record came from and why it was skipped."""

    source: str
    location: str
    key: str
    reason: str

    def __str__(self) -> str:
        return f"{self.source}: {self.location} [{self.key}]: {self.reason}"


class DataBudgetExceeded(ValueError):
    """More bad samples than ``max_bad_samples``: the data is broken, not merely noisy (a user error: the CLI
    reports it in one line and exits with status 2)."""


class BadRecord(Exception):
    """Raised by a shard reader to name the record it could not read (a truncated tar member, say)."""

    def __init__(self, key: str, reason: str):
        super().__init__(reason)
        self.key = key


class DroppedRecord(Exception):
    """Raised by a reader's record-to-sample function for a record the original drops by design."""


def describe(error: BaseException) -> str:
    """One line naming an error, for logs and skip rows."""
    return f"{type(error).__name__}: {error}"


class DataHealth:
    """Per-source counters of samples, bad and dropped records, and the run's budget of bad ones.

    ``admit(row)`` is the only way in: it counts the row and says whether it is a sample to train on. The counts
    live in the process that reads the stream (the trainer reads in its main process; under torchrun each rank
    counts, and is budgeted on, its own part of the data, and the report sums the ranks).
    """

    def __init__(self, max_bad_samples: int = DEFAULT_MAX_BAD_SAMPLES, keep_last: int = 20):
        if max_bad_samples < 0:
            raise ValueError(f"max_bad_samples must be 0 or more, got {max_bad_samples}")
        self.max_bad_samples = max_bad_samples
        self.samples: Counter[str] = Counter()
        self.bad: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.recent: deque[BadSample] = deque(maxlen=keep_last)
        self._seen_bad: set[tuple[str, str, str]] = set()

    @property
    def total_samples(self) -> int:
        return sum(self.samples.values())

    @property
    def total_bad(self) -> int:
        return sum(self.bad.values())

    @property
    def total_dropped(self) -> int:
        return sum(self.dropped.values())

    def admit(self, row: dict) -> bool:
        """Count one row of a reader's stream; True for a sample, False for a skipped record.

        Raises `DataBudgetExceeded` when this row is the bad record that overdraws the budget.
        """
        source, skip = row["source"], row.get("skip")
        if skip is None:
            self.samples[source] += 1
            return True
        record = BadSample(source, skip["location"], skip["key"], " ".join(skip["reason"].split()))
        if skip["kind"] == DROPPED:
            self.dropped[source] += 1
            logger.debug("Dropped %s", record)
        elif (source, record.location, record.key) in self._seen_bad:
            logger.debug("Skipped known bad sample %s", record)
            return False
        else:
            self._seen_bad.add((source, record.location, record.key))
            self.bad[source] += 1
            self.recent.append(record)
            logger.warning("Skipped bad sample %d/%d: %s", self.total_bad, self.max_bad_samples, record)
        if not self.samples[source] and self.bad[source] + self.dropped[source] == EMPTY_SOURCE_RECORDS:
            logger.warning(
                "%s gave no sample from its first %d records (%d bad, %d dropped; the last: %s): check its paths",
                source,
                EMPTY_SOURCE_RECORDS,
                self.bad[source],
                self.dropped[source],
                record,
            )
        if self.total_bad > self.max_bad_samples:
            raise DataBudgetExceeded(
                f"{self.total_bad} bad samples exceed the error budget max_bad_samples={self.max_bad_samples}; "
                f"last bad sample: {record}"
            )
        return False

    def sources_without_samples(self) -> list[str]:
        """Sources that were read but gave no sample at all."""
        return sorted(s for s in {*self.bad, *self.dropped} if not self.samples[s])

    def state_dict(self) -> dict:
        """Everything counted so far, as plain JSON data (for checkpoints)."""
        return {
            "samples": dict(self.samples),
            "bad": dict(self.bad),
            "dropped": dict(self.dropped),
            "recent": [vars(bad) for bad in self.recent],
            "seen_bad": sorted(self._seen_bad),
        }

    def load_state_dict(self, state: dict) -> None:
        self.samples, self.bad, self.dropped = (Counter(state[key]) for key in ("samples", "bad", "dropped"))
        self.recent.clear()
        self.recent.extend(BadSample(**bad) for bad in state["recent"])
        self._seen_bad = set(map(tuple, state["seen_bad"]))

    def merge(self, state: dict) -> None:
        """Add another reader's counts (another rank's ``state_dict()``)."""
        for key in ("samples", "bad", "dropped"):
            getattr(self, key).update(state[key])
        self.recent.extend(BadSample(**bad) for bad in state["recent"])
        self._seen_bad.update(map(tuple, state["seen_bad"]))

    def summary(self) -> dict:
        """Plain counters for logs and reports (``data_health.json``)."""
        return {
            "samples": dict(self.samples),
            "bad": dict(self.bad),
            "dropped": dict(self.dropped),
            "total_samples": self.total_samples,
            "total_bad": self.total_bad,
            "total_dropped": self.total_dropped,
            "max_bad_samples": self.max_bad_samples,
            "sources_without_samples": self.sources_without_samples(),
            "recent_bad": [str(b) for b in self.recent],
        }

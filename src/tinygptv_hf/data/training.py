"""The stream a trainer reads: endless passes over the mixed readers, skips counted once, an exact shuffle buffer,
and a position that a checkpoint stores and a resumed run restores without re-reading what it skips.

`transformers.Trainer` over a length-less stream treats ``max_steps`` as one epoch and resumes by replaying (and
discarding) every batch it already trained on, restarting a finished pass at its beginning. This stream never
ends, so the trainer sees one epoch, and it carries its own position:

* the pass number (each pass is `datasets`' ``set_epoch(pass)``: a new shard order and a new mixing draw);
* the `datasets` state of the mixed stream (``IterableDataset.state_dict()``: per source the shards being read and
  the offset in each, plus the interleaving RNG). `datasets` resumes inside a shard by reading that shard up to
  the offset again, so a resume re-reads at most the shards it was in the middle of, never the run so far;
* the shuffle buffer's content and RNG state (`datasets`' own ``shuffle`` buffer is not part of its state, so the
  buffer is kept here, undecoded, and saved with the checkpoint);
* the `DataHealth` counts, which are made at this point, after mixing, in reading order.

Everything happens in the process that iterates (a DataLoader with ``num_workers=0``; `datasets` reads shards in
threads of it, and its state counts only what it handed out), so ``state_dict()`` taken between two batches is
exactly the position after the last sample handed out.
"""

import json
import os

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .health import DataHealth
from .mixing import shard_for_rank
from .samples import SAMPLE_FEATURES

_DECODE_IMAGE = SAMPLE_FEATURES["image"]


class TrainingStream(torch.utils.data.IterableDataset):
    """An endless stream of decoded samples from ``dataset`` (a reader's or `mix_datasets`' stream of rows).

    ``shuffle_buffer`` > 1 draws each sample at random from a buffer of that many, refilled as it goes (the
    original's webdataset ``shuffle(1000)``). ``health`` counts and budgets every row (a new `DataHealth` when
    not given).
    """

    def __init__(self, dataset, *, health: DataHealth | None = None, shuffle_buffer: int = 0, seed: int = 0):
        if isinstance(dataset, datasets.Dataset):
            dataset = dataset.to_iterable_dataset()
        if not isinstance(dataset, datasets.IterableDataset):
            raise TypeError(
                f"TrainingStream reads a datasets.IterableDataset of rows (a reader's stream), not "
                f"{type(dataset).__name__}"
            )
        self.source = dataset
        # `datasets`' shuffle with a buffer of one keeps no sample out of its state; it reads the shards in a
        # seeded order, up to 10 at a time in threads (the decoding runs in parallel), and nothing else.
        dataset = dataset.shuffle(seed=seed, buffer_size=1)
        # Images stay bytes until they leave the buffer (a dataset of unknown features yields what it yields).
        self.dataset = dataset.decode(False) if dataset.features else dataset
        self.health = health if health is not None else DataHealth()
        self.shuffle_buffer = int(shuffle_buffer)
        self.seed = seed
        self._pass = 0
        self._position = None  # the dataset's state after the last row read in this pass; None at its start
        self._buffer: list[dict] = []
        self._rng = np.random.default_rng(seed)

    def for_rank(self, rank: int, world_size: int) -> "TrainingStream":
        """The part of this stream that ``rank`` reads (see `shard_for_rank`), counting into the same health."""
        if world_size == 1:
            return self
        return TrainingStream(
            shard_for_rank(self.source, rank, world_size),
            health=self.health,
            shuffle_buffer=self.shuffle_buffer,
            seed=self.seed,
        )

    def __iter__(self):
        while True:
            self.dataset.set_epoch(self._pass)
            if self._position is not None:
                self.dataset.load_state_dict(self._position)
            for row in self.dataset:
                self._position = self.dataset.state_dict()
                if self.health.admit(row):
                    sample = self._shuffled(row)
                    if sample is not None:
                        yield _decoded(sample)
            if not self.health.total_samples:
                raise ValueError(
                    f"a whole pass over the training data gave no sample ({self.health.total_bad} bad and "
                    f"{self.health.total_dropped} dropped records); check the recipe's data paths"
                )
            self._pass += 1
            self._position = None

    def _shuffled(self, row: dict) -> dict | None:
        if self.shuffle_buffer <= 1:
            return row
        if len(self._buffer) < self.shuffle_buffer:
            self._buffer.append(row)
            return None
        index = int(self._rng.integers(len(self._buffer)))
        row, self._buffer[index] = self._buffer[index], row
        return row

    def state_dict(self) -> dict:
        """The position after the last sample handed out; the buffer's rows hold their image bytes."""
        return {
            "pass": self._pass,
            "position": self._position,
            "buffer": list(self._buffer),
            "buffer_rng": self._rng.bit_generator.state,
            "health": self.health.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self._pass, self._position = state["pass"], state["position"]
        self._buffer = list(state["buffer"])
        self._rng.bit_generator.state = state["buffer_rng"]
        self.health.load_state_dict(state["health"])

    def save(self, folder, name: str) -> None:
        """Write ``state_dict()`` as ``{name}.json`` plus the buffer as ``{name}.parquet``."""
        state = self.state_dict()
        buffer = state.pop("buffer")
        table = pa.Table.from_pylist(buffer, schema=self._arrow_schema(buffer))
        pq.write_table(table, _path(folder, name, "parquet"))
        with open(_path(folder, name, "json"), "w", encoding="utf-8") as f:
            json.dump(state, f)

    def load(self, folder, name: str) -> None:
        """Restore what `save` wrote."""
        with open(_path(folder, name, "json"), encoding="utf-8") as f:
            state = json.load(f)
        state["buffer"] = pq.read_table(_path(folder, name, "parquet")).to_pylist()
        self.load_state_dict(state)

    def _arrow_schema(self, rows: list[dict]):
        features = self.dataset.features
        return features.arrow_schema if features is not None else pa.Table.from_pylist(rows).schema


def _path(folder, name: str, extension: str) -> str:
    return os.path.join(os.fspath(folder), f"{name}.{extension}")


def _decoded(row: dict) -> dict:
    image = row.get("image")
    if isinstance(image, dict):
        row = {**row, "image": _DECODE_IMAGE.decode_example(image)}
    return row

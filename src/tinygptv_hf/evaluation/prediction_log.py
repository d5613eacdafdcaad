"""The predictions file of `tinygptv eval`: one JSON line per finished item, appended and flushed to disk as each
batch finishes, so that a crash, a kill or Ctrl-C loses at most the batch in flight and `--resume` continues.

The first line records the settings that decide an item's output (model, dtype, decoding length, batch size);
resuming under other settings is refused, and so is an item whose prompt or references no longer match the
benchmark files. A last line cut short (the process killed while writing it) is dropped and its item redone; a
damaged line anywhere else is an error that names it.
"""

import json
import os
from pathlib import Path

from .benchmarks import Benchmark, result_key
from .samples import Sample

FORMAT = 1


def _plain(value):
    """`value` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


class PredictionLog:
    """The records of a predictions file by (benchmark key, question id); `append` adds a finished batch."""

    def __init__(self, path: Path, settings: dict, records: dict, descriptor: int):
        self.path = path
        self.settings = settings
        self.records = records
        self._descriptor = descriptor

    @classmethod
    def open(cls, path, settings: dict, resume: bool) -> "PredictionLog":
        """Start `path`, or with `resume` continue it. Without `resume` an existing file is refused: it holds a
        run's predictions."""
        path = Path(path)
        if path.exists() and not resume:
            raise FileExistsError(
                f"{path} holds the predictions of an earlier run: add --resume to continue it, or remove it."
            )
        header, records, length = cls._read(path) if path.exists() else (None, [], 0)
        if header is not None and header["settings"] != settings:
            changed = ", ".join(
                f"{name}={header['settings'].get(name)!r} (now {settings.get(name)!r})"
                for name in sorted(set(header["settings"]) | set(settings))
                if header["settings"].get(name) != settings.get(name)
            )
            raise ValueError(
                f"{path} was made with other settings: {changed}. Resume with the same settings, or start "
                "another predictions file."
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        os.ftruncate(descriptor, length)
        os.lseek(descriptor, length, os.SEEK_SET)
        log = cls(path, settings, {(r["benchmark"], r["question_id"]): r for r in records}, descriptor)
        if header is None:
            log._write([{"tinygptv_eval_predictions": FORMAT, "settings": settings}])
        return log

    @staticmethod
    def _read(path: Path) -> tuple[dict | None, list[dict], int]:
        """Header, records and the length in bytes of the intact part (all but a torn last line)."""
        data = path.read_bytes()
        lines = data.split(b"\n")
        lines.pop()  # the bytes after the last newline: empty, or a line cut short
        entries, length = [], 0
        for number, line in enumerate(lines, start=1):
            try:
                entries.append(json.loads(line))
            except ValueError as error:
                if number == len(lines):  # written in full but damaged: treat it as torn too
                    break
                raise ValueError(
                    f"{path}, line {number}, is damaged ({error}); it is not the last line."
                ) from None
            length += len(line) + 1
        if not entries:
            return None, [], 0
        header = entries[0]
        if not isinstance(header, dict) or header.get("tinygptv_eval_predictions") != FORMAT:
            raise ValueError(f"{path} is not a predictions file of this version of `tinygptv eval`.")
        return header, entries[1:], length

    def _write(self, entries: list[dict]) -> None:
        payload = "".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in entries).encode("utf-8")
        view = memoryview(payload)
        while view:
            view = view[os.write(self._descriptor, view) :]
        os.fsync(self._descriptor)

    def append(self, records: list[dict]) -> None:
        """Save a finished batch (one write, then fsync)."""
        self._write(records)
        self.records.update({(r["benchmark"], r["question_id"]): r for r in records})

    def finished(self, benchmark: Benchmark, split: str, samples: list[Sample]) -> set[str]:
        """The question ids of `samples` already predicted, after checking that each saved record has the
        sample's prompt and references (the benchmark files may have changed since)."""
        key = result_key(benchmark, split)
        done = set()
        for sample in samples:
            record = self.records.get((key, sample.question_id))
            if record is None:
                continue
            if record["prompt"] != benchmark.prompt(sample) or record["references"] != _plain(
                sample.reference
            ):
                raise ValueError(
                    f"{self.path} holds {key} item {sample.question_id} with another prompt or references than "
                    "the benchmark files now give; start another predictions file for these files."
                )
            done.add(sample.question_id)
        return done

    def records_for(self, benchmark: Benchmark, split: str, samples: list[Sample]) -> list[dict]:
        """The saved records of `samples`, in their order."""
        key = result_key(benchmark, split)
        return [self.records[key, sample.question_id] for sample in samples]

    def close(self) -> None:
        os.close(self._descriptor)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

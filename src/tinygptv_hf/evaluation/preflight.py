"""Everything a run will read, checked before the model loads: each benchmark's annotation files present and
readable, at least one item, unique question ids, and every image of the items the run will use present. One
error lists all that is wrong, at most `LISTED` paths per benchmark, so an hours-long run cannot stop halfway on
a missing file."""

import pickle
from collections import Counter
from pathlib import Path

from .benchmarks import Benchmark, result_key
from .samples import Sample

LISTED = 5


def _listing(paths: list, total: int, what: str) -> str:
    shown = ", ".join(str(path) for path in paths[:LISTED])
    more = f" and {len(paths) - LISTED} more" if len(paths) > LISTED else ""
    return f"{len(paths)} of {total} {what}: {shown}{more}"


def load_benchmarks(
    selected: list[tuple[Benchmark, str]], data_dir: Path, limit: int | None = None
) -> list[tuple[Benchmark, str, list[Sample]]]:
    """Each selected benchmark split's samples (the first `limit` of them), read from `data_dir/<name>/`."""
    loaded, problems = [], []
    for benchmark, split in selected:
        key = result_key(benchmark, split)
        folder = Path(data_dir) / benchmark.name
        try:
            samples = benchmark.load(folder, split)[:limit]
        except FileNotFoundError as error:
            problems.append(f"{key}: {error}")
            continue
        except (KeyError, TypeError, ValueError, IndexError, pickle.UnpicklingError) as error:
            problems.append(f"{key}: unreadable annotations in {folder} ({type(error).__name__}: {error})")
            continue
        if not samples:
            problems.append(f"{key}: no items of split {split!r} in {folder}")
        repeated = sorted(qid for qid, count in Counter(s.question_id for s in samples).items() if count > 1)
        if repeated:
            problems.append(f"{key}: " + _listing(repeated, len(samples), "question ids repeat"))
        missing = [sample.image for sample in samples if not sample.image.is_file()]
        if missing:
            problems.append(f"{key}: " + _listing(missing, len(samples), "images are missing"))
        loaded.append((benchmark, split, samples))
    if problems:
        raise FileNotFoundError("Benchmark files are missing or unreadable:\n  " + "\n  ".join(problems))
    return loaded

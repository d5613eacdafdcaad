"""The one mechanism behind every reader: shards of records in, a `datasets.IterableDataset` of rows out.

A reader declares three things: its shard list (files, or parts of one annotation file), how to read the records
of a shard, and how to turn one record into a sample. This module does the rest the same way for all of them:
streaming through ``IterableDataset.from_generator`` (shards in ``gen_kwargs``, so ranks and workers split by
shard and ``state_dict`` resumes mid-shard), one seeded RNG per record (the same prompt is drawn for a record
whatever the order, sharding or resume point), and one row per record: a sample, or a skip row naming the shard,
the key and the reason (counted later by `DataHealth.admit`, see `tinygptv_hf.data.health`).
"""

import functools
import glob
import io
import json
import os
import random
import re
from dataclasses import dataclass

from datasets import IterableDataset
from PIL import Image

from .health import BAD, DROPPED, BadRecord, DroppedRecord, describe
from .samples import SAMPLE_FEATURES, skipped_record


def build_stream(source, shards, read_shard, to_sample, *, seed=0) -> IterableDataset:
    """A streaming dataset of rows in the uniform schema.

    ``read_shard(shard)`` yields ``(key, record)``; ``to_sample(record, rng)`` returns a sample, or raises
    `DroppedRecord` for a record the original drops by design (a COCO-VQA question whose image is absent). Any
    other exception from either is a bad record. Both become skip rows; an unreadable rest of a shard is one.
    """
    shards = list(shards)
    if not shards:
        raise ValueError(f"{source}: no shards to read")
    generate = functools.partial(
        _generate, source=source, read_shard=read_shard, to_sample=to_sample, seed=seed
    )
    return IterableDataset.from_generator(generate, features=SAMPLE_FEATURES, gen_kwargs={"shards": shards})


def _generate(shards, source, read_shard, to_sample, seed):
    for shard in shards:
        location = shard_location(shard)
        key = "<start>"
        records = read_shard(shard)
        while True:
            try:
                key, record = next(records)
            except StopIteration:
                break
            except BadRecord as error:
                yield skipped_record(source, BAD, location, error.key, str(error))
                break
            except Exception as error:  # noqa: BLE001 - an unreadable rest of a shard is one bad record
                yield skipped_record(source, BAD, location, f"after {key}", describe(error))
                break
            rng = random.Random(f"{seed}/{source}/{os.path.basename(location)}/{key}")
            try:
                row = to_sample(record, rng)
            except DroppedRecord as error:
                row = skipped_record(source, DROPPED, location, key, str(error))
            except Exception as error:  # noqa: BLE001 - whatever is wrong with a record, it is skipped
                row = skipped_record(source, BAD, location, key, describe(error))
            yield row


def shard_location(shard) -> str:
    """The file a shard reads (a path, or a part object's ``path``), for messages and seeds."""
    return str(getattr(shard, "path", shard))


# ---------------------------------------------------------------------------------------------------------------
# Paths


def require_file(path, what: str) -> str:
    """Fail at construction, before any training step, when an input file is missing."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def require_dir(path, what: str) -> str:
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


_BRACE_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_shards(spec, what: str = "shard", extensions: tuple[str, ...] = (".tar",)) -> list[str]:
    """Shard paths from a path, a folder, a glob, a webdataset brace range (``{00000..05244}.tar``) or a list.

    A folder stands for its files ending in one of ``extensions``, in name order. Every named shard must exist,
    so a wrong path fails at construction rather than mid-run.
    """
    specs = [spec] if isinstance(spec, str | os.PathLike) else list(spec)
    paths: list[str] = []
    for item in map(os.fspath, specs):
        match = _BRACE_RANGE.search(item)
        if match:
            first, last = match.group(1), match.group(2)
            width = len(first)
            names = [
                item[: match.start()] + str(i).zfill(width) + item[match.end() :]
                for i in range(int(first), int(last) + 1)
            ]
            paths.extend(names)
        elif glob.has_magic(item):
            found = sorted(glob.glob(item))
            if not found:
                raise FileNotFoundError(f"no {what} matches {item}")
            paths.extend(found)
        elif os.path.isdir(item):
            found = sorted(entry.path for entry in os.scandir(item) if entry.name.endswith(extensions))
            if not found:
                raise FileNotFoundError(
                    f"folder {item} holds no {what} ({' or '.join(extensions)} files); pass the shards' paths, a "
                    f"glob or a brace range such as {os.path.join(item, '{00000..00099}' + extensions[0])}"
                )
            paths.extend(found)
        else:
            paths.append(item)
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} {what}(s) not found, first: {missing[0]}")
    if not paths:
        raise FileNotFoundError(f"no {what} given")
    return paths


# ---------------------------------------------------------------------------------------------------------------
# Images


def read_image(path) -> tuple[bytes, tuple[int, int]]:
    """An image file's bytes and size, decoded once here so a corrupt file is a bad sample, not a crash later."""
    with open(path, "rb") as f:
        data = f.read()
    return data, image_size(data)


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) after a full decode, which raises on corrupt or truncated image bytes."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.size


# ---------------------------------------------------------------------------------------------------------------
# JSON annotation files, split into parts so that one big file still spreads over ranks and workers.


@dataclass(frozen=True)
class Part:
    """Part ``index`` of ``count`` contiguous blocks of the records read from ``path``.

    ``field`` names the list inside a JSON object (``"annotations"``, ``"data"``) when the file is not a list.
    """

    path: str
    index: int = 0
    count: int = 1
    field: str | None = None

    def block(self, records):
        n = len(records)
        return records[n * self.index // self.count : n * (self.index + 1) // self.count]


def split_parts(path, num_shards: int = 1, field: str | None = None) -> list[Part]:
    if num_shards < 1:
        raise ValueError(f"num_shards must be at least 1, got {num_shards}")
    return [Part(os.fspath(path), i, num_shards, field) for i in range(num_shards)]


def json_parts(path, what: str, num_shards: int = 1, field: str | None = None) -> list[Part]:
    """Shards of one JSON annotation file (a list, or a list under ``field``), which must exist."""
    return split_parts(require_file(path, what), num_shards, field)


def read_json_part(part: Part):
    """``(file#index, record)`` for the records of one part."""
    with open(part.path, encoding="utf-8") as f:
        data = json.load(f)
    records = data[part.field] if part.field else data
    first = len(records) * part.index // part.count
    name = os.path.basename(part.path)
    for i, record in enumerate(part.block(records), start=first):
        yield f"{name}#{i}", record

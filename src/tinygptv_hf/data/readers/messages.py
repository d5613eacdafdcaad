"""Users' own data in the common Hub layout: ``messages`` (user/assistant turns whose content is a string or a list
of ``{"type": "image"}`` / ``{"type": "text", "text": ...}`` blocks) plus ``images`` (one image per sample).

The instruction is rendered as the package's chat templates render it (an image block becomes
``<Img><ImageHere></Img> `` and a user turn holding an image gains a trailing space, like the original's
stage-4 instructions), so fine-tuning and inference see the same text.
"""

import functools
import io
import json
import os

import datasets
import pyarrow.parquet as pq

from ...processors.templates import IMAGE_PROMPT
from ..samples import make_sample
from ..stream import Part, build_stream, expand_shards, image_size, read_image, split_parts


def read_messages(data, image_root=None, *, source: str = "messages", num_shards: int = 1, seed: int = 0):
    """A stream of uniform rows from ``.json`` / ``.jsonl`` / ``.parquet`` files (path, folder, glob or list; each
    file is a shard) or from a loaded `datasets.Dataset` / `IterableDataset` (split into ``num_shards``).

    Image entries may be a path (relative to ``image_root``), ``{"bytes", "path"}`` or a PIL image.
    """
    to_sample = functools.partial(
        _messages, image_root=None if image_root is None else os.fspath(image_root), source=source
    )
    if isinstance(data, datasets.Dataset | datasets.IterableDataset):
        if isinstance(data.features, datasets.Features) and "images" in data.features:
            data = data.cast_column("images", datasets.List(datasets.Image(decode=False)))
        shards = split_parts("<dataset>", num_shards)
        return build_stream(
            source,
            shards,
            functools.partial(_read_dataset_part, dataset=data),
            to_sample,
            seed=seed,
        )
    paths = expand_shards(data, f"{source} file", (".json", ".jsonl", ".parquet"))
    return build_stream(source, paths, _read_file, to_sample, seed=seed)


def _read_dataset_part(part: Part, dataset):
    shard = dataset.shard(num_shards=part.count, index=part.index) if part.count > 1 else dataset
    for i, record in enumerate(shard):
        yield f"{part.index}#{i}", record


def _read_file(path: str):
    """Records of one file; a JSON Lines record stays a string so a malformed line is one bad sample."""
    name = os.path.basename(path)
    if path.endswith(".parquet"):
        row = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
            for record in batch.to_pylist():
                yield f"{name}#{row}", record
                row += 1
    elif path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            for line_number, line in enumerate(f, start=1):
                if line.strip():
                    yield f"{name}:{line_number}", line
    else:
        with open(path, encoding="utf-8") as f:
            for i, record in enumerate(json.load(f)):
                yield f"{name}#{i}", record


def _render(content) -> tuple[str, int]:
    """Text of one message and how many image blocks it holds."""
    if isinstance(content, str):
        return content, 0
    pieces, images = [], 0
    for block in content:
        if block["type"] == "image":
            pieces.append(IMAGE_PROMPT + " ")
            images += 1
        elif block["type"] == "text":
            pieces.append(block["text"])
        else:
            raise ValueError(f"unknown content block type {block['type']!r}")
    return "".join(pieces), images


def _messages(record, rng, image_root, source):
    if isinstance(record, str):
        record = json.loads(record)
    turns, question, image_blocks = [], None, 0
    for message in record["messages"]:
        role = message["role"]
        if role == "system":
            continue
        text, images = _render(message["content"])
        if role == "user":
            if question is not None:
                raise ValueError("two user messages without an assistant answer between them")
            if images and turns:
                raise ValueError("the image must be in the first user message")
            question, image_blocks = text + (" " if images else ""), image_blocks + images
        elif role == "assistant":
            if question is None:
                raise ValueError("assistant message without a user message before it")
            turns.append((question, text))
            question = None
        else:
            raise ValueError(f"unknown role {role!r}")
    images = record.get("images") or []
    if len(images) > 1 or image_blocks != len(images):
        raise ValueError(f"{image_blocks} image blocks for {len(images)} images; TinyGPT-V takes one image")
    if not turns:
        raise ValueError("no answered user message")
    return make_sample(_image_bytes(images[0], image_root) if images else None, turns, source)


def _image_bytes(image, image_root) -> bytes:
    if isinstance(image, dict) and image.get("bytes"):
        data = image["bytes"]
    elif isinstance(image, dict | str):
        path = image["path"] if isinstance(image, dict) else image
        data, _ = read_image(path if image_root is None else os.path.join(image_root, path))
    else:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
    image_size(data)
    return data

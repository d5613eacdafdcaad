"""Question answering data in LAVIS json: COCO-VQA, OK-VQA, A-OKVQA and GQA, all as ``[vqa]`` tasks."""

import functools
import os
from collections import Counter

from ..health import DroppedRecord
from ..samples import image_instruction, make_sample
from ..stream import build_stream, json_parts, read_image, read_json_part, require_dir
from ..text import VQA_TEMPLATES, blip_caption


def _vqa_stream(ann_paths, image_root, source, num_shards, seed, **how):
    images = require_dir(image_root, f"{source} image folder")
    paths = [ann_paths] if isinstance(ann_paths, str | os.PathLike) else list(ann_paths)
    parts = [part for path in paths for part in json_parts(path, f"{source} annotation file", num_shards)]
    to_sample = functools.partial(_vqa, images=images, source=source, **how)
    return build_stream(source, parts, read_json_part, to_sample, seed=seed)


def read_coco_vqa(ann_paths, image_root, *, source: str = "coco_vqa", num_shards: int = 1, seed: int = 0):
    """``vqa_train.json`` + ``vqa_val.json`` (or ``okvqa_train.json`` with ``source="ok_vqa"``): records
    ``{image, question, question_id, answer: [...]}``, image = ``{image_root}/{basename(image)}``.

    As the original, a question whose image file is absent is dropped (counted per source as ``dropped``, not
    as a bad sample), and the answer is drawn in proportion to how many annotators gave it.
    """
    return _vqa_stream(
        ann_paths,
        image_root,
        source,
        num_shards,
        seed,
        answers="answer",
        image_path=os.path.basename,
        skip_missing=True,
    )


def read_aokvqa(ann_paths, image_root, *, source: str = "aok_vqa", num_shards: int = 1, seed: int = 0):
    """``aokvqa_v1p0_train.json`` (LAVIS): the answer drawn from ``direct_answers`` by frequency; image =
    ``{image_root}/{image}``, absent images dropped as the original does."""
    return _vqa_stream(
        ann_paths,
        image_root,
        source,
        num_shards,
        seed,
        answers="direct_answers",
        image_path=str,
        skip_missing=True,
    )


def read_gqa(ann_paths, image_root, *, source: str = "gqa", num_shards: int = 1, seed: int = 0):
    """``train_balanced_questions.json`` (LAVIS list of ``{image, question, answer}``); image =
    ``{image_root}/{image}``. A missing image is a bad sample here, as it crashes the original."""
    return _vqa_stream(
        ann_paths,
        image_root,
        source,
        num_shards,
        seed,
        answers="answer",
        image_path=str,
        skip_missing=False,
    )


def _vqa(record, rng, images, source, answers, image_path, skip_missing):
    path = os.path.join(images, image_path(record["image"]))
    if skip_missing and not os.path.exists(path):
        raise DroppedRecord(f"image not found: {path}")
    image, _ = read_image(path)
    question = blip_caption(record["question"])
    answer = record[answers]
    if isinstance(answer, list):
        weights = Counter(answer)
        answer = rng.choices(list(weights), weights=list(weights.values()), k=1)[0]
    instruction = image_instruction(rng.choice(VQA_TEMPLATES).format(question))
    return make_sample(image, [(instruction, blip_caption(answer))], source)

"""Box data: RefCOCO/+/g and their inverse tasks (REFER files), Visual Genome regions, Flickr30k grounding."""

import functools
import json
import os
import pickle

from ...grounding import xywh_to_text
from ..samples import image_instruction, make_sample
from ..stream import (
    Part,
    build_stream,
    json_parts,
    read_image,
    read_json_part,
    require_dir,
    require_file,
    split_parts,
)
from ..text import (
    DETECTION_TEMPLATE,
    GROUNDING_PROMPTS,
    IDENTIFY_TEMPLATES,
    REFER_TEMPLATES,
    blip_caption,
)

REFER_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}


class _DataOnlyUnpickler(pickle.Unpickler):
    """REFER's ``refs(*).p`` holds only lists, dicts, strings and numbers; any global is refused, so a crafted
    pickle cannot run code."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing global {module}.{name} in a REFER pickle")


def load_refer_pickle(path) -> list:
    with open(path, "rb") as f:
        return _DataOnlyUnpickler(f).load()


def read_refcoco(
    data_root,
    image_root,
    *,
    dataset: str = "refcoco",
    split_by: str | None = None,
    split: str = "train",
    inverse: bool = False,
    source: str | None = None,
    num_shards: int = 1,
    seed: int = 0,
):
    """REFER layout ``{data_root}/{dataset}/refs({split_by}).p`` + ``instances.json``; images
    ``COCO_train2014_{image_id:012d}.jpg``.

    One sentence per ref drawn with the seeded RNG and put through ``blip_caption``; the ref's box becomes
    ``{<x1><y1><x2><y2>}`` on the 0-100 grid of the image's own size. ``[refer]`` asks for the box;
    ``inverse=True`` gives the ``[identify]`` task (box in the question, sentence as the answer).
    """
    split_by = split_by or REFER_SPLIT_BY[dataset]
    folder = require_dir(os.path.join(data_root, dataset), f"REFER {dataset} folder")
    refs = require_file(os.path.join(folder, f"refs({split_by}).p"), f"REFER {dataset} refs pickle")
    instances = require_file(os.path.join(folder, "instances.json"), f"REFER {dataset} instances.json")
    images = require_dir(image_root, f"{dataset} image folder")
    source = source or ("inv" if inverse else "") + dataset.replace("+", "p")
    read_part = functools.partial(_read_refer_part, instances_path=instances, split=split)
    to_sample = functools.partial(_refer, images=images, inverse=inverse, source=source)
    return build_stream(source, split_parts(refs, num_shards), read_part, to_sample, seed=seed)


def _read_refer_part(part: Part, instances_path, split):
    refs = [ref for ref in load_refer_pickle(part.path) if ref["split"] == split]
    with open(instances_path, encoding="utf-8") as f:
        boxes = {ann["id"]: ann["bbox"] for ann in json.load(f)["annotations"]}
    for ref in part.block(refs):
        yield f"ref{ref['ref_id']}", {**ref, "bbox": boxes.get(ref["ann_id"])}


def _refer(record, rng, images, inverse, source):
    if record["bbox"] is None:
        raise KeyError(f"annotation {record['ann_id']} not in instances.json")
    image, (width, height) = read_image(os.path.join(images, f"COCO_train2014_{record['image_id']:012d}.jpg"))
    sentence = blip_caption(rng.choice(record["sentences"])["raw"])
    box = xywh_to_text(record["bbox"], width, height)
    if inverse:
        turn = (image_instruction(rng.choice(IDENTIFY_TEMPLATES).format(box)), blip_caption(sentence))
    else:
        turn = (image_instruction(rng.choice(REFER_TEMPLATES).format(sentence)), box)
    return make_sample(image, [turn], source)


def read_visual_genome(
    data_dir, *, max_area: int = 16384, source: str = "refvg", num_shards: int = 1, seed: int = 0
):
    """``region_descriptions.json`` + ``image_data.json`` as the ``visual_genome`` package reads them; the image
    of a region is ``{data_dir}/{last two components of its url}`` (``VG_100K/1.jpg``).

    Only regions with ``width * height < max_area`` (OFA's rule, kept by the original); ``[refer]`` task with the
    phrase through ``blip_caption``.
    """
    require_file(os.path.join(data_dir, "region_descriptions.json"), "Visual Genome region_descriptions.json")
    require_file(os.path.join(data_dir, "image_data.json"), "Visual Genome image_data.json")
    parts = split_parts(data_dir, num_shards)
    to_sample = functools.partial(_region, data_dir=os.fspath(data_dir), source=source)
    return build_stream(
        source,
        parts,
        functools.partial(_read_region_part, max_area=max_area),
        to_sample,
        seed=seed,
    )


def _read_region_part(part: Part, max_area):
    with open(os.path.join(part.path, "image_data.json"), encoding="utf-8") as f:
        urls = {image.get("image_id", image.get("id")): image["url"] for image in json.load(f)}
    with open(os.path.join(part.path, "region_descriptions.json"), encoding="utf-8") as f:
        images = json.load(f)
    for image in part.block(images):
        for region in image["regions"]:
            if region["width"] * region["height"] < max_area:
                yield (
                    f"{region['image_id']}/{region['region_id']}",
                    {**region, "url": urls.get(region["image_id"])},
                )


def _region(record, rng, data_dir, source):
    if record["url"] is None:
        raise KeyError(f"image {record['image_id']} not in image_data.json")
    image, (width, height) = read_image(os.path.join(data_dir, *record["url"].split("/")[-2:]))
    box = xywh_to_text([record["x"], record["y"], record["width"], record["height"]], width, height)
    instruction = image_instruction(rng.choice(REFER_TEMPLATES).format(blip_caption(record["phrase"])))
    return make_sample(image, [(instruction, box)], source)


FLICKR_TASKS = {
    "grounded_caption": "flickr_grounded_caption",
    "caption_to_phrase": "flickr_CaptionToPhrase",
    "phrase_to_box": "flickr_ObjectToPhrase",
}


def read_flickr(
    ann_path,
    image_root,
    *,
    task: str = "grounded_caption",
    source: str | None = None,
    num_shards: int = 1,
    seed: int = 0,
):
    """MiniGPT-v2's Flickr30k files, images ``{image_id}.jpg``; text used as stored (no ``blip_caption``).

    * ``grounded_caption``: ``groundedcaption.json`` ``{image_id, grounded_caption}``, a ``[grounding]`` prompt;
    * ``caption_to_phrase``: ``captiontobbox.json`` ``{image_id, caption, output}``, ``[detection] {caption}``;
    * ``phrase_to_box``: ``phrasetobbox.json`` ``{image_id, phrase, bbox}``, ``[detection] {phrase}`` answered
      ``<p>{phrase}</p> {bbox}``.
    """
    if task not in FLICKR_TASKS:
        raise ValueError(f"unknown Flickr task {task!r}; choose from {sorted(FLICKR_TASKS)}")
    source = source or FLICKR_TASKS[task]
    images = require_dir(image_root, "Flickr30k image folder")
    parts = json_parts(ann_path, f"{source} annotation file", num_shards)
    to_sample = functools.partial(_flickr, images=images, task=task, source=source)
    return build_stream(source, parts, read_json_part, to_sample, seed=seed)


def _flickr(record, rng, images, task, source):
    image, _ = read_image(os.path.join(images, f"{record['image_id']}.jpg"))
    if task == "grounded_caption":
        turn = (rng.choice(GROUNDING_PROMPTS), record["grounded_caption"])
    elif task == "caption_to_phrase":
        turn = (DETECTION_TEMPLATE.format(record["caption"]), record["output"])
    else:
        turn = (DETECTION_TEMPLATE.format(record["phrase"]), f"<p>{record['phrase']}</p> {record['bbox']}")
    return make_sample(image, [(image_instruction(turn[0]), turn[1])], source)

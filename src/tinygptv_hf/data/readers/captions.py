"""Caption data: LAION / CC3M+SBU webdataset shards (stages 1-2), cc_sbu_align (stage 3), TextCaps (stage 4)."""

import functools
import json
import os

from ..samples import image_instruction, make_sample
from ..stream import (
    build_stream,
    expand_shards,
    image_size,
    json_parts,
    read_image,
    read_json_part,
    require_dir,
)
from ..text import ALIGNMENT_PROMPTS, CAPTION_PROMPTS, CAPTION_TEMPLATE, blip_caption
from ..webdataset import read_tar_samples


def read_webdataset_captions(shards, *, source: str = "laion", seed: int = 0):
    """img2dataset shards (``jpg`` + ``json`` with ``caption``): image alone, answer ``blip_caption(caption)``.

    ``shards`` is a path, a folder of shards, a glob, a brace range such as ``laion/{00000..05244}.tar`` or a list
    of them; each shard is one unit of sharding across ranks.
    """
    paths = expand_shards(shards, f"{source} webdataset shard", (".tar", ".tar.gz", ".tgz"))
    return build_stream(
        source,
        paths,
        read_tar_samples,
        functools.partial(_tar_caption, source=source),
        seed=seed,
    )


def _tar_caption(record, rng, source):
    if "jpg" not in record:
        raise KeyError(f"no jpg member (members: {sorted(record)})")
    image_size(record["jpg"])
    caption = json.loads(record["json"])["caption"]
    return make_sample(record["jpg"], [("", blip_caption(caption))], source)


def read_cc_sbu_align(
    root,
    *,
    prompts=ALIGNMENT_PROMPTS,
    source: str = "cc_sbu_align",
    num_shards: int = 1,
    seed: int = 0,
):
    """``filter_cap.json`` (``{"annotations": [{"image_id", "caption"}]}``) and ``image/{image_id}.jpg``.

    The caption is the answer as stored (no ``blip_caption``). The instruction is one of the alignment prompts:
    the original draws one per batch inside the model, here one is drawn per sample so the data carries all
    its text and the collator only applies the template.
    """
    images = require_dir(os.path.join(root, "image"), "cc_sbu_align image folder")
    parts = json_parts(
        os.path.join(root, "filter_cap.json"), "cc_sbu_align filter_cap.json", num_shards, field="annotations"
    )
    to_sample = functools.partial(_aligned_caption, images=images, prompts=tuple(prompts), source=source)
    return build_stream(source, parts, read_json_part, to_sample, seed=seed)


def _aligned_caption(record, rng, images, prompts, source):
    image, _ = read_image(os.path.join(images, f"{record['image_id']}.jpg"))
    return make_sample(image, [(rng.choice(prompts), record["caption"])], source)


def read_textcaps(
    ann_path, image_root, *, source: str = "textcaps_caption", num_shards: int = 1, seed: int = 0
):
    """``TextCaps_0.1_train.json`` (``data[i].{image_id, caption_str}``), images ``{image_id}.jpg``.

    Instruction ``[caption] <one of 17 prompts>``; answer ``blip_caption(caption_str)``.
    """
    images = require_dir(image_root, "TextCaps image folder")
    parts = json_parts(ann_path, "TextCaps annotation file", num_shards, field="data")
    to_sample = functools.partial(_textcaps, images=images, source=source)
    return build_stream(source, parts, read_json_part, to_sample, seed=seed)


def _textcaps(record, rng, images, source):
    image, _ = read_image(os.path.join(images, f"{record['image_id']}.jpg"))
    instruction = image_instruction(CAPTION_TEMPLATE.format(rng.choice(CAPTION_PROMPTS)))
    return make_sample(image, [(instruction, blip_caption(record["caption_str"]))], source)

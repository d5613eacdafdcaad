"""Instruction data: LLaVA detail/reason (one turn), LLaVA and multitask conversations (many turns), and the
image-free Unnatural Instructions."""

import functools
import os

from ..samples import image_instruction, make_sample
from ..stream import build_stream, json_parts, read_image, read_json_part, require_dir
from ..text import blip_caption


def _first_question(conversations) -> str:
    """The first human turn without ``<image>`` and newlines, as the original strips it."""
    return conversations[0]["value"].replace("<image>", "").replace("\n", "").strip()


def _coco_image(images, record):
    return read_image(os.path.join(images, f"COCO_train2014_{record['id']}.jpg"))[0]


def read_llava_instruct(
    ann_path, image_root, *, source: str = "llava_detail", num_shards: int = 1, seed: int = 0
):
    """``detail_23k.json`` / ``complex_reasoning_77k.json``: first question through ``blip_caption``, first
    answer as stored; images ``COCO_train2014_{id}.jpg``."""
    return _llava_stream(ann_path, image_root, source, num_shards, seed, _single_turn)


def _single_turn(record, rng, images, source):
    conversations = record["conversations"]
    instruction = image_instruction(blip_caption(_first_question(conversations)))
    return make_sample(_coco_image(images, record), [(instruction, conversations[1]["value"])], source)


def read_conversations(
    ann_path,
    image_root,
    *,
    source: str = "llava_conversation",
    num_shards: int = 1,
    seed: int = 0,
):
    """``conversation_58k.json`` / ``multitask_conversation.json``: every turn, no text processing.

    The first question becomes ``<Img><ImageHere></Img> {q} ``, each later one ``{q} `` (the original appends a
    space); a trailing question without an answer is dropped.
    """
    return _llava_stream(ann_path, image_root, source, num_shards, seed, _multi_turn)


def _llava_stream(ann_path, image_root, source, num_shards, seed, to_sample):
    """A LLaVA-layout json list over COCO images, each record made a sample by `to_sample`."""
    images = require_dir(image_root, f"{source} image folder")
    parts = json_parts(ann_path, f"{source} annotation file", num_shards)
    convert = functools.partial(to_sample, images=images, source=source)
    return build_stream(source, parts, read_json_part, convert, seed=seed)


def _multi_turn(record, rng, images, source):
    conversations = record["conversations"]
    questions = [image_instruction(_first_question(conversations))]
    questions += [turn["value"] + " " for turn in conversations[2::2]]
    answers = [turn["value"] for turn in conversations[1::2]]
    if not answers:
        raise ValueError("conversation has no answer")
    return make_sample(_coco_image(images, record), list(zip(questions, answers, strict=False)), source)


def read_unnatural_instructions(
    ann_path, *, source: str = "unnatural_instruction", num_shards: int = 1, seed: int = 0
):
    """A list of ``{"instances": [{instruction_with_input, constraints, output}]}``; the first instance is used.

    The sample has no image and its instruction no placeholder; instruction (plus ``" " + constraints`` when not
    null) and output both go through ``blip_caption``.
    """
    parts = json_parts(ann_path, "Unnatural Instructions file", num_shards)
    return build_stream(
        source, parts, read_json_part, functools.partial(_unnatural, source=source), seed=seed
    )


def _unnatural(record, rng, source):
    instance = record["instances"][0]
    instruction = instance["instruction_with_input"]
    if instance["constraints"] is not None:
        instruction = instruction + " " + instance["constraints"]
    return make_sample(None, [(blip_caption(instruction), blip_caption(instance["output"]))], source)

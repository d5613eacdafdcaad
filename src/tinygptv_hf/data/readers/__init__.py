"""Readers for the original's on-disk formats and for users' ``messages`` datasets; each returns a streaming
`datasets.IterableDataset` with one uniform row per record: a sample or a skip (see `tinygptv_hf.data.samples`)."""

from .captions import read_cc_sbu_align, read_textcaps, read_webdataset_captions
from .conversations import read_conversations, read_llava_instruct, read_unnatural_instructions
from .grounding import load_refer_pickle, read_flickr, read_refcoco, read_visual_genome
from .messages import read_messages
from .vqa import read_aokvqa, read_coco_vqa, read_gqa

__all__ = [
    "load_refer_pickle",
    "read_aokvqa",
    "read_cc_sbu_align",
    "read_coco_vqa",
    "read_conversations",
    "read_flickr",
    "read_gqa",
    "read_llava_instruct",
    "read_messages",
    "read_refcoco",
    "read_textcaps",
    "read_unnatural_instructions",
    "read_visual_genome",
    "read_webdataset_captions",
]

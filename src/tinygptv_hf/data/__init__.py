"""Training data as `datasets` streams: readers for the original's on-disk formats and users' ``messages`` data,
one uniform row schema, mixing and rank sharding, the resumable stream a trainer reads with its bad-sample
accounting, and the synthetic demo world."""

from .health import BadSample, DataBudgetExceeded, DataHealth
from .mixing import mix_datasets, shard_for_rank
from .readers import (
    load_refer_pickle,
    read_aokvqa,
    read_cc_sbu_align,
    read_coco_vqa,
    read_conversations,
    read_flickr,
    read_gqa,
    read_llava_instruct,
    read_messages,
    read_refcoco,
    read_textcaps,
    read_unnatural_instructions,
    read_visual_genome,
    read_webdataset_captions,
)
from .samples import SAMPLE_FEATURES, image_instruction, make_sample
from .synthetic import write_synthetic_world
from .text import blip_caption
from .training import TrainingStream

__all__ = [
    "SAMPLE_FEATURES",
    "BadSample",
    "DataBudgetExceeded",
    "DataHealth",
    "TrainingStream",
    "blip_caption",
    "image_instruction",
    "load_refer_pickle",
    "make_sample",
    "mix_datasets",
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
    "shard_for_rank",
    "write_synthetic_world",
]

"""Helpers shared by the tests: noise images, a scripted continuation for generate."""

import numpy as np
import torch
from PIL import Image
from transformers import LogitsProcessor


def random_image(seed: int, width: int = 64, height: int = 48) -> Image.Image:
    """A noise image: with random weights, images give different features only when their pixels differ."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


# A model small enough for any test, with different widths for the vision tower (16), Q-Former (24), projector
# (40) and language model (32), so that a tensor taken from the wrong place cannot pass a shape check. Images are
# 14 px in 7-px patches (5 vision tokens with the class token) and become 3 query tokens. The image token has an
# embedding row, as in the real checkpoints, and a low id, as in transformers' LLaVA tester (its embedding-resize
# tests clamp ids to a smaller vocabulary).
DISTINCT_WIDTHS = dict(
    vision_config=dict(
        hidden_size=16,
        intermediate_size=20,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=14,
        patch_size=7,
        initializer_range=0.02,
    ),
    qformer_config=dict(
        hidden_size=24,
        intermediate_size=28,
        num_hidden_layers=2,
        num_attention_heads=2,
        encoder_hidden_size=16,
        cross_attention_frequency=1,
    ),
    text_config=dict(
        vocab_size=99,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    ),
    num_query_tokens=3,
    projection_hidden_size=40,
    image_token_id=3,
)


class ScriptedAnswer(LogitsProcessor):
    """Forces a fixed continuation, so stopping and decoding are tested independently of the random weights."""

    def __init__(self, token_ids, prompt_length):
        self.token_ids, self.prompt_length = token_ids, prompt_length

    def __call__(self, input_ids, scores):
        step = min(input_ids.shape[1] - self.prompt_length, len(self.token_ids) - 1)
        forced = torch.full_like(scores, -float("inf"))
        forced[:, self.token_ids[step]] = 0.0
        return forced

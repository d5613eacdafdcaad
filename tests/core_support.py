"""Helpers shared by the tests: noise images, a scripted continuation for generate."""

import numpy as np
import torch
from PIL import Image
from transformers import LogitsProcessor


def random_image(seed: int, width: int = 64, height: int = 48) -> Image.Image:
    """A noise image: with random weights, images give different features only when their pixels differ."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


class ScriptedAnswer(LogitsProcessor):
    """Forces a fixed continuation, so stopping and decoding are tested independently of the random weights."""

    def __init__(self, token_ids, prompt_length):
        self.token_ids, self.prompt_length = token_ids, prompt_length

    def __call__(self, input_ids, scores):
        step = min(input_ids.shape[1] - self.prompt_length, len(self.token_ids) - 1)
        forced = torch.full_like(scores, -float("inf"))
        forced[:, self.token_ids[step]] = 0.0
        return forced

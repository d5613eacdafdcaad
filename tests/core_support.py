"""Helpers shared by the core tests."""

import numpy as np
from PIL import Image


def random_image(seed: int, width: int = 64, height: int = 48) -> Image.Image:
    """A noise image: with random weights, images give different features only when their pixels differ."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)

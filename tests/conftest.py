"""Shared fixtures: one tiny checkpoint per test session, written by the same code as `tinygptv init --preset tiny`."""

import pytest
from core_support import random_image
from transformers import AutoModelForImageTextToText, AutoProcessor

from tinygptv_hf.checkpoint import init_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Folder of a complete, randomly initialised `tiny` checkpoint (weights, processor, templates, remote code)."""
    return init_checkpoint("tiny", tmp_path_factory.mktemp("tiny_checkpoint"))


@pytest.fixture(scope="session")
def tiny_processor(tiny_checkpoint):
    return AutoProcessor.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    """Shared read-only model in eval mode; tests that train or modify a model load their own."""
    return AutoModelForImageTextToText.from_pretrained(tiny_checkpoint).eval()


@pytest.fixture(scope="session")
def image_files(tmp_path_factory):
    """Three real image files of different sizes and formats."""
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for seed, (name, size) in enumerate([("a.png", (64, 48)), ("b.jpg", (50, 70)), ("c.png", (33, 33))]):
        path = folder / name
        random_image(seed, *size).save(path)
        paths.append(path)
    return paths

"""Shared fixtures: one tiny checkpoint per test session, written by the same code as `tinygptv init --preset tiny`.

Also a guard: the suite must run from a clone alone, so reading a folder beside the repository (such as the
project's `../shared`) fails the test that does it.
"""

import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch
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


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module of tiny models: they gain nothing from a second one, and on a busy machine
    the threads' hand-offs cost far more than the arithmetic (transformers' common tests run 5x faster)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def image_prompt(tiny_processor, image_files):
    """A one-image chat prompt for the tiny checkpoint, as the processor makes it."""
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "path": str(image_files[0])},
                {"type": "text", "text": "what is it"},
            ],
        }
    ]
    return tiny_processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )


def _folders_beside_repository() -> list[Path]:
    """Siblings of the clone, less any that hold the interpreter, the temp folder or the home folder."""
    needed = [Path(p).resolve() for p in (sys.prefix, sys.base_prefix, tempfile.gettempdir(), Path.home())]
    siblings = [p.resolve() for p in REPO_ROOT.parent.iterdir() if p.is_dir() and p.resolve() != REPO_ROOT]
    return [p for p in siblings if not any(n == p or p in n.parents or n in p.parents for n in needed)]


def _refuse_reads_outside_repository(forbidden: list[Path]):
    def hook(event: str, args: tuple) -> None:
        if (
            event not in ("open", "os.listdir", "os.scandir")
            or not args
            or not isinstance(args[0], (str, bytes, Path))
        ):
            return
        path = os.fsdecode(args[0])
        if not os.path.isabs(path):
            path = os.path.join(os.getcwd(), path)
        path = Path(os.path.normpath(path))
        for folder in forbidden:
            if path == folder or folder in path.parents:
                raise PermissionError(
                    f"A test read {path}, outside the repository; ship what it needs inside it"
                )

    return hook


sys.addaudithook(_refuse_reads_outside_repository(_folders_beside_repository()))

"""RefCOCO, RefCOCO+ and RefCOCOg from their released files: `refs(unc).p` / `refs(umd).p` and `instances.json`.

The refs files are pickles. They hold only lists, dicts, strings and numbers, so they are read with an unpickler
that refuses every global: a tampered file raises instead of running code.
"""

import json
import pickle
from pathlib import Path


class _PlainDataUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(
            f"Refusing to load {module}.{name}: the refs file may only hold plain data."
        )


def load_refs(path: Path) -> list[dict]:
    """The list of refs in a REFER pickle, read without importing or calling anything."""
    with open(path, "rb") as handle:
        refs = _PlainDataUnpickler(handle, encoding="utf-8", errors="replace").load()
    if not isinstance(refs, list):
        raise ValueError(f"{path} should hold a list of refs, found {type(refs).__name__}.")
    return refs


def load_instances(path: Path) -> tuple[dict, dict]:
    """Images and annotations of `instances.json`, each keyed by id."""
    with open(path, encoding="utf-8") as handle:
        instances = json.load(handle)
    images = {image["id"]: image for image in instances["images"]}
    annotations = {annotation["id"]: annotation for annotation in instances["annotations"]}
    return images, annotations

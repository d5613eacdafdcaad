"""The one row schema every reader yields, and the ``datasets`` features that carry it.

A reader yields one row per record it reads. A *sample* is a plain dict::

    {"image": PIL.Image.Image | None,
     "turns": [{"instruction": str, "answer": str}, ...],
     "source": str,
     "skip": None}

* ``instruction`` is the dataset's text before the stage's prompt template is applied (the collator wraps it in
  ``###Human: {} ###Assistant: `` or ``[INST] {} [/INST]``). The first instruction of an image sample carries
  ``<Img><ImageHere></Img>`` exactly where the original put it, e.g. ``"<Img><ImageHere></Img> [vqa] what
  colour is the circle "`` (stage-4 image instructions end with a space, hence two spaces before ``[/INST]``).
* Stage 1-2 captions have one turn with instruction ``""``: the original feeds the image alone.
* An image-free sample (Unnatural Instructions) has ``image`` None and an instruction without the placeholder;
  the collator then builds a text-only sequence, as the original does.
* ``source`` names the dataset (``"coco_vqa"``, ``"refcoco"``, ...), so mixes can be inspected per dataset.

A record that gives no sample is a *skip* row: no image, no turns, and ``skip`` says why
(``{"kind": "bad" | "dropped", "location": file, "key": record, "reason": text}``). Skips travel in the stream
so that they are counted once, after mixing, by `DataHealth.admit`; a skipped record takes its source's draw, so
mixing ratios count records.

Readers hand the image over as its undecoded file bytes; the ``Image(mode="RGB")`` feature decodes them on the
way out, so every image arrives as RGB like the original's ``.convert("RGB")``.
"""

from datasets import Features, Image, List, Value

from ..processors.templates import IMAGE_PROMPT

SAMPLE_FEATURES = Features(
    {
        "image": Image(mode="RGB"),
        "turns": List({"instruction": Value("string"), "answer": Value("string")}),
        "source": Value("string"),
        "skip": {
            "kind": Value("string"),
            "location": Value("string"),
            "key": Value("string"),
            "reason": Value("string"),
        },
    }
)


def image_instruction(text: str) -> str:
    """The original's stage-4 image instruction, ``<Img><ImageHere></Img> {text} `` (trailing space included)."""
    return f"{IMAGE_PROMPT} {text} "


def make_sample(image_bytes: bytes | None, turns, source: str) -> dict:
    """A sample in the uniform schema; ``turns`` is a sequence of ``(instruction, answer)`` pairs."""
    return {
        "image": None if image_bytes is None else {"bytes": image_bytes, "path": None},
        "turns": [{"instruction": q, "answer": a} for q, a in turns],
        "source": source,
        "skip": None,
    }


def skipped_record(source: str, kind: str, location: str, key: str, reason: str) -> dict:
    """The row of a record that gives no sample (``kind`` is ``"bad"`` or ``"dropped"``)."""
    return {
        "image": None,
        "turns": [],
        "source": source,
        "skip": {"kind": kind, "location": location, "key": key, "reason": reason},
    }

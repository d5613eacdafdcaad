"""Readers for each benchmark's released annotation files; images stay paths until a batch needs them.

Every benchmark lives in its own folder under the data directory with its images in `images/` (Hateful Memes
keeps its released `img/` folder, since its records name `img/...`). Where releases differ in format (GQA's
official dict or the LAVIS list, IconQA's `problems.json` or `choose_text_val.json`) both are read.
"""

import json
from pathlib import Path

from .prompts import HATEFUL_MEMES_QUESTION, REFER_QUESTION, VIZWIZ_QUESTION, VQA_QUESTION, VSR_QUESTION
from .refer import load_instances, load_refs
from .samples import Sample


def find_file(folder: Path, names: list[str]) -> Path:
    """The first of `names` present in `folder`; the error lists them all."""
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"None of {', '.join(names)} found in {folder}.")


def first_existing(paths: list[Path]) -> Path:
    """The first path that exists, else the first one (whose loading then names the missing file)."""
    return next((path for path in paths if path.exists()), paths[0])


def read_json(path: Path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_gqa(folder: Path, split: str) -> list[Sample]:
    """`{split}_balanced_questions.json`: GQA's dict keyed by question id, or LAVIS's list of records."""
    data = read_json(find_file(folder, [f"{split}_balanced_questions.json"]))
    if isinstance(data, dict):
        records = [(qid, f"{q['imageId']}.jpg", q["question"], q["answer"]) for qid, q in data.items()]
    else:
        records = [
            (r.get("question_id", i), r["image"], r["question"], r["answer"]) for i, r in enumerate(data)
        ]
    return [
        Sample(str(qid), folder / "images" / image, VQA_QUESTION.format(question), answer)
        for qid, image, question, answer in records
    ]


def load_vsr(folder: Path, split: str) -> list[Sample]:
    """`{split}.jsonl` of cambridgeltl/vsr_zeroshot; COCO 2017 images in `images/`, `images/train2017` or `val2017`."""
    images = folder / "images"
    return [
        Sample(
            str(index),
            first_existing(
                [images / r["image"], images / "train2017" / r["image"], images / "val2017" / r["image"]]
            ),
            VSR_QUESTION.format(r["caption"]),
            int(r["label"]),
        )
        for index, r in enumerate(read_jsonl(find_file(folder, [f"{split}.jsonl"])))
    ]


def load_iconqa(folder: Path, split: str) -> list[Sample]:
    """choose_txt problems: `problems.json` (keyed by id, filtered on type and split) or `choose_text_{split}.json`;
    image `images/{id}/image.png`."""
    data = read_json(find_file(folder, [f"choose_text_{split}.json", "problems.json"]))
    items = data.items() if isinstance(data, dict) else ((r["image_id"], r) for r in data)
    return [
        Sample(
            str(pid),
            folder / "images" / str(problem.get("image_id", pid)) / "image.png",
            VQA_QUESTION.format(problem["question"]),
            int(problem["answer"]),
            tuple(problem["choices"]),
        )
        for pid, problem in items
        if problem.get("ques_type", "choose_txt") == "choose_txt" and problem.get("split", split) == split
    ]


def load_vizwiz(folder: Path, split: str) -> list[Sample]:
    """`{split}.json` of VizWiz VQA; the image name is the question id."""
    return [
        Sample(
            r["image"],
            folder / "images" / r["image"],
            VIZWIZ_QUESTION.format(r["question"]),
            [answer["answer"] for answer in r["answers"]],
        )
        for r in read_json(find_file(folder, [f"{split}.json"]))
    ]


def load_hateful_memes(folder: Path, split: str) -> list[Sample]:
    """`{split}.jsonl` (or `{split}_seen.jsonl`) of Hateful Memes; `img` is relative to the folder."""
    return [
        Sample(str(r["id"]), folder / r["img"], HATEFUL_MEMES_QUESTION.format(r["text"]), int(r["label"]))
        for r in read_jsonl(find_file(folder, [f"{split}.jsonl", f"{split}_seen.jsonl"]))
    ]


def load_okvqa(folder: Path, split: str) -> list[Sample]:
    """Questions from a LAVIS-format file (or, failing that, the VQA-tools question file); references, the ten
    answers, from the VQA-tools annotation file; images `images/COCO_val2014_{id:012d}.jpg` unless named."""
    annotations = read_json(
        find_file(folder, ["mscoco_val2014_annotations.json", "mscoco_val2014_annotations_clean.json"])
    )
    answers = {
        a["question_id"]: [answer["answer"] for answer in a["answers"]] for a in annotations["annotations"]
    }
    try:
        questions = read_json(find_file(folder, ["okvqa_test_split.json", f"okvqa_{split}_eval.json"]))
    except FileNotFoundError:
        question_file = [
            "OpenEnded_mscoco_val2014_questions.json",
            "OpenEnded_mscoco_val2014_questions_clean.json",
        ]
        questions = read_json(find_file(folder, question_file))["questions"]
    images = folder / "images"
    return [
        Sample(
            str(q["question_id"]),
            images / q["image"]
            if "image" in q
            else first_existing(
                [images / f"COCO_val2014_{q['image_id']:012d}.jpg", images / f"{q['image_id']:012d}.jpg"]
            ),
            VQA_QUESTION.format(q["question"]),
            answers[q["question_id"]],
        )
        for q in questions
    ]


def refcoco_loader(refs_file: str):
    """A loader for one RefCOCO family member: one sample per referring sentence of the split."""

    def load(folder: Path, split: str) -> list[Sample]:
        images, annotations = load_instances(find_file(folder, ["instances.json"]))
        samples = []
        for ref in load_refs(find_file(folder, [refs_file])):
            if ref["split"] != split:
                continue
            image = images[ref["image_id"]]
            reference = {
                "bbox": annotations[ref["ann_id"]]["bbox"],
                "width": image["width"],
                "height": image["height"],
            }
            samples.extend(
                Sample(
                    f"{ref['ref_id']}_{sentence['sent_id']}",
                    folder / "images" / image["file_name"],
                    REFER_QUESTION.format(sentence["sent"]),
                    reference,
                )
                for sentence in ref["sentences"]
            )
        return samples

    return load

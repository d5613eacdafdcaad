"""Readers for each benchmark's files as released; images stay paths until a batch needs them.

Each benchmark has its own folder under the data directory holding what its archives unpack to: GQA's question
file and `images/`, VSR's `test.jsonl`, IconQA's `iconqa_data/`, VizWiz's `Annotations/` and `val/`, Hateful
Memes' `dev.jsonl` and `img/`, OK-VQA's question and annotation files, RefCOCO's refs pickle and
`instances.json`. COCO's image folders (`train2014/`, `val2014/`, `train2017/`, `val2017/`) sit in the benchmark's
folder or directly in the data directory, shared by every benchmark that uses them. The renamed layout of earlier
versions (one `images/` folder per benchmark) is still read. Where releases differ in format (GQA's official dict
or the LAVIS list, IconQA's `problems.json` or `choose_text_{split}.json`) both are read.
"""

import json
from pathlib import Path

from .prompts import HATEFUL_MEMES_QUESTION, REFER_QUESTION, VIZWIZ_QUESTION, VQA_QUESTION, VSR_QUESTION
from .refer import load_instances, load_refs
from .samples import Sample


def find_file(candidates: list[Path]) -> Path:
    """The first of `candidates` that is a file; the error lists them all."""
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"None of {', '.join(map(str, candidates))} found.")


def first_existing(paths: list[Path]) -> Path:
    """The first path that exists, else the first one (the released layout's, which a missing-file error names)."""
    return next((path for path in paths if path.exists()), paths[0])


def coco_image(folder: Path, subsets: tuple[str, ...], name: str) -> Path:
    """A COCO image in one of `subsets` (`val2014`, ...) of the benchmark folder or of the data directory, or in
    the renamed layout's `images/` (flat or split by subset)."""
    released = [base / subset / name for base in (folder, folder.parent) for subset in subsets]
    renamed = [folder / "images" / name] + [folder / "images" / subset / name for subset in subsets]
    return first_existing(released + renamed)


def read_json(path: Path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_gqa(folder: Path, split: str) -> list[Sample]:
    """`{split}_balanced_questions.json`: GQA's dict keyed by question id, or LAVIS's list of records."""
    data = read_json(find_file([folder / f"{split}_balanced_questions.json"]))
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
    """`{split}.jsonl` of cambridgeltl/vsr_zeroshot; the image is in COCO 2017's `train2017/` or `val2017/`."""
    return [
        Sample(
            str(index),
            coco_image(folder, ("train2017", "val2017"), r["image"]),
            VSR_QUESTION.format(r["caption"]),
            int(r["label"]),
        )
        for index, r in enumerate(read_jsonl(find_file([folder / f"{split}.jsonl"])))
    ]


def load_iconqa(folder: Path, split: str) -> list[Sample]:
    """choose_txt problems of the release (`iconqa_data/problems.json`, the split's ids from `pid_splits.json`,
    image `iconqa_data/iconqa/{split}/choose_txt/{id}/image.png`), or of `choose_text_{split}.json` (a list)."""
    root = folder / "iconqa_data" if (folder / "iconqa_data").is_dir() else folder
    annotations = find_file([root / "problems.json", folder / f"choose_text_{split}.json"])
    data = read_json(annotations)
    if isinstance(data, list):
        items = [(r["image_id"], r) for r in data]
    elif (root / "pid_splits.json").is_file():
        items = [(pid, data[pid]) for pid in read_json(root / "pid_splits.json")[f"choose_txt_{split}"]]
    else:
        items = [
            (pid, problem)
            for pid, problem in data.items()
            if problem.get("ques_type") == "choose_txt" and problem.get("split", split) == split
        ]
    return [
        Sample(
            str(pid),
            first_existing(
                [
                    root / "iconqa" / split / "choose_txt" / str(pid) / "image.png",
                    folder / "images" / str(pid) / "image.png",
                ]
            ),
            VQA_QUESTION.format(problem["question"]),
            int(problem["answer"]),
            tuple(problem["choices"]),
        )
        for pid, problem in items
    ]


def load_vizwiz(folder: Path, split: str) -> list[Sample]:
    """`Annotations/{split}.json` of VizWiz VQA and its images in `{split}/`; the image name is the question id."""
    annotations = find_file([folder / "Annotations" / f"{split}.json", folder / f"{split}.json"])
    return [
        Sample(
            r["image"],
            first_existing([folder / split / r["image"], folder / "images" / r["image"]]),
            VIZWIZ_QUESTION.format(r["question"]),
            [answer["answer"] for answer in r["answers"]],
        )
        for r in read_json(annotations)
    ]


def load_hateful_memes(folder: Path, split: str) -> list[Sample]:
    """`{split}.jsonl` (or `{split}_seen.jsonl`) of Hateful Memes; `img` is relative to the folder."""
    return [
        Sample(str(r["id"]), folder / r["img"], HATEFUL_MEMES_QUESTION.format(r["text"]), int(r["label"]))
        for r in read_jsonl(find_file([folder / f"{split}.jsonl", folder / f"{split}_seen.jsonl"]))
    ]


def load_okvqa(folder: Path, split: str) -> list[Sample]:
    """Questions from MiniGPT-v2's split file or the released VQA-tools question file; references, the ten
    answers, from the released annotation file; images in COCO's `val2014/` unless a record names its own."""
    annotations = read_json(
        find_file(
            [folder / "mscoco_val2014_annotations.json", folder / "mscoco_val2014_annotations_clean.json"]
        )
    )
    answers = {
        a["question_id"]: [answer["answer"] for answer in a["answers"]] for a in annotations["annotations"]
    }
    split_files = [folder / "okvqa_test_split.json", folder / f"okvqa_{split}_eval.json"]
    if any(path.is_file() for path in split_files):
        questions = read_json(find_file(split_files))
    else:
        question_files = [
            folder / "OpenEnded_mscoco_val2014_questions.json",
            folder / "OpenEnded_mscoco_val2014_questions_clean.json",
        ]
        questions = read_json(find_file(question_files))["questions"]
    return [
        Sample(
            str(q["question_id"]),
            _okvqa_image(folder, q),
            VQA_QUESTION.format(q["question"]),
            answers[q["question_id"]],
        )
        for q in questions
    ]


def _okvqa_image(folder: Path, question: dict) -> Path:
    if "image" in question:  # LAVIS names the file, e.g. `val2014/COCO_val2014_000000297147.jpg`
        name = question["image"]
        return first_existing([folder / name, folder.parent / name, folder / "images" / Path(name).name])
    image_id = question["image_id"]
    released = coco_image(folder, ("val2014",), f"COCO_val2014_{image_id:012d}.jpg")
    return first_existing([released, folder / "images" / f"{image_id:012d}.jpg"])


def refcoco_loader(refs_file: str):
    """A loader for one RefCOCO family member: one sample per referring sentence of the split; images in COCO's
    `train2014/`."""

    def load(folder: Path, split: str) -> list[Sample]:
        images, annotations = load_instances(find_file([folder / "instances.json"]))
        samples = []
        for ref in load_refs(find_file([folder / refs_file])):
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
                    coco_image(folder, ("train2014",), image["file_name"]),
                    REFER_QUESTION.format(sentence["sent"]),
                    reference,
                )
                for sentence in ref["sentences"]
            )
        return samples

    return load

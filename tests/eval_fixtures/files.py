"""Writers for a data directory holding every benchmark as its archives unpack (a few records each), and for the
renamed layout earlier versions wanted (one `images/` folder per benchmark), which is still read."""

import json
import pickle
from pathlib import Path

from PIL import Image

EXIF_ORIENTATION = 0x0112


def write_image(path: Path, size=(40, 30), color=(200, 30, 30), orientation: int | None = None) -> Path:
    """A two-tone image (left half `color`, right half its inverse), so that turning it changes its pixels;
    `orientation` stores an EXIF orientation tag, as phone cameras do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, color)
    image.paste(tuple(255 - c for c in color), (size[0] // 2, 0, size[0], size[1]))
    if orientation is None:
        image.save(path)
    else:
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = orientation
        image.save(path, exif=exif)
    return path


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_jsonl(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def write_gqa(root: Path, extra_questions: int = 0) -> None:
    """GQA's question file (a dict keyed by question id, `imageId` without extension) and `images/`;
    `extra_questions` more questions about the first image make a longer run."""
    folder = root / "gqa"
    questions = {
        "201307251": {"imageId": "n15740", "question": "What color is the cat?", "answer": "black",
                      "fullAnswer": "The cat is black.", "isBalanced": True},
        "20515152": {"imageId": "n20843", "question": "Is the table wooden?", "answer": "yes",
                     "fullAnswer": "Yes, the table is wooden.", "isBalanced": True},
        "20515153": {"imageId": "n15740", "question": "Which animal is on the sofa, a cat or a dog?",
                     "answer": "cat", "fullAnswer": "The animal is a cat.", "isBalanced": True},
    }  # fmt: skip
    for index in range(extra_questions):
        questions[f"3000{index:03d}"] = {
            "imageId": "n15740", "question": f"How many legs does animal {index} have?", "answer": "four",
            "fullAnswer": "It has four legs.", "isBalanced": True,
        }  # fmt: skip
    write_json(folder / "testdev_balanced_questions.json", questions)
    write_image(folder / "images" / "n15740.jpg", (48, 32), (20, 20, 20))
    write_image(folder / "images" / "n20843.jpg", (30, 50), (150, 100, 50))


VSR_IMAGES = {
    "000000085637.jpg": ("train2017", (64, 48), (0, 90, 200)),
    "000000001234.jpg": ("val2017", (36, 36), (90, 200, 0)),
}


def write_vsr(root: Path, renamed: bool = False) -> None:
    """cambridgeltl/vsr_zeroshot `test.jsonl`; images in COCO 2017's `train2017/` and `val2017/`."""
    folder = root / "vsr"
    record = {"image_link": "", "relation": "under", "annotator_id": 1, "vote_true_validator_id": [],
              "vote_false_validator_id": []}  # fmt: skip
    write_jsonl(folder / "test.jsonl", [
        {**record, "image": "000000085637.jpg", "caption": "The umbrella is under the bed.", "label": 0},
        {**record, "image": "000000001234.jpg", "caption": "The cat is on the mat.", "label": 1},
    ])  # fmt: skip
    for name, (subset, size, color) in VSR_IMAGES.items():
        write_image((folder / "images" if renamed else folder) / subset / name, size, color)


ICONQA_PROBLEMS = {
    "1001": {"question": "Which shape is shown?", "choices": ["circle", "square", "triangle"], "answer": 1,
             "ques_type": "choose_txt", "grade": "grade1", "label": "shape", "split": "val"},
    "1002": {"question": "What time is it?", "choices": ["3:00", "9:00"], "answer": 0,
             "ques_type": "choose_txt", "grade": "grade2", "label": "time", "split": "val"},
    "1003": {"question": "Which picture shows a dog?", "choices": ["image_0.png", "image_1.png"], "answer": 0,
             "ques_type": "choose_img", "grade": "grade1", "label": "animal", "split": "val"},
    "1004": {"question": "How many dots?", "choices": ["2", "4"], "answer": 1,
             "ques_type": "choose_txt", "grade": "grade1", "label": "count", "split": "train"},
}  # fmt: skip
ICONQA_IMAGES = {"1001": (10, 10, 250), "1002": (250, 250, 10)}


def write_iconqa(root: Path) -> None:
    """`iconqa_data.zip` unpacked: `problems.json` keyed by problem id (other types and splits to leave out),
    `pid_splits.json`, and `iconqa/<split>/<type>/<id>/image.png`."""
    data = root / "iconqa" / "iconqa_data"
    write_json(data / "problems.json", ICONQA_PROBLEMS)
    write_json(data / "pid_splits.json", {
        "choose_txt_val": ["1001", "1002"], "choose_img_val": ["1003"], "choose_txt_train": ["1004"],
    })  # fmt: skip
    for pid, color in ICONQA_IMAGES.items():
        write_image(data / "iconqa" / "val" / "choose_txt" / pid / "image.png", (40, 40), color)


def vizwiz_records() -> list[dict]:
    """VizWiz VQA annotations: ten annotator answers with confidences."""

    def answers(*texts):
        return [{"answer_confidence": "yes", "answer": text} for text in texts]

    return [
        {"image": "VizWiz_val_00000000.jpg", "question": "What is this?",
         "answers": answers(*["coca cola"] * 3, *["coke"] * 7), "answer_type": "other", "answerable": 1},
        {"image": "VizWiz_val_00000001.jpg", "question": "Can you tell me what this is?",
         "answers": answers(*["unanswerable"] * 10), "answer_type": "unanswerable", "answerable": 0},
    ]  # fmt: skip


def write_vizwiz(root: Path, renamed: bool = False) -> None:
    """`Annotations.zip` and `val.zip` unpacked: `Annotations/val.json` and `val/`. The first photo carries an
    EXIF orientation (turn 90 degrees), as phone photos do."""
    folder = root / "vizwiz"
    write_json(folder / ("val.json" if renamed else "Annotations/val.json"), vizwiz_records())
    images = folder / ("images" if renamed else "val")
    write_image(images / "VizWiz_val_00000000.jpg", (60, 40), (255, 0, 0), orientation=6)
    write_image(images / "VizWiz_val_00000001.jpg", (40, 60), (0, 0, 0))


def write_hateful_memes(root: Path) -> None:
    """Hateful Memes `dev.jsonl`: `img` is relative to the dataset folder."""
    folder = root / "hm"
    write_jsonl(folder / "dev.jsonl", [
        {"id": 8291, "img": "img/08291.png", "label": 1, "text": "white people is this a shooting range"},
        {"id": 46971, "img": "img/46971.png", "label": 0, "text": "look at this sandwich maker"},
    ])  # fmt: skip
    write_image(folder / "img" / "08291.png", (50, 50), (120, 120, 120))
    write_image(folder / "img" / "46971.png", (52, 40), (10, 120, 60))


OKVQA_QUESTIONS = [
    {"image_id": 297147, "question": "What sport can you use this for?", "question_id": 2971475},
    {"image_id": 393225, "question": "How many legs does it have?", "question_id": 3932255},
]


def write_okvqa(root: Path, renamed: bool = False) -> None:
    """OK-VQA's VQA-tools question and annotation files, and COCO's `val2014/` (renamed: MiniGPT-v2's split file
    and `images/`)."""
    folder = root / "okvqa"
    if renamed:
        write_json(folder / "okvqa_test_split.json", OKVQA_QUESTIONS)
    else:
        write_json(
            folder / "OpenEnded_mscoco_val2014_questions.json", {"questions": OKVQA_QUESTIONS, "license": {}}
        )

    def answers(*texts):
        return [
            {"answer_id": i + 1, "raw_answer": t, "answer_confidence": "yes", "answer": t}
            for i, t in enumerate(texts)
        ]

    write_json(folder / "mscoco_val2014_annotations.json", {"annotations": [
        {"image_id": 297147, "question_id": 2971475, "question_type": "one", "answer_type": "other",
         "answers": answers(*["race"] * 5, *["motocross"] * 5)},
        {"image_id": 393225, "question_id": 3932255, "question_type": "one", "answer_type": "other",
         "answers": answers(*["four"] * 4, *["4"] * 6)},
    ]})  # fmt: skip
    images = folder / ("images" if renamed else "val2014")
    write_image(images / "COCO_val2014_000000297147.jpg", (64, 40), (200, 200, 0))
    write_image(images / "COCO_val2014_000000393225.jpg", (40, 64), (0, 200, 200))


def refs_records() -> list[dict]:
    """Two refs of the REFER format: one in val with two sentences, one in testA."""
    return [
        {"sent_ids": [0, 1], "file_name": "COCO_train2014_000000000009_1.jpg", "ann_id": 101, "ref_id": 7,
         "image_id": 9, "split": "val", "category_id": 1,
         "sentences": [{"tokens": ["man", "on", "left"], "raw": "Man on left.", "sent_id": 0, "sent": "man on left"},
                       {"tokens": ["guy", "in", "red"], "raw": "guy in red", "sent_id": 1, "sent": "guy in red"}]},
        {"sent_ids": [2], "file_name": "COCO_train2014_000000000009_2.jpg", "ann_id": 102, "ref_id": 8,
         "image_id": 9, "split": "testA", "category_id": 1,
         "sentences": [{"tokens": ["right", "woman"], "raw": "right woman", "sent_id": 2, "sent": "right woman"}]},
    ]  # fmt: skip


COCO_TRAIN_IMAGE = "COCO_train2014_000000000009.jpg"


def write_refcoco(
    root: Path, name: str = "refcoco", refs_file: str = "refs(unc).p", images: str = "shared"
) -> None:
    """REFER's archive unpacked (the refs pickle, protocol 2, and COCO-style `instances.json`); the COCO image in
    `train2014/` directly under `root` ("shared", by the RefCOCO family), in the benchmark folder ("own"), or
    in the renamed layout's `images/` ("renamed")."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / refs_file).write_bytes(pickle.dumps(refs_records(), protocol=2))
    write_json(folder / "instances.json", {
        "images": [{"id": 9, "file_name": COCO_TRAIN_IMAGE, "width": 200, "height": 100}],
        "annotations": [{"id": 101, "image_id": 9, "bbox": [10.0, 20.0, 40.0, 30.0], "category_id": 1},
                        {"id": 102, "image_id": 9, "bbox": [120.0, 10.0, 60.0, 80.0], "category_id": 1}],
        "categories": [{"id": 1, "name": "person"}],
    })  # fmt: skip
    image_folder = {"shared": root / "train2014", "own": folder / "train2014", "renamed": folder / "images"}[
        images
    ]
    write_image(image_folder / COCO_TRAIN_IMAGE, (200, 100), (80, 80, 160))


def write_all(root: Path) -> Path:
    """Every benchmark as released."""
    for writer in (
        write_gqa,
        write_vsr,
        write_iconqa,
        write_vizwiz,
        write_hateful_memes,
        write_okvqa,
        write_refcoco,
    ):
        writer(root)
    return root


def write_renamed(root: Path) -> Path:
    """The layout earlier versions wanted, for the benchmarks whose release differs from it."""
    write_vsr(root, renamed=True)
    folder = root / "iconqa"
    write_json(folder / "choose_text_val.json", [
        {"image_id": pid, **{k: ICONQA_PROBLEMS[pid][k] for k in ("question", "choices", "answer")}}
        for pid in ICONQA_IMAGES
    ])  # fmt: skip
    for pid, color in ICONQA_IMAGES.items():
        write_image(folder / "images" / pid / "image.png", (40, 40), color)
    write_vizwiz(root, renamed=True)
    write_okvqa(root, renamed=True)
    write_refcoco(root, images="renamed")
    return root

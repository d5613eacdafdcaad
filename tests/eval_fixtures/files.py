"""Writers for a data directory holding every benchmark in its released format (a few records each)."""

import json
import pickle
from pathlib import Path

from PIL import Image


def write_image(path: Path, size=(40, 30), color=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_jsonl(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def write_gqa(root: Path) -> None:
    """GQA's official layout: a dict keyed by question id, `imageId` without extension."""
    folder = root / "gqa"
    write_json(folder / "testdev_balanced_questions.json", {
        "201307251": {"imageId": "n15740", "question": "What color is the cat?", "answer": "black",
                      "fullAnswer": "The cat is black.", "isBalanced": True},
        "20515152": {"imageId": "n20843", "question": "Is the table wooden?", "answer": "yes",
                     "fullAnswer": "Yes, the table is wooden.", "isBalanced": True},
        "20515153": {"imageId": "n15740", "question": "Which animal is on the sofa, a cat or a dog?",
                     "answer": "cat", "fullAnswer": "The animal is a cat.", "isBalanced": True},
    })  # fmt: skip
    write_image(folder / "images" / "n15740.jpg", (48, 32), (20, 20, 20))
    write_image(folder / "images" / "n20843.jpg", (30, 50), (150, 100, 50))


def write_vsr(root: Path) -> None:
    """cambridgeltl/vsr_zeroshot `test.jsonl`; images split between COCO's train2017 and val2017 folders."""
    folder = root / "vsr"
    record = {"image_link": "", "relation": "under", "annotator_id": 1, "vote_true_validator_id": [],
              "vote_false_validator_id": []}  # fmt: skip
    write_jsonl(folder / "test.jsonl", [
        {**record, "image": "000000085637.jpg", "caption": "The umbrella is under the bed.", "label": 0},
        {**record, "image": "000000001234.jpg", "caption": "The cat is on the mat.", "label": 1},
    ])  # fmt: skip
    write_image(folder / "images" / "train2017" / "000000085637.jpg", (64, 48), (0, 90, 200))
    write_image(folder / "images" / "val2017" / "000000001234.jpg", (36, 36), (90, 200, 0))


def write_iconqa(root: Path) -> None:
    """IconQA's `problems.json` keyed by problem id, with other types and splits to filter out."""
    folder = root / "iconqa"
    write_json(folder / "problems.json", {
        "1001": {"question": "Which shape is shown?", "choices": ["circle", "square", "triangle"], "answer": 1,
                 "ques_type": "choose_txt", "grade": "grade1", "label": "shape", "split": "val"},
        "1002": {"question": "What time is it?", "choices": ["3:00", "9:00"], "answer": 0,
                 "ques_type": "choose_txt", "grade": "grade2", "label": "time", "split": "val"},
        "1003": {"question": "Which picture shows a dog?", "choices": ["image_0.png", "image_1.png"], "answer": 0,
                 "ques_type": "choose_img", "grade": "grade1", "label": "animal", "split": "val"},
        "1004": {"question": "How many dots?", "choices": ["2", "4"], "answer": 1,
                 "ques_type": "choose_txt", "grade": "grade1", "label": "count", "split": "train"},
    })  # fmt: skip
    for pid, color in (("1001", (10, 10, 250)), ("1002", (250, 250, 10))):
        write_image(folder / "images" / pid / "image.png", (40, 40), color)


def write_vizwiz(root: Path) -> None:
    """VizWiz `val.json`: ten annotator answers with confidences."""
    folder = root / "vizwiz"

    def answers(*texts):
        return [{"answer_confidence": "yes", "answer": text} for text in texts]

    write_json(folder / "val.json", [
        {"image": "VizWiz_val_00000000.jpg", "question": "What is this?",
         "answers": answers(*["coca cola"] * 3, *["coke"] * 7), "answer_type": "other", "answerable": 1},
        {"image": "VizWiz_val_00000001.jpg", "question": "Can you tell me what this is?",
         "answers": answers(*["unanswerable"] * 10), "answer_type": "unanswerable", "answerable": 0},
    ])  # fmt: skip
    write_image(folder / "images" / "VizWiz_val_00000000.jpg", (60, 40), (255, 0, 0))
    write_image(folder / "images" / "VizWiz_val_00000001.jpg", (40, 60), (0, 0, 0))


def write_hateful_memes(root: Path) -> None:
    """Hateful Memes `dev.jsonl`: `img` is relative to the dataset folder."""
    folder = root / "hm"
    write_jsonl(folder / "dev.jsonl", [
        {"id": 8291, "img": "img/08291.png", "label": 1, "text": "white people is this a shooting range"},
        {"id": 46971, "img": "img/46971.png", "label": 0, "text": "look at this sandwich maker"},
    ])  # fmt: skip
    write_image(folder / "img" / "08291.png", (50, 50), (120, 120, 120))
    write_image(folder / "img" / "46971.png", (52, 40), (10, 120, 60))


def write_okvqa(root: Path) -> None:
    """OK-VQA: the question split file (image ids) and the VQA-tools question and annotation files."""
    folder = root / "okvqa"
    questions = [
        {"image_id": 297147, "question": "What sport can you use this for?", "question_id": 2971475},
        {"image_id": 393225, "question": "How many legs does it have?", "question_id": 3932255},
    ]
    write_json(folder / "okvqa_test_split.json", questions)
    write_json(folder / "OpenEnded_mscoco_val2014_questions.json", {"questions": questions, "license": {}})

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
    write_image(folder / "images" / "COCO_val2014_000000297147.jpg", (64, 40), (200, 200, 0))
    write_image(folder / "images" / "COCO_val2014_000000393225.jpg", (40, 64), (0, 200, 200))


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


def write_refcoco(root: Path, name: str = "refcoco", refs_file: str = "refs(unc).p") -> None:
    """REFER's pickle of refs (protocol 2, as released) and COCO-style `instances.json`."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / refs_file).write_bytes(pickle.dumps(refs_records(), protocol=2))
    write_json(folder / "instances.json", {
        "images": [{"id": 9, "file_name": "COCO_train2014_000000000009.jpg", "width": 200, "height": 100}],
        "annotations": [{"id": 101, "image_id": 9, "bbox": [10.0, 20.0, 40.0, 30.0], "category_id": 1},
                        {"id": 102, "image_id": 9, "bbox": [120.0, 10.0, 60.0, 80.0], "category_id": 1}],
        "categories": [{"id": 1, "name": "person"}],
    })  # fmt: skip
    write_image(folder / "images" / "COCO_train2014_000000000009.jpg", (200, 100), (80, 80, 160))


def write_all(root: Path) -> Path:
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

"""The demo's synthetic world written in the original's real on-disk formats, so the demo runs the very readers
users run on LAION, cc_sbu_align, COCO-VQA, RefCOCO, Flickr30k and GQA.

Same seed, same bytes: scenes come from seeded RNGs, JPEG encoding is deterministic, tar headers carry fixed
metadata and JSON is written with a fixed key order.
"""

import io
import json
import os
import pickle
import random
import tarfile

from ..grounding import corners_to_text, phrase_with_boxes
from .scenes import (
    QUESTION_TYPES,
    caption,
    corners,
    description,
    grounded_caption,
    make_scene,
    questions,
    referring_sentences,
    render,
)

DETAIL_QUESTION = "<image>\nDescribe the image in detail."


def write_synthetic_world(
    root, seed: int = 0, n_train: int = 2000, n_eval: int = 200, image_size: int = 224, num_shards: int = 4
) -> dict:
    """Write train data for all four stages and held-out evaluation sets under ``root``; return their paths.

    Train scenes have image ids ``1..n_train``, held-out scenes ``n_train+1..n_train+n_eval``; held-out scenes
    appear only in the GQA testdev file and in the RefCOCO ``val`` split. ``root`` doubles as a `tinygptv eval`
    data folder: ``gqa/`` (testdev) and ``refcoco/`` (split ``val``) are laid out as the real benchmarks.
    """
    root = os.fspath(root)
    train_rng, eval_rng = random.Random(f"{seed}/train"), random.Random(f"{seed}/eval")
    train = [make_scene(train_rng, i, image_size) for i in range(1, n_train + 1)]
    held_out = [make_scene(eval_rng, i, image_size) for i in range(n_train + 1, n_train + n_eval + 1)]
    images = {scene.image_id: render(scene) for scene in (*train, *held_out)}
    paths = {"root": root}
    paths.update(_write_webdataset(os.path.join(root, "webdataset"), train, images, num_shards))
    paths.update(_write_cc_sbu_align(os.path.join(root, "cc_sbu_align"), train, images))
    paths.update(
        _write_coco(os.path.join(root, "coco"), train, held_out, images, random.Random(f"{seed}/qa"))
    )
    paths.update(_write_refer(os.path.join(root, "refcoco"), train, held_out, paths["coco_images"]))
    paths.update(_write_flickr(os.path.join(root, "flickr30k"), train, images))
    paths.update(_write_gqa(os.path.join(root, "gqa"), held_out, images, random.Random(f"{seed}/gqa")))
    paths.update(_write_caption_eval(os.path.join(root, "gqa"), held_out))
    return paths


def _dump(path: str, data) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=None, separators=(",", ":"))
    return path


def _save_images(folder: str, names_and_bytes) -> str:
    os.makedirs(folder, exist_ok=True)
    for name, data in names_and_bytes:
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    return folder


def _coco_name(image_id: int) -> str:
    return f"COCO_train2014_{image_id:012d}.jpg"


def _write_webdataset(folder, scenes, images, num_shards):
    """img2dataset-style shards: ``{key}.jpg`` + ``{key}.json`` with ``caption``."""
    os.makedirs(folder, exist_ok=True)
    for shard in range(num_shards):
        with tarfile.open(os.path.join(folder, f"{shard:05d}.tar"), "w", format=tarfile.USTAR_FORMAT) as tar:
            for scene in scenes[shard::num_shards]:
                key = f"{shard:05d}{scene.image_id:04d}"
                meta = {"caption": caption(scene), "key": key, "status": "success"}
                for extension, data in (("jpg", images[scene.image_id]), ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"{key}.{extension}")
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    tar.addfile(info, io.BytesIO(data))
    return {"webdataset": os.path.join(folder, f"{{00000..{num_shards - 1:05d}}}.tar")}


def _write_cc_sbu_align(folder, scenes, images):
    _save_images(os.path.join(folder, "image"), ((f"{s.image_id}.jpg", images[s.image_id]) for s in scenes))
    annotations = [{"image_id": str(s.image_id), "caption": description(s)} for s in scenes]
    _dump(os.path.join(folder, "filter_cap.json"), {"annotations": annotations})
    return {"cc_sbu_align": folder}


def _write_coco(folder, train, held_out, images, rng):
    """COCO train2014 image names shared by COCO-VQA (LAVIS json), LLaVA detail json and RefCOCO (REFER)."""
    image_dir = _save_images(
        os.path.join(folder, "train2014"),
        ((_coco_name(s.image_id), images[s.image_id]) for s in (*train, *held_out)),
    )
    vqa = [
        {
            "image": f"train2014/{_coco_name(s.image_id)}",
            "question": q,
            "question_id": s.image_id * 10 + i,
            "answer": [a] * 10,
            "question_type": qtype,
        }
        for s in train
        for i, (qtype, q, a) in enumerate(questions(s, rng, every_lookup=True))
    ]
    detail = [
        {
            "id": f"{s.image_id:012d}",
            "image": f"{s.image_id:012d}.jpg",
            "conversations": [
                {"from": "human", "value": DETAIL_QUESTION},
                {"from": "gpt", "value": description(s)},
            ],
        }
        for s in train
    ]
    return {
        "coco_images": image_dir,
        "coco_vqa": _dump(os.path.join(folder, "vqa_train.json"), vqa),
        "llava_detail": _dump(os.path.join(folder, "llava", "detail_synthetic.json"), detail),
    }


def _write_refer(folder, train, held_out, image_dir):
    """REFER's ``refs(unc).p`` (protocol 2, plain containers only) and ``instances.json``, with ``images`` linking
    to the COCO images so the folder is also a RefCOCO benchmark folder for `tinygptv eval`."""
    refs, annotations, image_entries = [], [], []
    for split, scenes in (("train", train), ("val", held_out)):
        for scene in scenes:
            image_entries.append(
                {
                    "id": scene.image_id,
                    "file_name": _coco_name(scene.image_id),
                    "width": scene.size,
                    "height": scene.size,
                }
            )
            for shape in scene.shapes:
                ann_id = len(annotations) + 1
                x, y, w, h = shape.box
                annotations.append(
                    {
                        "id": ann_id,
                        "image_id": scene.image_id,
                        "bbox": [x, y, w, h],
                        "area": w * h,
                        "iscrowd": 0,
                        "category_id": 1,
                    }
                )
                sentences = [
                    {"raw": text, "sent": text, "sent_id": ann_id * 10 + i, "tokens": text.split()}
                    for i, text in enumerate(referring_sentences(shape, scene))
                ]
                refs.append(
                    {
                        "ref_id": ann_id,
                        "ann_id": ann_id,
                        "image_id": scene.image_id,
                        "split": split,
                        "file_name": _coco_name(scene.image_id),
                        "category_id": 1,
                        "sent_ids": [s["sent_id"] for s in sentences],
                        "sentences": sentences,
                    }
                )
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "refs(unc).p"), "wb") as f:
        pickle.dump(refs, f, protocol=2)
    categories = [{"id": 1, "name": "shape", "supercategory": "shape"}]
    _dump(
        os.path.join(folder, "instances.json"),
        {"images": image_entries, "annotations": annotations, "categories": categories},
    )
    link = os.path.join(folder, "images")
    if os.path.islink(link):  # a world rewritten in place
        os.remove(link)
    os.symlink(os.path.relpath(image_dir, folder), link)
    return {"refer_root": os.path.dirname(folder), "refcoco_eval_split": "val"}


def _write_flickr(folder, scenes, images):
    """MiniGPT-v2's filtered Flickr30k files: grounded captions, caption-to-boxes and phrase-to-box."""
    image_dir = _save_images(
        os.path.join(folder, "images"), ((f"{s.image_id}.jpg", images[s.image_id]) for s in scenes)
    )
    grounded = [{"image_id": str(s.image_id), "grounded_caption": grounded_caption(s)} for s in scenes]
    to_boxes = [
        {
            "image_id": str(s.image_id),
            "caption": caption(s),
            "output": " ".join(phrase_with_boxes(shape.name, [corners(shape, s)]) for shape in s.shapes),
        }
        for s in scenes
    ]
    phrases = [
        {"image_id": str(s.image_id), "phrase": shape.name, "bbox": corners_to_text([corners(shape, s)])}
        for s in scenes
        for shape in s.shapes
    ]
    return {
        "flickr_images": image_dir,
        "flickr_grounded_caption": _dump(os.path.join(folder, "groundedcaption.json"), grounded),
        "flickr_caption_to_phrase": _dump(os.path.join(folder, "captiontobbox.json"), to_boxes),
        "flickr_phrase_to_box": _dump(os.path.join(folder, "phrasetobbox.json"), phrases),
    }


def _write_gqa(folder, held_out, images, rng):
    """GQA testdev in LAVIS form plus GQA's ``types`` and ``fullAnswer``, for accuracy by question type."""
    image_dir = _save_images(
        os.path.join(folder, "images"), ((f"{s.image_id}.jpg", images[s.image_id]) for s in held_out)
    )
    testdev = [
        {
            "image": f"{s.image_id}.jpg",
            "question": q,
            "question_id": f"{s.image_id}{i}",
            "answer": a,
            "fullAnswer": a,
            "types": {"detailed": qtype, "semantic": qtype, "structural": _structural(qtype)},
        }
        for s in held_out
        for i, (qtype, q, a) in enumerate(questions(s, rng))
    ]
    return {
        "gqa_images": image_dir,
        "gqa_testdev": _dump(os.path.join(folder, "testdev_balanced_questions.json"), testdev),
        "question_types": list(QUESTION_TYPES),
    }


def _write_caption_eval(folder, held_out):
    """Reference captions of the held-out images (COCO-caption style records), for a caption score."""
    records = [
        {"image": f"{s.image_id}.jpg", "image_id": s.image_id, "caption": caption(s)} for s in held_out
    ]
    return {"caption_eval": _dump(os.path.join(folder, "captions_testdev.json"), records)}


def _structural(question_type: str) -> str:
    return "verify" if question_type == "exist" else "choose" if question_type == "position" else "query"

"""The demo's synthetic world: deterministic from its seed, learnable by construction, and readable by the very
readers used on real data."""

import hashlib
import os
import random
import re

import pytest

from tinygptv_hf import data
from tinygptv_hf.data import scenes
from tinygptv_hf.data.synthetic import write_synthetic_world


def tree_digest(root) -> dict:
    digests = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                digests[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return digests


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    return write_synthetic_world(root, seed=7, n_train=24, n_eval=6, image_size=96, num_shards=2)


def test_same_seed_same_bytes_and_another_seed_differs(world, tmp_path):
    reference = tree_digest(world["root"])
    again = write_synthetic_world(
        tmp_path / "again", seed=7, n_train=24, n_eval=6, image_size=96, num_shards=2
    )
    other = write_synthetic_world(
        tmp_path / "other", seed=8, n_train=24, n_eval=6, image_size=96, num_shards=2
    )
    in_place = write_synthetic_world(world["root"], seed=7, n_train=24, n_eval=6, image_size=96, num_shards=2)
    assert len(reference) > 50
    assert tree_digest(again["root"]) == reference == tree_digest(in_place["root"])
    assert tree_digest(other["root"]) != reference


def test_scenes_are_unambiguous_and_inside_the_image():
    rng = random.Random(0)
    for image_id in range(200):
        scene = scenes.make_scene(rng, image_id, 224)
        assert 1 <= len(scene.shapes) <= 3
        assert (
            len({s.colour for s in scene.shapes}) == len({s.kind for s in scene.shapes}) == len(scene.shapes)
        )
        cells = set()
        for shape in scene.shapes:
            x, y, w, h = shape.box
            assert 0 <= x and x + w <= 224 and 0 <= y and y + h <= 224 and w == h == 56
            assert x in (0, 84, 168) and y in (0, 84, 168)  # a cell of the 3x3 grid, on the 28-px patch lines
            cells.add((x, y))
        assert len(cells) == len(scene.shapes)
        for _, question, answer in scenes.questions(scene, rng):
            assert answer in scenes.VQA_ANSWERS, question


def test_training_questions_ask_every_lookup_the_scene_allows():
    rng = random.Random(1)
    for image_id in range(100):
        scene = scenes.make_scene(rng, image_id, 224)
        asked = scenes.questions(scene, rng, every_lookup=True)
        by_type = {kind: [(q, a) for t, q, a in asked if t == kind] for kind in scenes.QUESTION_TYPES}
        assert sorted(by_type["colour"]) == sorted(
            (f"What colour is the {s.kind}?", s.colour) for s in scene.shapes
        )
        assert sorted(by_type["shape"]) == sorted(
            (f"What shape is the {s.colour} object?", s.kind) for s in scene.shapes
        )
        names = {s.name for s in scene.shapes}
        assert [a for _, a in by_type["exist"]] == ["yes", "no"]
        assert [q.removeprefix("Is there a ").removesuffix("?") in names for q, _ in by_type["exist"]] == [
            True,
            False,
        ]
        assert len(by_type["count"]) == 1 and len(by_type["position"]) <= 1
        held_out = [
            t for t, _, _ in scenes.questions(scene, rng) if t != "position"
        ]  # a random pair's columns
        assert sorted(held_out) == ["colour", "count", "exist", "shape"]  # held-out sets: one of each type


def read_all(stream, health):
    samples = [row for row in stream if health.admit(row)]
    assert samples and health.total_bad == health.total_dropped == 0
    return samples


def test_every_training_format_reads_back_through_the_readers(world):
    health = data.DataHealth(max_bad_samples=0)
    captions = read_all(data.read_webdataset_captions(world["webdataset"]), health)
    assert len(captions) == 24 and all(s["turns"][0]["instruction"] == "" for s in captions)
    assert captions[0]["image"].size == (96, 96)
    align = read_all(data.read_cc_sbu_align(world["cc_sbu_align"]), health)
    assert all(s["turns"][0]["answer"].startswith("The image shows") for s in align)
    vqa = read_all(data.read_coco_vqa(world["coco_vqa"], world["coco_images"]), health)
    assert {s["turns"][0]["answer"] for s in vqa} <= set(scenes.VQA_ANSWERS)
    assert all("[vqa]" in s["turns"][0]["instruction"] for s in vqa)
    refer = read_all(data.read_refcoco(world["refer_root"], world["coco_images"]), health)
    assert all(re.fullmatch(r"\{<\d+><\d+><\d+><\d+>\}", s["turns"][0]["answer"]) for s in refer)
    read_all(data.read_refcoco(world["refer_root"], world["coco_images"], inverse=True), health)
    read_all(data.read_llava_instruct(world["llava_detail"], world["coco_images"]), health)
    for task in ("grounded_caption", "caption_to_phrase", "phrase_to_box"):
        stream = data.read_flickr(world[f"flickr_{task}"], world["flickr_images"], task=task)
        grounded = read_all(stream, health)
        assert all("<p>" in s["turns"][0]["answer"] for s in grounded)


def test_held_out_sets_use_only_held_out_images(world):
    health = data.DataHealth(max_bad_samples=0)
    testdev = read_all(data.read_gqa(world["gqa_testdev"], world["gqa_images"]), health)
    assert len(os.listdir(world["gqa_images"])) == 6 and len(testdev) >= 6 * 4
    refs = data.load_refer_pickle(os.path.join(world["refer_root"], "refcoco", "refs(unc).p"))
    train_ids = {r["image_id"] for r in refs if r["split"] == "train"}
    eval_ids = {r["image_id"] for r in refs if r["split"] == world["refcoco_eval_split"]}
    assert train_ids == set(range(1, 25)) and eval_ids == set(range(25, 31))
    held_out = read_all(data.read_refcoco(world["refer_root"], world["coco_images"], split="val"), health)
    assert len(held_out) == len([r for r in refs if r["split"] == "val"])


def test_captions_descriptions_and_grounded_captions_name_shapes_left_to_right():
    shapes = (
        scenes.Shape("red", "circle", (155, 6, 63, 63)),
        scenes.Shape("blue", "square", (6, 155, 63, 63)),
        scenes.Shape("green", "triangle", (80, 80, 63, 63)),
    )
    scene = scenes.Scene(image_id=1, size=224, background="grey", shapes=shapes)
    assert scenes.caption(scene) == (
        "a blue square in the bottom left, a green triangle in the centre and a red circle in the top right"
        " on a grey background"
    )
    description = scenes.description(scene)
    assert (
        description.index("blue square")
        < description.index("green triangle")
        < description.index("red circle")
    )
    grounded = scenes.grounded_caption(scene)
    assert grounded.index("blue square") < grounded.index("green triangle") < grounded.index("red circle")

"""Each reader on small data in its real on-disk format yields the expected uniform samples."""

import io
import json
import pickle
import tarfile

import datasets
import pytest
from PIL import Image

from tinygptv_hf import data
from tinygptv_hf.data import text

IMG = "<Img><ImageHere></Img>"


def jpeg(path=None, size=(40, 20), colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def dump(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def only(stream):
    samples = list(stream)
    assert len(samples) == 1, samples
    return samples[0]


def turns(sample):
    return [(t["instruction"], t["answer"]) for t in sample["turns"]]


def test_webdataset_captions_go_through_blip_caption_with_no_instruction(tmp_path):
    shard = tmp_path / "00000.tar"
    with tarfile.open(shard, "w") as tar:
        for name, payload in (
            ("k1.jpg", jpeg()),
            ("k1.json", json.dumps({"caption": "A Dog, running! (fast)."}).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    sample = only(data.read_webdataset_captions(str(tmp_path / "{00000..00000}.tar"), source="cc_sbu"))
    assert turns(sample) == [("", "a dog, running fast")]
    assert sample["source"] == "cc_sbu"
    assert sample["image"].size == (40, 20) and sample["image"].mode == "RGB"


def test_cc_sbu_align_keeps_the_raw_caption_and_draws_an_alignment_prompt(tmp_path):
    jpeg(tmp_path / "image" / "7.jpg")
    dump(tmp_path / "filter_cap.json", {"annotations": [{"image_id": "7", "caption": "A Dog. Running!"}]})
    ((instruction, answer),) = turns(only(data.read_cc_sbu_align(tmp_path)))
    assert answer == "A Dog. Running!"
    assert instruction in text.ALIGNMENT_PROMPTS


def test_llava_detail_processes_the_question_not_the_answer(tmp_path):
    jpeg(tmp_path / "img" / "COCO_train2014_000000000042.jpg")
    record = {
        "id": "000000000042",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat Is in the image? Describe it."},
            {"from": "gpt", "value": "A Red (big) ball."},
        ],
    }
    sample = only(data.read_llava_instruct(dump(tmp_path / "detail.json", [record]), tmp_path / "img"))
    assert turns(sample) == [(f"{IMG} what is in the image? describe it ", "A Red (big) ball.")]
    assert sample["source"] == "llava_detail"


def test_conversations_keep_every_turn_unprocessed(tmp_path):
    jpeg(tmp_path / "img" / "COCO_train2014_5.jpg")
    record = {
        "id": "5",
        "conversations": [
            {"from": "human", "value": "What is This?\n<image>"},
            {"from": "gpt", "value": "A Ball."},
            {"from": "human", "value": "Which Colour?"},
            {"from": "gpt", "value": "Red!"},
            {"from": "human", "value": "dangling"},
        ],
    }
    sample = only(
        data.read_conversations(
            dump(tmp_path / "conv.json", [record]), tmp_path / "img", source="multitask_conversation"
        )
    )
    assert turns(sample) == [(f"{IMG} What is This? ", "A Ball."), ("Which Colour? ", "Red!")]


def test_unnatural_instructions_are_image_free_and_processed(tmp_path):
    records = [
        {
            "instances": [
                {"instruction_with_input": "Sort: B, A.", "constraints": "Use (commas).", "output": "A, B."}
            ]
        },
        {"instances": [{"instruction_with_input": "Say Hi!", "constraints": None, "output": "Hi!"}]},
    ]
    samples = list(data.read_unnatural_instructions(dump(tmp_path / "u.json", records)))
    assert [turns(s) for s in samples] == [[("sort b, a use commas", "a, b")], [("say hi", "hi")]]
    assert all(s["image"] is None for s in samples)


@pytest.fixture
def refer_root(tmp_path):
    jpeg(tmp_path / "coco" / "COCO_train2014_000000000003.jpg", size=(200, 100))
    refs = [
        {"ref_id": 1, "ann_id": 11, "image_id": 3, "split": "train", "sentences": [{"raw": "The LEFT dog."}]},
        {"ref_id": 2, "ann_id": 11, "image_id": 3, "split": "val", "sentences": [{"raw": "val only"}]},
    ]
    (tmp_path / "refer" / "refcocog").mkdir(parents=True)
    with open(tmp_path / "refer" / "refcocog" / "refs(umd).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    dump(
        tmp_path / "refer" / "refcocog" / "instances.json",
        {"annotations": [{"id": 11, "bbox": [10, 20, 30, 40]}]},
    )
    return tmp_path


def test_refcoco_refer_answers_a_box_on_the_0_100_grid(refer_root):
    sample = only(data.read_refcoco(refer_root / "refer", refer_root / "coco", dataset="refcocog"))
    ((instruction, answer),) = turns(sample)
    assert answer == "{<5><20><20><60>}"
    assert instruction in {f"{IMG} {t.format('the left dog')} " for t in text.REFER_TEMPLATES}
    assert sample["source"] == "refcocog"


def test_inverse_refcoco_asks_with_the_box_and_answers_the_sentence(refer_root):
    sample = only(
        data.read_refcoco(refer_root / "refer", refer_root / "coco", dataset="refcocog", inverse=True)
    )
    ((instruction, answer),) = turns(sample)
    assert answer == "the left dog"
    assert instruction in {f"{IMG} {t.format('{<5><20><20><60>}')} " for t in text.IDENTIFY_TEMPLATES}
    assert sample["source"] == "invrefcocog"
    val = only(data.read_refcoco(refer_root / "refer", refer_root / "coco", dataset="refcocog", split="val"))
    assert "val only" in val["turns"][0]["instruction"]


def test_visual_genome_keeps_small_regions_and_finds_images_by_url(tmp_path):
    jpeg(tmp_path / "VG_100K" / "1.jpg", size=(200, 100))
    dump(tmp_path / "image_data.json", [{"image_id": 1, "url": "https://cs.stanford.edu/VG_100K/1.jpg"}])
    dump(
        tmp_path / "region_descriptions.json",
        [
            {
                "id": 1,
                "regions": [
                    {
                        "region_id": 5,
                        "image_id": 1,
                        "phrase": "A Cat.",
                        "x": 10,
                        "y": 20,
                        "width": 30,
                        "height": 40,
                    },
                    {
                        "region_id": 6,
                        "image_id": 1,
                        "phrase": "too big",
                        "x": 0,
                        "y": 0,
                        "width": 200,
                        "height": 100,
                    },
                ],
            }
        ],
    )
    ((instruction, answer),) = turns(only(data.read_visual_genome(tmp_path)))
    assert answer == "{<5><20><20><60>}"
    assert instruction in {f"{IMG} {t.format('a cat')} " for t in text.REFER_TEMPLATES}


def test_flickr_tasks_use_the_stored_text(tmp_path):
    jpeg(tmp_path / "img" / "9.jpg")
    grounded = dump(
        tmp_path / "g.json", [{"image_id": "9", "grounded_caption": "<p>A dog</p> {<1><2><3><4>}."}]
    )
    to_box = dump(
        tmp_path / "c.json", [{"image_id": "9", "caption": "A Dog.", "output": "<p>A Dog</p> {<1><2><3><4>}"}]
    )
    phrase = dump(tmp_path / "p.json", [{"image_id": "9", "phrase": "A Dog", "bbox": "{<1><2><3><4>}"}])
    ((instruction, answer),) = turns(only(data.read_flickr(grounded, tmp_path / "img")))
    assert instruction in {f"{IMG} {p} " for p in text.GROUNDING_PROMPTS}
    assert answer == "<p>A dog</p> {<1><2><3><4>}."
    assert turns(only(data.read_flickr(to_box, tmp_path / "img", task="caption_to_phrase"))) == [
        (f"{IMG} [detection] A Dog. ", "<p>A Dog</p> {<1><2><3><4>}")
    ]
    sample = only(data.read_flickr(phrase, tmp_path / "img", task="phrase_to_box"))
    assert turns(sample) == [(f"{IMG} [detection] A Dog ", "<p>A Dog</p> {<1><2><3><4>}")]
    assert sample["source"] == "flickr_ObjectToPhrase"


def test_textcaps_prefixes_a_caption_prompt_and_processes_the_caption(tmp_path):
    jpeg(tmp_path / "img" / "ab12.jpg")
    ann = dump(
        tmp_path / "TextCaps_0.1_train.json", {"data": [{"image_id": "ab12", "caption_str": "A Sign: STOP."}]}
    )
    ((instruction, answer),) = turns(only(data.read_textcaps(ann, tmp_path / "img")))
    assert answer == "a sign stop"
    assert instruction in {f"{IMG} [caption] {p} " for p in text.CAPTION_PROMPTS}


def test_coco_vqa_samples_answers_by_frequency_and_drops_questions_without_images(tmp_path):
    jpeg(tmp_path / "img" / "COCO_train2014_1.jpg")
    records = [
        {
            "image": "train2014/COCO_train2014_1.jpg",
            "question": "What Colour?",
            "question_id": 1,
            "answer": ["Red."] * 9 + ["blue"],
        },
        {"image": "train2014/COCO_train2014_2.jpg", "question": "absent", "question_id": 2, "answer": ["x"]},
    ]
    ann = dump(tmp_path / "vqa_train.json", records)
    health = data.DataHealth()
    answers = []
    for seed in range(40):
        stream = data.read_coco_vqa(ann, tmp_path / "img", seed=seed)
        ((instruction, answer),) = turns(only([row for row in stream if health.admit(row)]))
        assert instruction in {f"{IMG} {t.format('what colour?')} " for t in text.VQA_TEMPLATES}
        answers.append(answer)
    assert set(answers) == {"red", "blue"} and answers.count("red") >= 30
    assert health.total_bad == 0 and health.samples["coco_vqa"] == 40 and health.dropped["coco_vqa"] == 40


def test_aokvqa_and_gqa(tmp_path):
    jpeg(tmp_path / "img" / "val2017" / "4.jpg")
    aok = dump(
        tmp_path / "aok.json",
        [
            {
                "image": "val2017/4.jpg",
                "question": "Why?",
                "question_id": "q",
                "direct_answers": ["Rain"] * 10,
                "choices": ["rain", "sun"],
            }
        ],
    )
    gqa = dump(
        tmp_path / "gqa.json",
        [{"image": "val2017/4.jpg", "question": "Is It Red?", "question_id": "7", "answer": "Yes."}],
    )
    ((_, answer),) = turns(only(data.read_aokvqa(aok, tmp_path / "img")))
    assert answer == "rain"
    sample = only(data.read_gqa(gqa, tmp_path / "img"))
    assert turns(sample)[0][1] == "yes" and "is it red?" in turns(sample)[0][0]
    assert sample["source"] == "gqa"


def test_messages_files_and_datasets_render_like_the_chat_templates(tmp_path):
    jpeg(tmp_path / "pics" / "a.jpg")
    record = {
        "images": ["a.jpg"],
        "messages": [
            {"role": "system", "content": "ignored"},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A red box."}]},
            {"role": "user", "content": "And its colour?"},
            {"role": "assistant", "content": "Red."},
        ],
    }
    text_only = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(record) + "\n" + json.dumps(text_only) + "\n")
    expected = [(f"{IMG} What is this? ", "A red box."), ("And its colour?", "Red.")]
    first, second = list(data.read_messages(path, image_root=tmp_path / "pics"))
    assert turns(first) == expected and first["image"].size == (40, 20)
    assert turns(second) == [("Hi", "Hello")] and second["image"] is None
    blocks = [
        {"role": m["role"], "content": [{"type": "text", "text": m["content"]}]}
        if isinstance(m["content"], str)
        else m
        for m in record["messages"][1:]
    ]
    hub = datasets.Dataset.from_list([{"messages": blocks, "images": [{"bytes": jpeg(), "path": None}]}])
    hub = hub.cast_column("images", datasets.List(datasets.Image()))
    assert turns(only(data.read_messages(hub))) == expected


def test_random_choices_are_reproducible_per_seed(tmp_path):
    jpeg(tmp_path / "image" / "1.jpg")
    ann = [{"image_id": "1", "caption": "c"}] * 30
    dump(tmp_path / "filter_cap.json", {"annotations": ann})

    def prompts(seed):
        return [s["turns"][0]["instruction"] for s in data.read_cc_sbu_align(tmp_path, seed=seed)]

    assert prompts(3) == prompts(3)
    assert prompts(3) != prompts(4)
    assert len(set(prompts(3))) > 1

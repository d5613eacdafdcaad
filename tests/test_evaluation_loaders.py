"""Benchmark loaders over the released file formats, the exact prompts, and the pickle safety of RefCOCO."""

import pickle
from pathlib import Path

import pytest
from eval_fixtures import files

from tinygptv_hf.evaluation import BENCHMARKS, parse_benchmarks, result_key
from tinygptv_hf.evaluation.refer import load_refs


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return files.write_all(tmp_path_factory.mktemp("benchmarks"))


def load(data_dir, name, split=None):
    benchmark = BENCHMARKS[name]
    return benchmark.load(data_dir / name, split or benchmark.splits[0])


def test_gqa_official_dict_format(data_dir):
    samples = load(data_dir, "gqa")
    assert [s.question_id for s in samples] == ["201307251", "20515152", "20515153"]
    assert samples[0].image == data_dir / "gqa" / "images" / "n15740.jpg"
    assert samples[0].reference == "black"
    assert BENCHMARKS["gqa"].prompt(samples[0]) == (
        "###Human: <Img><ImageHere></Img> [vqa] Based on the image, respond to this question with a short answer: "
        "What color is the cat?###Assistant: "
    )


def test_gqa_lavis_list_format(tmp_path):
    files.write_json(tmp_path / "testdev_balanced_questions.json", [
        {"image": "n1.jpg", "question": "Is it sunny?", "answer": "no", "question_id": "q9"},
        {"image": "n2.jpg", "question": "What is red?", "answer": "car"},
    ])  # fmt: skip
    samples = BENCHMARKS["gqa"].load(tmp_path, "testdev")
    assert [(s.question_id, s.image.name, s.reference) for s in samples] == [
        ("q9", "n1.jpg", "no"),
        ("1", "n2.jpg", "car"),
    ]


def test_vsr_labels_images_and_prompt(data_dir):
    samples = load(data_dir, "vsr")
    assert [s.reference for s in samples] == [0, 1]
    assert samples[0].image == data_dir / "vsr" / "images" / "train2017" / "000000085637.jpg"
    assert samples[1].image == data_dir / "vsr" / "images" / "val2017" / "000000001234.jpg"
    assert BENCHMARKS["vsr"].prompt(samples[0]) == (
        "###Human: <Img><ImageHere></Img> [vqa] Based on the image, is this statement true or false? "
        "The umbrella is under the bed.###Assistant: "
    )


def test_iconqa_problems_filters_type_and_split(data_dir):
    samples = load(data_dir, "iconqa")
    assert [s.question_id for s in samples] == ["1001", "1002"]
    assert samples[0].choices == ("circle", "square", "triangle")
    assert samples[0].reference == 1
    assert samples[0].image == data_dir / "iconqa" / "images" / "1001" / "image.png"
    assert BENCHMARKS["iconqa"].ranking
    # The ranking prompt has a space before ###Assistant, unlike the generation prompt.
    assert BENCHMARKS["iconqa"].prompt(samples[0]) == (
        "###Human: <Img><ImageHere></Img> [vqa] Based on the image, respond to this question with a short answer: "
        "Which shape is shown? ###Assistant: "
    )


def test_iconqa_choose_text_list_format(tmp_path):
    files.write_json(tmp_path / "choose_text_val.json", [
        {"image_id": "77", "question": "Pick one.", "choices": ["a", "b"], "answer": 1},
    ])  # fmt: skip
    (sample,) = BENCHMARKS["iconqa"].load(tmp_path, "val")
    assert (sample.question_id, sample.choices, sample.reference) == ("77", ("a", "b"), 1)
    assert sample.image == tmp_path / "images" / "77" / "image.png"


def test_vizwiz_references_and_prompt(data_dir):
    samples = load(data_dir, "vizwiz")
    assert samples[0].question_id == "VizWiz_val_00000000.jpg"
    assert samples[0].reference == ["coca cola"] * 3 + ["coke"] * 7
    assert BENCHMARKS["vizwiz"].prompt(samples[0]) == (
        "###Human: <Img><ImageHere></Img> [vqa] The question is 'What is this?' Based on the image, answer the "
        "question with a single word or phrase. and reply 'unanswerable' when the provided information is "
        "insufficient###Assistant: "
    )


def test_hateful_memes_paths_labels_and_prompt(data_dir):
    samples = load(data_dir, "hm")
    assert [(s.question_id, s.reference) for s in samples] == [("8291", 1), ("46971", 0)]
    assert samples[1].image == data_dir / "hm" / "img" / "46971.png"
    assert BENCHMARKS["hm"].prompt(samples[1]) == (
        "###Human: <Img><ImageHere></Img> This is an image writting 'look at this sandwich maker'. "
        "Is this image hateful? Answer yes or no. Answer:###Assistant: "
    )


def test_okvqa_questions_and_annotation_answers(data_dir):
    samples = load(data_dir, "okvqa")
    assert [s.question_id for s in samples] == ["2971475", "3932255"]
    assert samples[0].image == data_dir / "okvqa" / "images" / "COCO_val2014_000000297147.jpg"
    assert samples[1].reference == ["four"] * 4 + ["4"] * 6
    assert (
        samples[0].question == "[vqa] Based on the image, respond to this question with a short answer: "
        "What sport can you use this for?"
    )


def test_okvqa_falls_back_to_the_vqa_question_file(data_dir, tmp_path):
    for name in ("OpenEnded_mscoco_val2014_questions.json", "mscoco_val2014_annotations.json"):
        (tmp_path / name).write_bytes((data_dir / "okvqa" / name).read_bytes())
    samples = BENCHMARKS["okvqa"].load(tmp_path, "val")
    assert [s.reference[0] for s in samples] == ["race", "four"]


def test_refcoco_one_sample_per_sentence_of_the_split(data_dir):
    val = load(data_dir, "refcoco", "val")
    assert [s.question_id for s in val] == ["7_0", "7_1"]
    assert val[0].reference == {"bbox": [10.0, 20.0, 40.0, 30.0], "width": 200, "height": 100}
    assert val[0].image == data_dir / "refcoco" / "images" / "COCO_train2014_000000000009.jpg"
    assert BENCHMARKS["refcoco"].prompt(val[1]) == (
        "###Human: <Img><ImageHere></Img> [refer] give me the location of guy in red###Assistant: "
    )
    (test_a,) = load(data_dir, "refcoco", "testA")
    assert test_a.reference["bbox"] == [120.0, 10.0, 60.0, 80.0]


def test_refcocog_reads_the_umd_refs(tmp_path):
    files.write_refcoco(tmp_path, "refcocog", "refs(umd).p")
    assert len(BENCHMARKS["refcocog"].load(tmp_path / "refcocog", "val")) == 2
    files.write_refcoco(tmp_path / "unc_only", "refcocog", "refs(unc).p")
    with pytest.raises(FileNotFoundError, match=r"refs\(umd\)\.p"):
        BENCHMARKS["refcocog"].load(tmp_path / "unc_only" / "refcocog", "val")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_refs_pickle_with_a_global_is_refused(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref_id": 1, "payload": _Payload(marker)}], protocol=2))
    with pytest.raises(pickle.UnpicklingError, match=r"Refusing to load io\.open"):
        load_refs(path)
    assert not marker.exists()
    path.write_bytes(pickle.dumps(files.refs_records(), protocol=2))
    assert load_refs(path) == files.refs_records()


def test_missing_annotation_file_names_the_candidates(tmp_path):
    with pytest.raises(FileNotFoundError, match="dev.jsonl, dev_seen.jsonl"):
        BENCHMARKS["hm"].load(tmp_path, "dev")


def test_parse_benchmarks():
    selected = parse_benchmarks("gqa, refcoco:testA,refcocog")
    assert [(b.name, split) for b, split in selected] == [
        ("gqa", "testdev"),
        ("refcoco", "testA"),
        ("refcocog", "val"),
    ]
    assert [result_key(b, split) for b, split in selected] == ["gqa", "refcoco:testA", "refcocog:val"]
    with pytest.raises(ValueError, match="Unknown benchmark 'mmbench'"):
        parse_benchmarks("gqa,mmbench")
    with pytest.raises(ValueError, match="refcocog has splits val, test"):
        parse_benchmarks("refcocog:testB")

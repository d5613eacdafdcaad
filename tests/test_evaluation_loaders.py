"""Benchmark loaders over the released archives' layouts (and the renamed layout of earlier versions), the exact
prompts, the check of every file before a run, and the pickle safety of RefCOCO."""

import pickle
from pathlib import Path

import pytest
from eval_fixtures import files

from tinygptv_hf.evaluation import BENCHMARKS, load_benchmarks, parse_benchmarks, result_key
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
    assert samples[0].image == data_dir / "vsr" / "train2017" / "000000085637.jpg"
    assert samples[1].image == data_dir / "vsr" / "val2017" / "000000001234.jpg"
    assert BENCHMARKS["vsr"].prompt(samples[0]) == (
        "###Human: <Img><ImageHere></Img> [vqa] Based on the image, is this statement true or false? "
        "The umbrella is under the bed.###Assistant: "
    )


def test_iconqa_release_takes_the_split_from_pid_splits(data_dir):
    samples = load(data_dir, "iconqa")
    assert [s.question_id for s in samples] == ["1001", "1002"]
    assert samples[0].choices == ("circle", "square", "triangle")
    assert samples[0].reference == 1
    release = data_dir / "iconqa" / "iconqa_data"
    assert samples[0].image == release / "iconqa" / "val" / "choose_txt" / "1001" / "image.png"
    assert BENCHMARKS["iconqa"].ranking
    # The ranking prompt has a space before ###Assistant, unlike the generation prompt.
    assert BENCHMARKS["iconqa"].prompt(samples[0]) == (
        "###Human: <Img><ImageHere></Img> [vqa] Based on the image, respond to this question with a short answer: "
        "Which shape is shown? ###Assistant: "
    )


def test_iconqa_problems_without_pid_splits_filters_type_and_split(tmp_path):
    files.write_json(tmp_path / "iconqa_data" / "problems.json", files.ICONQA_PROBLEMS)
    samples = BENCHMARKS["iconqa"].load(tmp_path, "val")
    assert [s.question_id for s in samples] == ["1001", "1002"]
    assert (
        samples[1].image == tmp_path / "iconqa_data" / "iconqa" / "val" / "choose_txt" / "1002" / "image.png"
    )


def test_iconqa_choose_text_list_format(tmp_path):
    files.write_json(tmp_path / "choose_text_val.json", [
        {"image_id": "77", "question": "Pick one.", "choices": ["a", "b"], "answer": 1},
    ])  # fmt: skip
    files.write_image(tmp_path / "images" / "77" / "image.png")
    (sample,) = BENCHMARKS["iconqa"].load(tmp_path, "val")
    assert (sample.question_id, sample.choices, sample.reference) == ("77", ("a", "b"), 1)
    assert sample.image == tmp_path / "images" / "77" / "image.png"


def test_vizwiz_references_and_prompt(data_dir):
    samples = load(data_dir, "vizwiz")
    assert samples[0].question_id == "VizWiz_val_00000000.jpg"
    assert samples[0].image == data_dir / "vizwiz" / "val" / "VizWiz_val_00000000.jpg"
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
    assert samples[0].image == data_dir / "okvqa" / "val2014" / "COCO_val2014_000000297147.jpg"
    assert samples[1].reference == ["four"] * 4 + ["4"] * 6
    assert (
        samples[0].question == "[vqa] Based on the image, respond to this question with a short answer: "
        "What sport can you use this for?"
    )


def test_okvqa_lavis_records_name_their_image(tmp_path):
    files.write_json(tmp_path / "okvqa" / "okvqa_val_eval.json", [
        {"image": "val2014/COCO_val2014_000000297147.jpg", "question": "Why?", "question_id": 2971475},
    ])  # fmt: skip
    files.write_okvqa(tmp_path)
    (sample,) = BENCHMARKS["okvqa"].load(tmp_path / "okvqa", "val")
    assert sample.image == tmp_path / "okvqa" / "val2014" / "COCO_val2014_000000297147.jpg"
    assert sample.reference[0] == "race"


def test_coco_images_may_be_shared_by_the_data_dir_or_in_the_benchmark_folder(data_dir, tmp_path):
    # write_all puts train2014/ directly in the data directory, for the whole RefCOCO family.
    assert load(data_dir, "refcoco", "val")[0].image == data_dir / "train2014" / files.COCO_TRAIN_IMAGE
    files.write_refcoco(tmp_path, images="own")
    (sample,) = BENCHMARKS["refcoco"].load(tmp_path / "refcoco", "testA")
    assert sample.image == tmp_path / "refcoco" / "train2014" / files.COCO_TRAIN_IMAGE


def test_the_renamed_layout_of_earlier_versions_is_still_read(tmp_path):
    root = files.write_renamed(tmp_path)
    expected = {
        "vsr": root / "vsr" / "images" / "train2017" / "000000085637.jpg",
        "iconqa": root / "iconqa" / "images" / "1001" / "image.png",
        "vizwiz": root / "vizwiz" / "images" / "VizWiz_val_00000000.jpg",
        "okvqa": root / "okvqa" / "images" / "COCO_val2014_000000297147.jpg",
        "refcoco": root / "refcoco" / "images" / files.COCO_TRAIN_IMAGE,
    }
    loaded = load_benchmarks(parse_benchmarks(",".join(expected)), root)
    assert {benchmark.name: samples[0].image for benchmark, _, samples in loaded} == expected
    assert [len(samples) for _, _, samples in loaded] == [2, 2, 2, 2, 2]


def test_refcoco_one_sample_per_sentence_of_the_split(data_dir):
    val = load(data_dir, "refcoco", "val")
    assert [s.question_id for s in val] == ["7_0", "7_1"]
    assert val[0].reference == {"bbox": [10.0, 20.0, 40.0, 30.0], "width": 200, "height": 100}
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
    with pytest.raises(FileNotFoundError, match="dev.jsonl, .*dev_seen.jsonl"):
        BENCHMARKS["hm"].load(tmp_path, "dev")


def test_every_missing_file_is_named_before_a_run_starts(tmp_path):
    root = files.write_all(tmp_path)
    files.write_gqa(root, extra_questions=8)
    (root / "gqa" / "images" / "n15740.jpg").unlink()  # used by 10 of the 11 questions
    (root / "iconqa" / "iconqa_data" / "iconqa" / "val" / "choose_txt" / "1002" / "image.png").unlink()
    (root / "hm" / "dev.jsonl").unlink()
    files.write_json(root / "vizwiz" / "Annotations" / "val.json", [{"image": "x.jpg"}])
    selected = parse_benchmarks("gqa,iconqa,hm,vizwiz,vsr")
    with pytest.raises(FileNotFoundError) as caught:
        load_benchmarks(selected, root)
    message = str(caught.value)
    assert "gqa: 10 of 11 images are missing: " in message and " and 5 more" in message
    assert message.count("n15740.jpg") == 5
    assert (
        "iconqa: 1 of 2 images are missing: " + str(root / "iconqa" / "iconqa_data" / "iconqa" / "val")
        in message
    )
    assert "hm: None of " in message and "dev_seen.jsonl" in message
    assert "vizwiz: unreadable annotations" in message and "KeyError" in message
    assert "vsr" not in message
    # Only the items a --limit run uses are checked.
    assert [len(s) for _, _, s in load_benchmarks(parse_benchmarks("iconqa"), root, limit=1)] == [1]
    files.write_json(root / "gqa" / "testdev_balanced_questions.json", {})
    with pytest.raises(FileNotFoundError, match="gqa: no items of split 'testdev'"):
        load_benchmarks(parse_benchmarks("gqa"), root)


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

"""Bad records are skipped, counted once for the whole mixed stream and logged with their source; the one budget
stops a broken run; dropped records are counted per source and an empty source is reported; a missing path fails
at construction."""

import io
import itertools
import json
import logging
import pickle
import tarfile

import pytest
from PIL import Image

from tinygptv_hf import data


def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 10)).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_shard(path, keys, corrupt=()):
    with tarfile.open(path, "w") as tar:
        for key in keys:
            image = jpeg_bytes()
            if key in corrupt:
                image = image[: len(image) // 3]
            for extension, payload in (("jpg", image), ("json", json.dumps({"caption": key}).encode())):
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return path


def captions(stream, health):
    return [row["turns"][0]["answer"] for row in stream if health.admit(row)]


def test_corrupt_jpeg_member_is_skipped_counted_and_logged(tmp_path, caplog):
    shard = write_shard(tmp_path / "00000.tar", ["a", "b", "c"], corrupt={"b"})
    health = data.DataHealth(max_bad_samples=5)
    with caplog.at_level(logging.WARNING, logger="tinygptv_hf.data.health"):
        assert captions(data.read_webdataset_captions(str(shard)), health) == ["a", "c"]
    assert health.bad == {"laion": 1} and health.samples == {"laion": 2}
    (bad,) = health.recent
    assert bad.location == str(shard) and bad.key == "b"
    assert "00000.tar [b]" in caplog.text


def test_truncated_tar_member_loses_only_the_rest_of_its_shard(tmp_path):
    first = write_shard(tmp_path / "00000.tar", ["a", "b", "c"])
    with tarfile.open(first) as tar:
        cut = tar.getmember("b.jpg").offset_data + 100
    first.write_bytes(first.read_bytes()[:cut])
    write_shard(tmp_path / "00001.tar", ["d"])
    health = data.DataHealth(max_bad_samples=5)
    assert captions(data.read_webdataset_captions(str(tmp_path / "*.tar")), health) == ["a", "d"]
    (bad,) = health.recent
    assert bad.key == "b" and "truncated" in bad.reason


def test_tar_cut_between_members_is_not_silently_short(tmp_path):
    shard = write_shard(tmp_path / "00000.tar", ["a", "b"])
    with tarfile.open(shard) as tar:
        second = tar.getmember("b.jpg").offset
    shard.write_bytes(shard.read_bytes()[:second])
    health = data.DataHealth(max_bad_samples=5)
    assert captions(data.read_webdataset_captions(str(shard)), health) == []
    assert health.total_bad == 1 and "end-of-archive" in health.recent[0].reason


def test_a_garbage_first_shard_does_not_break_the_stream(tmp_path):
    (tmp_path / "00000.tar").write_bytes(b"not a tar" * 200)
    write_shard(tmp_path / "00001.tar", ["z"])
    health = data.DataHealth(max_bad_samples=1)
    assert captions(data.read_webdataset_captions(str(tmp_path / "{00000..00001}.tar")), health) == ["z"]
    assert health.total_bad == 1


def test_malformed_json_records_are_skipped_and_counted(tmp_path):
    (tmp_path / "image").mkdir()
    (tmp_path / "image" / "1.jpg").write_bytes(jpeg_bytes())
    annotations = [
        {"image_id": "1", "caption": "good"},
        {"image_id": "1"},
        "junk",
        {"image_id": "404", "caption": "no image"},
        {"image_id": "1", "caption": "good too"},
    ]
    (tmp_path / "filter_cap.json").write_text(json.dumps({"annotations": annotations}))
    health = data.DataHealth(max_bad_samples=3)
    assert captions(data.read_cc_sbu_align(tmp_path), health) == ["good", "good too"]
    assert health.bad == {"cc_sbu_align": 3}
    assert [b.key for b in health.recent] == ["filter_cap.json#1", "filter_cap.json#2", "filter_cap.json#3"]
    assert "KeyError" in health.recent[0].reason and "FileNotFoundError" in health.recent[2].reason


def test_exceeding_the_budget_raises_naming_the_last_bad_sample(tmp_path):
    shard = write_shard(tmp_path / "00000.tar", ["a", "b", "c", "d"], corrupt={"b", "c"})
    health = data.DataHealth(max_bad_samples=1)
    with pytest.raises(data.DataBudgetExceeded, match=r"max_bad_samples=1.*00000\.tar \[c\]"):
        captions(data.read_webdataset_captions(str(shard)), health)


def mixed_sources(tmp_path):
    """A paper-style mix (stage 2: laion 115, cc_sbu 14) of two webdataset sources with bad records in both."""
    laion = write_shard(tmp_path / "laion.tar", ["l1", "l2", "l3", "l4"], corrupt={"l2"})
    cc_sbu = write_shard(tmp_path / "cc_sbu.tar", ["c1", "c2", "c3"], corrupt={"c1", "c3"})
    return data.mix_datasets(
        [
            (data.read_webdataset_captions(str(laion), source="laion"), 115),
            (data.read_webdataset_captions(str(cc_sbu), source="cc_sbu"), 14),
        ],
        seed=0,
    )


def test_one_health_counts_every_source_of_a_mix_and_one_budget_stops_it(tmp_path, caplog):
    health = data.DataHealth(max_bad_samples=3)
    with caplog.at_level(logging.WARNING, logger="tinygptv_hf.data.health"):
        read = captions(mixed_sources(tmp_path), health)
    assert health.bad == {"laion": 1, "cc_sbu": 2} and health.samples["cc_sbu"] == 1
    assert health.total_samples == len(read) and set(read) >= {"l1", "l3", "l4", "c2"}
    assert [line.split(":")[0] for line in caplog.messages] == [
        "Skipped bad sample 1/3",
        "Skipped bad sample 2/3",
        "Skipped bad sample 3/3",
    ]

    stream = data.TrainingStream(mixed_sources(tmp_path), health=data.DataHealth(max_bad_samples=2))
    overdrawn = r"^3 bad samples exceed .*max_bad_samples=2; last bad sample"
    with pytest.raises(data.DataBudgetExceeded, match=overdrawn):
        list(itertools.islice(stream, 100))
    assert stream.health.total_bad == 3 and set(stream.health.bad) == {"laion", "cc_sbu"}


def test_dropped_records_are_counted_per_source_and_an_empty_source_is_reported(tmp_path, caplog):
    (tmp_path / "images").mkdir()  # exists, but holds none of the questions' images
    questions = [
        {"image": f"COCO_train2014_{i}.jpg", "question": "what?", "question_id": i, "answer": ["x"]}
        for i in range(data.health.EMPTY_SOURCE_RECORDS + 20)
    ]
    (tmp_path / "vqa.json").write_text(json.dumps(questions))
    mix = data.mix_datasets(
        [
            (data.read_coco_vqa(tmp_path / "vqa.json", tmp_path / "images"), 2),
            (data.read_webdataset_captions(str(write_shard(tmp_path / "00000.tar", ["a", "b"]))), 1),
        ],
        seed=0,
    )
    health = data.DataHealth(max_bad_samples=0)
    with caplog.at_level(logging.WARNING, logger="tinygptv_hf.data.health"):
        captions(mix, health)
    assert health.dropped == {"coco_vqa": len(questions)} and health.total_bad == 0
    assert health.sources_without_samples() == ["coco_vqa"]
    assert health.summary()["dropped"] == {"coco_vqa": len(questions)}
    (warning,) = caplog.messages
    assert warning.startswith(f"coco_vqa gave no sample from its first {len(questions) - 20} records")
    assert "image not found" in warning


def test_a_folder_of_shards_reads_its_shards_and_an_empty_one_asks_for_a_pattern(tmp_path):
    write_shard(tmp_path / "00001.tar", ["b"])
    write_shard(tmp_path / "00000.tar", ["a"])
    (tmp_path / "notes.txt").write_text("not a shard")
    assert captions(data.read_webdataset_captions(tmp_path), data.DataHealth()) == ["a", "b"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"holds no laion webdataset shard .*brace range such as"):
        data.read_webdataset_captions(tmp_path / "empty")


@pytest.mark.parametrize(
    "build",
    [
        lambda root: data.read_webdataset_captions(str(root / "shards" / "{00000..00003}.tar")),
        lambda root: data.read_webdataset_captions(str(root / "nothing-*.tar")),
        lambda root: data.read_cc_sbu_align(root / "cc_sbu_align"),
        lambda root: data.read_coco_vqa(root / "vqa_train.json", root),
        lambda root: data.read_coco_vqa(root / "exists.json", root / "no-images"),
        lambda root: data.read_refcoco(root / "refer", root),
        lambda root: data.read_visual_genome(root / "vg"),
        lambda root: data.read_messages(root / "train.jsonl"),
    ],
)
def test_a_missing_path_fails_at_construction(tmp_path, build):
    (tmp_path / "exists.json").write_text("[]")
    with pytest.raises(FileNotFoundError, match="not found|no "):
        build(tmp_path)


def test_refer_pickles_may_not_name_globals(tmp_path):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"split": "train", "call": print}], protocol=2))
    with pytest.raises(pickle.UnpicklingError, match=r"refusing global .*print"):
        data.load_refer_pickle(path)
    path.write_bytes(pickle.dumps([{"split": "train", "sentences": [{"raw": "x"}]}], protocol=2))
    assert data.load_refer_pickle(path) == [{"split": "train", "sentences": [{"raw": "x"}]}]

"""Mixing ratios, rank sharding and mid-stream resume on real `datasets` streams."""

import io
import json
import tarfile

import datasets
from PIL import Image

from tinygptv_hf import data


def constant(name, n):
    def generate(shards):
        for shard in shards:
            for i in range(n):
                yield {"source": name, "i": f"{shard}-{i}"}

    return datasets.IterableDataset.from_generator(generate, gen_kwargs={"shards": [0, 1]})


def test_mixing_ratios_hold_over_many_draws():
    mixed = data.mix_datasets(
        [(constant("a", 5000), 115), (constant("b", 5000), 14)], seed=0, stopping_strategy="first_exhausted"
    )
    sources = [s["source"] for _, s in zip(range(4000), mixed, strict=False)]
    assert abs(sources.count("a") / len(sources) - 115 / 129) < 0.02


def test_mixing_accepts_a_mapping_and_rejects_bad_ratios():
    mixed = data.mix_datasets(
        {"a": (constant("a", 1000), 1), "b": (constant("b", 1000), 3)},
        seed=1,
        stopping_strategy="first_exhausted",
    )
    sources = [s["source"] for _, s in zip(range(2000), mixed, strict=False)]
    assert 0.70 < sources.count("b") / len(sources) < 0.80
    try:
        data.mix_datasets([(constant("a", 1), 0)])
    except ValueError as error:
        assert "positive" in str(error)
    else:
        raise AssertionError("a zero ratio must be refused")


def write_shards(folder, n_shards, per_shard):
    folder.mkdir()
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="JPEG")
    for shard in range(n_shards):
        with tarfile.open(folder / f"{shard:05d}.tar", "w") as tar:
            for i in range(per_shard):
                caption = json.dumps({"caption": f"s{shard} n{i}"}).encode()
                for extension, payload in (("jpg", buffer.getvalue()), ("json", caption)):
                    info = tarfile.TarInfo(f"{i:04d}.{extension}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return str(folder / f"{{00000..{n_shards - 1:05d}}}.tar")


def answers(stream):
    return [s["turns"][0]["answer"] for s in stream]


def test_ranks_read_disjoint_whole_shards(tmp_path):
    stream = data.read_webdataset_captions(write_shards(tmp_path / "wds", 4, 3))
    assert stream.n_shards == 4
    rank0, rank1 = (data.shard_for_rank(stream, rank, 2) for rank in (0, 1))
    assert rank0.n_shards == rank1.n_shards == 2
    seen0, seen1 = answers(rank0), answers(rank1)
    assert len(seen0) == len(seen1) == 6 and not set(seen0) & set(seen1)
    assert sorted(seen0 + seen1) == sorted(answers(stream))
    assert len({a.split()[0] for a in seen0}) == 2  # whole shards, not every other sample


def test_one_annotation_file_splits_into_shards(tmp_path):
    (tmp_path / "image").mkdir()
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="JPEG")
    (tmp_path / "image" / "1.jpg").write_bytes(buffer.getvalue())
    ann = [{"image_id": "1", "caption": f"c{i}"} for i in range(10)]
    (tmp_path / "filter_cap.json").write_text(json.dumps({"annotations": ann}))
    stream = data.read_cc_sbu_align(tmp_path, num_shards=2)
    assert answers(data.shard_for_rank(stream, 0, 2)) == [f"c{i}" for i in range(5)]
    assert answers(data.shard_for_rank(stream, 1, 2)) == [f"c{i}" for i in range(5, 10)]


def test_state_dict_resumes_where_the_stream_stopped(tmp_path):
    spec = write_shards(tmp_path / "wds", 2, 4)
    full = answers(data.read_webdataset_captions(spec))
    stream = data.read_webdataset_captions(spec)
    iterator = iter(stream)
    head = [next(iterator)["turns"][0]["answer"] for _ in range(5)]
    state = stream.state_dict()
    resumed = data.read_webdataset_captions(spec)
    resumed.load_state_dict(state)
    assert head + answers(resumed) == full


def take(stream, n):
    iterator = iter(stream)
    return [next(iterator)["turns"][0]["answer"] for _ in range(n)]


def test_training_stream_resumes_exactly_in_a_later_pass_from_its_saved_position(tmp_path):
    """Stage 2's mix (laion 115 : cc_sbu 14, every source read until all are exhausted) through a shuffle buffer:
    a stream restored from a position saved in its second pass goes on exactly as the uninterrupted one."""
    laion = write_shards(tmp_path / "laion", 2, 3)
    cc_sbu = write_shards(tmp_path / "cc_sbu", 1, 4)

    def stream():
        sources = [
            (data.read_webdataset_captions(laion, source="laion"), 115),
            (data.read_webdataset_captions(cc_sbu, source="cc_sbu"), 14),
        ]
        return data.TrainingStream(data.mix_datasets(sources, seed=0), shuffle_buffer=4, seed=0)

    reference, passes, counts = stream(), [], []
    iterator = iter(reference)
    full = []
    for _ in range(90):
        full.append(next(iterator)["turns"][0]["answer"])
        passes.append(reference.state_dict()["pass"])
        counts.append(reference.health.summary())
    stop = passes.index(1) + 5  # inside the second pass
    assert passes[-1] >= 1 and full[: passes.index(1)] != full[passes.index(1) :][: passes.index(1)]

    first = stream()
    head = take(first, stop)
    first.save(tmp_path, "position")
    resumed = stream()
    resumed.load(tmp_path, "position")
    assert resumed.state_dict()["pass"] == 1 and len(resumed.state_dict()["buffer"]) == 4
    assert head + take(resumed, len(full) - stop) == full
    assert resumed.health.summary() == counts[-1]  # nothing before the position was counted again

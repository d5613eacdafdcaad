"""The harness on the tiny random model: decoding as the original, batch-size independence, per-sample ranking
losses with each mode's end symbol, each mode's image reading, the answer-position P(yes), and `tinygptv eval` end
to end with its results file, predictions file and model-index block."""

import json
from collections import defaultdict

import numpy as np
import pytest
import torch
from eval_fixtures import files
from huggingface_hub import ModelCardData
from huggingface_hub.repocard_data import model_index_to_eval_results
from PIL import Image, ImageOps
from transformers import AutoModelForImageTextToText

from tinygptv_hf import cli
from tinygptv_hf.evaluation import (
    BENCHMARKS,
    RANKING_END_SYMBOLS,
    choice_losses,
    generate_answers,
    load_metric,
    mode_images,
    predict,
)
from tinygptv_hf.processors.image_processing_tinygptv import load_image


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


@pytest.fixture(scope="module")
def model_and_processor(tiny_model, tiny_processor):
    return tiny_model, tiny_processor


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return files.write_all(tmp_path_factory.mktemp("benchmarks"))


def samples_of(data_dir, name, split=None):
    benchmark = BENCHMARKS[name]
    return benchmark, benchmark.load(data_dir / name, split or benchmark.splits[0])


def upright(path) -> Image.Image:
    return ImageOps.exif_transpose(Image.open(path)).convert("RGB")


def as_stored(path) -> Image.Image:
    """The pixels as the file stores them, with no EXIF block left to act on."""
    return Image.fromarray(np.asarray(Image.open(path).convert("RGB")))


def test_decoding_reads_past_the_checkpoints_stop_string(checkpoint, model_and_processor, data_dir):
    """The paper rules score the untruncated 20 tokens, so the checkpoint's `###` stop string must not apply."""
    _, processor = model_and_processor
    model = AutoModelForImageTextToText.from_pretrained(checkpoint).eval()
    end_id = processor.tokenizer.convert_tokens_to_ids("###")
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.bias.fill_(-10.0)
        model.lm_head.bias[end_id] = 10.0
    benchmark, samples = samples_of(data_dir, "gqa")
    image, prompt = load_image(samples[0].image), benchmark.prompt(samples[0])
    assert model.generation_config.stop_strings == ["###"]
    (text,) = generate_answers(model, processor, [image], [prompt])
    assert text == "###" * 20
    assert model.generation_config.stop_strings == ["###"]
    inputs = processor(images=[image], text=[prompt], return_tensors="pt")
    stopped = model.generate(**inputs, tokenizer=processor.tokenizer)
    assert stopped.shape[1] - inputs["input_ids"].shape[1] == 1


def test_batched_generation_equals_batch_size_one(model_and_processor, data_dir):
    model, processor = model_and_processor
    benchmark, samples = samples_of(data_dir, "gqa")
    batched = predict(model, processor, benchmark, "testdev", samples, batch_size=3, progress=False)
    single = predict(model, processor, benchmark, "testdev", samples, batch_size=1, progress=False)
    for mode in ("paper", "standard"):
        assert [r[mode]["generation"] for r in batched] == [r[mode]["generation"] for r in single]
    assert len({r["prompt"] for r in batched}) == 3


def test_ranking_uses_per_sample_losses(model_and_processor, data_dir):
    model, processor = model_and_processor
    benchmark, samples = samples_of(data_dir, "iconqa")
    batched = predict(model, processor, benchmark, "val", samples, batch_size=2, progress=False)
    single = predict(model, processor, benchmark, "val", samples, batch_size=1, progress=False)
    for sample, together, alone in zip(samples, batched, single, strict=True):
        assert together["choices"] == list(sample.choices)
        for mode in ("paper", "standard"):
            ranked, ranked_alone = together[mode], alone[mode]
            assert ranked["chosen"] == ranked_alone["chosen"]
            assert ranked["choice_losses"] == pytest.approx(ranked_alone["choice_losses"], abs=1e-4)
            assert ranked["chosen"] == min(
                range(len(sample.choices)), key=ranked["choice_losses"].__getitem__
            )
            assert ranked["answer"] == sample.choices[ranked["chosen"]]
    assert [len(r["paper"]["choice_losses"]) for r in batched] == [3, 2]


@pytest.mark.parametrize("end_symbol", ["\n", "###"])
def test_choice_loss_is_the_mean_token_loss_after_bos_and_prompt(model_and_processor, data_dir, end_symbol):
    model, processor = model_and_processor
    benchmark, samples = samples_of(data_dir, "iconqa")
    sample = samples[0]
    image, prompt = load_image(sample.image), benchmark.prompt(sample)
    (losses,) = choice_losses(model, processor, [image], [prompt], [sample.choices], end_symbol)
    tokenizer = processor.tokenizer
    inputs = processor(images=[image], text=[prompt], return_tensors="pt")
    for choice, loss in zip(sample.choices, losses, strict=True):
        choice_ids = torch.tensor([tokenizer(choice + end_symbol, add_special_tokens=False)["input_ids"]])
        prompt_ids = torch.cat([torch.tensor([[tokenizer.bos_token_id]]), inputs["input_ids"]], dim=1)
        labels = torch.cat([torch.full_like(prompt_ids, -100), choice_ids], dim=1)
        with torch.no_grad():
            expected = model(
                input_ids=torch.cat([prompt_ids, choice_ids], dim=1),
                pixel_values=inputs["pixel_values"],
                labels=labels,
            ).loss
        assert loss == pytest.approx(expected.item(), abs=1e-5)


def test_each_mode_ranks_and_reads_the_image_as_its_rule_says(model_and_processor, tmp_path):
    """paper: the stored pixels (`Image.open(...).convert("RGB")`, EXIF orientation ignored) and `choice + "\\n"`,
    as the original; standard: the upright image and `choice + "###"`."""
    model, processor = model_and_processor
    files.write_iconqa(tmp_path)
    image = tmp_path / "iconqa" / "iconqa_data" / "iconqa" / "val" / "choose_txt" / "1001" / "image.png"
    files.write_image(image, (48, 24), (10, 10, 250), orientation=6)
    benchmark, samples = samples_of(tmp_path, "iconqa")
    (record,) = predict(model, processor, benchmark, "val", samples[:1], progress=False)
    prompt, choices = benchmark.prompt(samples[0]), [samples[0].choices]
    assert RANKING_END_SYMBOLS == {"paper": "\n", "standard": "###"}
    expected = {
        "paper": choice_losses(model, processor, [as_stored(image)], [prompt], choices, "\n")[0],
        "standard": choice_losses(model, processor, [upright(image)], [prompt], choices, "###")[0],
    }
    for mode, losses in expected.items():
        assert record[mode]["choice_losses"] == pytest.approx(losses, abs=1e-5)
    # Each difference counts: the end symbol and the orientation both change the losses.
    upright_newline = choice_losses(model, processor, [upright(image)], [prompt], choices, "\n")[0]
    assert record["paper"]["choice_losses"] != pytest.approx(upright_newline, abs=1e-4)
    assert record["standard"]["choice_losses"] != pytest.approx(upright_newline, abs=1e-4)


def test_paper_images_reach_the_model_as_stored_and_standard_ones_upright(model_and_processor, data_dir):
    _, processor = model_and_processor
    photo = data_dir / "vizwiz" / "val" / "VizWiz_val_00000000.jpg"  # EXIF: turn 90 degrees
    images = mode_images(photo)
    assert (images["paper"].size, images["standard"].size) == ((60, 40), (40, 60))
    assert np.array_equal(np.asarray(images["paper"]), np.asarray(Image.open(photo).convert("RGB")))
    assert np.array_equal(np.asarray(images["standard"]), np.asarray(upright(photo)))

    def pixels(image):
        return processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]

    # The processor turns `Image.open(path).convert("RGB")` (its EXIF block comes along) but not the paper image.
    stored = np.asarray(Image.open(photo).convert("RGB"))
    assert torch.equal(pixels(images["paper"]), pixels(stored))
    assert torch.equal(pixels(Image.open(photo).convert("RGB")), pixels(images["standard"]))
    assert not torch.equal(pixels(images["paper"]), pixels(images["standard"]))
    plain = mode_images(data_dir / "vizwiz" / "val" / "VizWiz_val_00000001.jpg")
    assert np.array_equal(np.asarray(plain["paper"]), np.asarray(plain["standard"]))


def test_each_mode_generates_from_its_own_reading_of_the_image(model_and_processor, data_dir):
    model, processor = model_and_processor
    benchmark, samples = samples_of(data_dir, "vizwiz")
    records = predict(
        model, processor, benchmark, "val", samples, batch_size=2, max_new_tokens=4, progress=False
    )
    photo, prompt = samples[0].image, [benchmark.prompt(samples[0])]
    assert (
        records[0]["paper"]["generation"]
        == generate_answers(model, processor, [as_stored(photo)], prompt, 4)[0]
    )
    assert (
        records[0]["standard"]["generation"]
        == generate_answers(model, processor, [upright(photo)], prompt, 4)[0]
    )
    assert records[1]["paper"] == records[1]["standard"]


def test_hateful_memes_yes_probability_is_read_at_the_answer_position(model_and_processor, data_dir):
    model, processor = model_and_processor
    benchmark, samples = samples_of(data_dir, "hm")
    # The probability is read at the first answer position; one new token is all the test needs.
    records = predict(
        model, processor, benchmark, "dev", samples, batch_size=2, max_new_tokens=1, progress=False
    )
    tokenizer = processor.tokenizer
    single = [form for form in ("yes", "Yes", "YES", " yes", " Yes", " YES", "no", "No", "NO", " no", " No", " NO")
              if len(tokenizer(form, add_special_tokens=False)["input_ids"]) == 1]  # fmt: skip
    assert single == [" yes", " no"]  # the tiny tokenizer's only one-token spellings
    (yes,), (no,) = (tokenizer(form, add_special_tokens=False)["input_ids"] for form in single)
    for sample, record in zip(samples, records, strict=True):
        inputs = processor(
            images=[load_image(sample.image)], text=[benchmark.prompt(sample)], return_tensors="pt"
        )
        with torch.no_grad():
            probabilities = model(**inputs).logits[0, -1].softmax(-1)
        expected = probabilities[yes] / (probabilities[yes] + probabilities[no])
        assert record["standard"]["yes_probability"] == pytest.approx(expected.item(), abs=1e-4)
        assert "yes_probability" not in record["paper"]


def test_tinygptv_eval_end_to_end(checkpoint, data_dir, tmp_path, capsys):
    output = tmp_path / "results.json"
    status = cli.main([
        "eval", str(checkpoint), "--benchmark", "gqa,vsr,iconqa,vizwiz,hm,okvqa,refcoco", "--data-dir",
        str(data_dir), "--limit", "2", "--batch-size", "2", "--output", str(output), "--model-name", "tiny-test",
    ])  # fmt: skip
    assert status == 0
    keys = ["gqa", "vsr", "iconqa", "vizwiz", "hm", "okvqa", "refcoco:val"]
    printed = capsys.readouterr().out
    assert "paper" in printed and "standard" in printed and "AUROC" in printed
    assert all(any(line.startswith(key) for line in printed.splitlines()) for key in keys)

    document = json.loads(output.read_text())
    assert list(document["results"]) == keys
    assert document["settings"]["max_new_tokens"] == 20
    predictions = defaultdict(list)
    for record in document["predictions"]:
        predictions[record["benchmark"]].append(record)
    for key in keys:
        name, _, split = key.partition(":")
        benchmark, samples = samples_of(data_dir, name, split or None)
        records = predictions[key]
        summary = document["results"][key]
        assert summary["num_samples"] == len(records) == 2
        assert [r["question_id"] for r in records] == [s.question_id for s in samples[:2]]
        assert [r["prompt"] for r in records] == [benchmark.prompt(s) for s in samples[:2]]
        assert [r["references"] for r in records] == [s.reference for s in samples[:2]]
        field = "chosen" if benchmark.ranking else "generation"
        for mode in ("paper", "standard"):
            extra = {}
            if benchmark.auroc and mode == "standard":
                extra["yes_probabilities"] = [r[mode]["yes_probability"] for r in records]
            expected = load_metric(benchmark.metric, mode).compute(
                predictions=[r[mode][field] for r in records],
                references=[r["references"] for r in records],
                **extra,
            )
            assert [r[mode]["score"] for r in records] == expected["scores"]
            assert summary[mode] == pytest.approx({k: v for k, v in expected.items() if k != "scores"})
    # AUROC from the prediction log, pair by pair: the share of (hateful, benign) pairs ordered right, ties half.
    memes = predictions["hm"]
    hateful = [r["standard"]["yes_probability"] for r in memes if r["references"] == 1]
    benign = [r["standard"]["yes_probability"] for r in memes if r["references"] == 0]
    assert hateful and benign, "the fixture's first two memes must hold both labels"
    ordered = [(h > b) + 0.5 * (h == b) for h in hateful for b in benign]
    assert document["results"]["hm"]["standard"]["roc_auc"] == pytest.approx(sum(ordered) / len(ordered))

    # Every item was saved as it was produced: a header line, then one line per item.
    lines = (tmp_path / "results.predictions.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["settings"]["batch_size"] == 2
    assert {(r["benchmark"], r["question_id"]) for r in map(json.loads, lines[1:])} == {
        (r["benchmark"], r["question_id"]) for r in document["predictions"]
    }

    (entry,) = document["model_index"]
    assert entry["name"] == "tiny-test"
    card = ModelCardData(
        model_name="tiny-test", eval_results=model_index_to_eval_results(document["model_index"])[1]
    )
    assert card.to_dict()["model-index"] == document["model_index"]
    # One result per benchmark split; the two modes are labelled metrics of it, and AUROC a third for hm.
    assert len(entry["results"]) == len(keys)
    (refcoco,) = [r for r in entry["results"] if r["dataset"]["type"] == "refcoco"]
    assert refcoco["dataset"]["split"] == "val"
    assert [(m["config"], m["value"]) for m in refcoco["metrics"]] == [
        (mode, round(document["results"]["refcoco:val"][mode]["accuracy"], 2))
        for mode in ("paper", "standard")
    ]
    (memes,) = [r for r in entry["results"] if r["dataset"]["type"] == "hateful_memes"]
    assert [(m["type"], m["config"]) for m in memes["metrics"]] == [
        ("accuracy", "paper"), ("accuracy", "standard"), ("roc_auc", "standard"),
    ]  # fmt: skip


def test_tinygptv_eval_rejects_unknown_benchmarks(checkpoint, data_dir, capsys):
    assert cli.main(["eval", str(checkpoint), "--benchmark", "mmbench", "--data-dir", str(data_dir)]) == 2
    assert "Unknown benchmark 'mmbench'" in capsys.readouterr().err

"""The harness on the tiny random model: decoding as the original, batch-size independence, per-sample ranking
losses, and `tinygptv eval` end to end with its results file and model-index block."""

import json
from collections import defaultdict

import pytest
import torch
from eval_fixtures import files
from huggingface_hub import ModelCardData
from huggingface_hub.repocard_data import model_index_to_eval_results
from transformers import AutoModelForImageTextToText, AutoProcessor

from tinygptv_hf import cli
from tinygptv_hf.checkpoint import init_checkpoint
from tinygptv_hf.evaluation import BENCHMARKS, choice_losses, generate_answers, load_metric, predict
from tinygptv_hf.processors.image_processing_tinygptv import load_image


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return init_checkpoint("tiny", tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def model_and_processor(checkpoint):
    model = AutoModelForImageTextToText.from_pretrained(checkpoint).eval()
    return model, AutoProcessor.from_pretrained(checkpoint)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return files.write_all(tmp_path_factory.mktemp("benchmarks"))


def samples_of(data_dir, name, split=None):
    benchmark = BENCHMARKS[name]
    return benchmark, benchmark.load(data_dir / name, split or benchmark.splits[0])


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
    batched = predict(model, processor, benchmark, samples, batch_size=3, progress=False)
    single = predict(model, processor, benchmark, samples, batch_size=1, progress=False)
    assert [r["generation"] for r in batched] == [r["generation"] for r in single]
    assert len({r["prompt"] for r in batched}) == 3


def test_ranking_uses_per_sample_losses(model_and_processor, data_dir):
    model, processor = model_and_processor
    benchmark, samples = samples_of(data_dir, "iconqa")
    batched = predict(model, processor, benchmark, samples, batch_size=2, progress=False)
    single = predict(model, processor, benchmark, samples, batch_size=1, progress=False)
    assert [r["chosen"] for r in batched] == [r["chosen"] for r in single]
    for sample, together, alone in zip(samples, batched, single, strict=True):
        assert together["choice_losses"] == pytest.approx(alone["choice_losses"], abs=1e-4)
        assert together["chosen"] == min(
            range(len(sample.choices)), key=together["choice_losses"].__getitem__
        )
        assert together["answer"] == together["generation"] == sample.choices[together["chosen"]]
        assert together["choices"] == list(sample.choices)
    assert [len(r["choice_losses"]) for r in batched] == [3, 2]


def test_choice_loss_is_the_mean_token_loss_after_bos_and_prompt(model_and_processor, data_dir):
    model, processor = model_and_processor
    benchmark, samples = samples_of(data_dir, "iconqa")
    sample = samples[0]
    image, prompt = load_image(sample.image), benchmark.prompt(sample)
    (losses,) = choice_losses(model, processor, [image], [prompt], [sample.choices])
    tokenizer = processor.tokenizer
    inputs = processor(images=[image], text=[prompt], return_tensors="pt")
    for choice, loss in zip(sample.choices, losses, strict=True):
        choice_ids = torch.tensor([tokenizer(choice + "###", add_special_tokens=False)["input_ids"]])
        prompt_ids = torch.cat([torch.tensor([[tokenizer.bos_token_id]]), inputs["input_ids"]], dim=1)
        labels = torch.cat([torch.full_like(prompt_ids, -100), choice_ids], dim=1)
        with torch.no_grad():
            expected = model(
                input_ids=torch.cat([prompt_ids, choice_ids], dim=1),
                pixel_values=inputs["pixel_values"],
                labels=labels,
            ).loss
        assert loss == pytest.approx(expected.item(), abs=1e-5)


def test_tinygptv_eval_end_to_end(checkpoint, data_dir, tmp_path, capsys):
    output = tmp_path / "results.json"
    status = cli.main([
        "eval", str(checkpoint), "--benchmark", "gqa,vsr,iconqa,vizwiz,hm,okvqa,refcoco", "--data-dir",
        str(data_dir), "--limit", "2", "--batch-size", "2", "--output", str(output), "--model-name", "tiny-test",
    ])  # fmt: skip
    assert status == 0
    keys = ["gqa", "vsr", "iconqa", "vizwiz", "hm", "okvqa", "refcoco:val"]
    printed = capsys.readouterr().out
    assert "paper" in printed and "standard" in printed
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
            expected = load_metric(benchmark.metric, mode).compute(
                predictions=[r[field] for r in records], references=[r["references"] for r in records]
            )
            assert [r["scores"][mode] for r in records] == expected["scores"]
            assert summary[mode]["accuracy"] == pytest.approx(expected["accuracy"])

    (entry,) = document["model_index"]
    assert entry["name"] == "tiny-test"
    card = ModelCardData(
        model_name="tiny-test", eval_results=model_index_to_eval_results(document["model_index"])[1]
    )
    assert card.to_dict()["model-index"] == document["model_index"]
    # One result per benchmark split; the two modes are two labelled metrics of it.
    assert len(entry["results"]) == len(keys)
    (refcoco,) = [r for r in entry["results"] if r["dataset"]["type"] == "refcoco"]
    assert refcoco["dataset"]["split"] == "val"
    assert [(m["config"], m["value"]) for m in refcoco["metrics"]] == [
        (mode, round(document["results"]["refcoco:val"][mode]["accuracy"], 2))
        for mode in ("paper", "standard")
    ]


def test_tinygptv_eval_rejects_unknown_benchmarks(checkpoint, data_dir, capsys):
    assert cli.main(["eval", str(checkpoint), "--benchmark", "mmbench", "--data-dir", str(data_dir)]) == 2
    assert "Unknown benchmark 'mmbench'" in capsys.readouterr().err

"""Running a model over a benchmark: batched greedy generation, or likelihood ranking of choices, for each
scoring mode, then both modes' metrics.

Decoding is the original harness's: greedy, 20 new tokens, stopping only at the end-of-text token (the
checkpoint's own stop string is switched off, because the paper rules read past it). Ranking scores each
(sample, choice) pair by its own mean token loss, so a batch gives the answers batch size 1 gives; the original
compared batch-mean losses, which is only right at batch size 1.

The two modes can feed the model different inputs. `paper` reads each image as the original's datasets did,
`Image.open(path).convert("RGB")`, so a photo's EXIF orientation is ignored; `standard` reads it as the processor
does, turned upright by its EXIF orientation (16-bit grey scaled rather than clipped). A generation is run once
when both modes' pixels agree (most images carry no orientation) and twice otherwise. IconQA's choices are ranked
followed by the end symbol `RANKING_END_SYMBOLS` gives each mode (docs/evaluation.md says why they differ).
"""

from collections.abc import Collection, Iterator
from contextlib import contextmanager
from itertools import islice

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import GenerationConfig

from ..processors.image_processing_tinygptv import load_image, to_rgb
from ..processors.templates import END_SYMBOL, IGNORE_INDEX
from .answers import harness_answer
from .benchmarks import Benchmark, result_key
from .metric_base import MODES, load_metric
from .samples import Sample

MAX_NEW_TOKENS = 20
# paper: the original's benchmark config sets no end_sym, so its model falls back to "\n" (multi_select ranks
# `choice + "\n"`); standard: the stage-4 end symbol, which the checkpoint was trained to put after an answer.
RANKING_END_SYMBOLS = {"paper": "\n", "standard": END_SYMBOL}
# Single-token spellings of the Hateful Memes answers whose probability the AUROC compares.
YES_FORMS = ("yes", "Yes", "YES", " yes", " Yes", " YES")
NO_FORMS = ("no", "No", "NO", " no", " No", " NO")


def harness_generation_config(model, processor, max_new_tokens: int = MAX_NEW_TOKENS) -> GenerationConfig:
    return GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        eos_token_id=model.generation_config.eos_token_id,
        pad_token_id=processor.tokenizer.pad_token_id,
    )


@contextmanager
def _generation_defaults(model, config: GenerationConfig):
    """`generate` fills unset values from `model.generation_config`; swap it so nothing of the checkpoint's
    (such as its stop string) leaks into the harness's decoding."""
    saved = model.generation_config
    model.generation_config = config
    try:
        yield
    finally:
        model.generation_config = saved


def mode_images(path) -> dict[str, Image.Image]:
    """The picture each scoring mode feeds the model. `paper` is rebuilt from the decoded pixels so that it
    carries no EXIF block: `convert` copies the block along, and the processor would then turn the image."""
    image = load_image(path)
    return {"paper": Image.fromarray(np.asarray(image.convert("RGB"))), "standard": to_rgb(image)}


def _same_pixels(first: Image.Image, second: Image.Image) -> bool:
    return np.array_equal(np.asarray(first), np.asarray(second))


def _model_inputs(model, processor, images, prompts):
    inputs = processor(images=images, text=prompts, return_tensors="pt", padding=True).to(model.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    return inputs


@torch.no_grad()
def _generate(model, processor, images, prompts, max_new_tokens: int, first_logits: bool = False):
    """Raw generations and, when asked, the logits of the first generated position."""
    inputs = _model_inputs(model, processor, images, prompts)
    with _generation_defaults(model, harness_generation_config(model, processor, max_new_tokens)):
        output = model.generate(**inputs, output_logits=first_logits, return_dict_in_generate=True)
    texts = processor.tokenizer.batch_decode(
        output.sequences[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
    )
    return texts, output.logits[0].float() if first_logits else None


def generate_answers(model, processor, images, prompts, max_new_tokens: int = MAX_NEW_TOKENS) -> list[str]:
    """Raw generations (special tokens skipped, nothing cut) for a batch of left-padded prompts."""
    return _generate(model, processor, images, prompts, max_new_tokens)[0]


def yes_no_token_ids(tokenizer) -> tuple[list[int], list[int]]:
    """The token ids of the single-token spellings of "yes" and of "no"."""

    def single_tokens(forms):
        ids = (tokenizer(form, add_special_tokens=False)["input_ids"] for form in forms)
        return sorted({token[0] for token in ids if len(token) == 1})

    yes, no = single_tokens(YES_FORMS), single_tokens(NO_FORMS)
    if not yes or not no:
        raise ValueError("The tokenizer has no single token for 'yes' or for 'no'; AUROC cannot be scored.")
    return yes, no


def yes_probabilities(logits: torch.Tensor, yes_ids: list[int], no_ids: list[int]) -> list[float]:
    """P(yes) / (P(yes) + P(no)) per row of answer-position logits, each word's spellings summed."""
    difference = torch.logsumexp(logits[:, yes_ids], dim=1) - torch.logsumexp(logits[:, no_ids], dim=1)
    return torch.sigmoid(difference).tolist()


@torch.no_grad()
def choice_losses(
    model, processor, images, prompts, choices: list[tuple[str, ...]], end_symbol: str
) -> list[list[float]]:
    """Mean token loss of `choice + end_symbol` after `BOS + prompt`, as the original's training-style forward,
    for every choice of every sample. Rows are right-padded so that padding never moves a token's position."""
    tokenizer = processor.tokenizer
    inputs = _model_inputs(model, processor, images, prompts)
    prefix = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    rows, targets, owners = [], [], []
    for index, sample_choices in enumerate(choices):
        prompt_ids = prefix + inputs["input_ids"][index][inputs["attention_mask"][index].bool()].tolist()
        for choice in sample_choices:
            choice_ids = tokenizer(choice + end_symbol, add_special_tokens=False)["input_ids"]
            rows.append(prompt_ids + choice_ids)
            targets.append([IGNORE_INDEX] * len(prompt_ids) + choice_ids)
            owners.append(index)
    length = max(len(row) for row in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([row + [pad] * (length - len(row)) for row in rows], device=model.device)
    labels = torch.tensor(
        [target + [IGNORE_INDEX] * (length - len(target)) for target in targets], device=model.device
    )
    attention_mask = torch.tensor(
        [[1] * len(row) + [0] * (length - len(row)) for row in rows], device=model.device
    )
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, pixel_values=inputs["pixel_values"][owners]
    ).logits.float()
    shifted = labels[:, 1:]
    token_losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), shifted, ignore_index=IGNORE_INDEX, reduction="none"
    )
    counted = (shifted != IGNORE_INDEX).sum(dim=1)
    row_losses = (token_losses.sum(dim=1) / counted).tolist()
    losses = [[] for _ in choices]
    for owner, loss in zip(owners, row_losses, strict=True):
        losses[owner].append(loss)
    return losses


def _ranked(model, processor, batch, pictures, prompts) -> list[dict]:
    """Each mode's choice losses and the lowest-loss choice."""
    choices = [sample.choices for sample in batch]
    outputs = [{} for _ in batch]
    for mode in MODES:
        images = [picture[mode] for picture in pictures]
        losses = choice_losses(model, processor, images, prompts, choices, RANKING_END_SYMBOLS[mode])
        for output, sample, sample_losses in zip(outputs, batch, losses, strict=True):
            chosen = min(range(len(sample_losses)), key=sample_losses.__getitem__)
            output[mode] = {
                "chosen": chosen,
                "answer": sample.choices[chosen],
                "choice_losses": sample_losses,
            }
    return outputs


def _generation(text: str) -> dict:
    return {"generation": text, "answer": harness_answer(text)}


def _generated(model, processor, benchmark, pictures, prompts, max_new_tokens) -> list[dict]:
    """Each mode's generation; the paper mode reruns only the images whose pixels differ from the standard's."""
    texts, logits = _generate(
        model,
        processor,
        [p["standard"] for p in pictures],
        prompts,
        max_new_tokens,
        first_logits=benchmark.auroc,
    )
    paper_texts = list(texts)
    differing = [i for i, p in enumerate(pictures) if not _same_pixels(p["paper"], p["standard"])]
    if differing:
        rerun = generate_answers(
            model,
            processor,
            [pictures[i]["paper"] for i in differing],
            [prompts[i] for i in differing],
            max_new_tokens,
        )
        for index, text in zip(differing, rerun, strict=True):
            paper_texts[index] = text
    outputs = [
        {"paper": _generation(paper), "standard": _generation(standard)}
        for paper, standard in zip(paper_texts, texts, strict=True)
    ]
    if benchmark.auroc:
        probabilities = yes_probabilities(logits, *yes_no_token_ids(processor.tokenizer))
        for output, probability in zip(outputs, probabilities, strict=True):
            output["standard"]["yes_probability"] = probability
    return outputs


def predict_batches(
    model,
    processor,
    benchmark: Benchmark,
    split: str,
    samples: list[Sample],
    batch_size: int = 10,
    max_new_tokens: int = MAX_NEW_TOKENS,
    skip: Collection[str] = (),
    progress: bool = True,
) -> Iterator[list[dict]]:
    """The records of each batch as it is finished: the item, its prompt and references, and each mode's output
    (generation and processed answer, or chosen choice and every choice's loss). Batches are always the same
    stretches of `samples`; items whose question id is in `skip` are left out of theirs, so a resumed run puts
    the remaining items in the batches the interrupted run would have."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    key = result_key(benchmark, split)
    iterator = iter(samples)
    with tqdm(total=len(samples), desc=key, unit="sample", disable=not progress) as bar:
        while stretch := list(islice(iterator, batch_size)):
            batch = [sample for sample in stretch if sample.question_id not in skip]
            bar.update(len(stretch) - len(batch))
            if not batch:
                continue
            prompts = [benchmark.prompt(sample) for sample in batch]
            pictures = [mode_images(sample.image) for sample in batch]
            if benchmark.ranking:
                outputs = _ranked(model, processor, batch, pictures, prompts)
            else:
                outputs = _generated(model, processor, benchmark, pictures, prompts, max_new_tokens)
            yield [
                {
                    "benchmark": key,
                    "question_id": sample.question_id,
                    "prompt": prompt,
                    "references": sample.reference,
                    **({"choices": list(sample.choices)} if benchmark.ranking else {}),
                    **output,
                }
                for sample, prompt, output in zip(batch, prompts, outputs, strict=True)
            ]
            bar.update(len(batch))


def predict(
    model, processor, benchmark: Benchmark, split: str, samples: list[Sample], **kwargs
) -> list[dict]:
    """Every sample's record (see `predict_batches`)."""
    return [
        record
        for batch in predict_batches(model, processor, benchmark, split, samples, **kwargs)
        for record in batch
    ]


def score(benchmark: Benchmark, records: list[dict]) -> dict[str, dict]:
    """Each mode's metric over its outputs: `{mode: {"accuracy": ..., "scores": [...]}}` (and `roc_auc` where the
    benchmark has one). Metrics see the raw generation (their rules include the post-processing) or, for ranking,
    the chosen index."""
    field = "chosen" if benchmark.ranking else "generation"
    references = [record["references"] for record in records]
    results = {}
    for mode in MODES:
        extra = {}
        if benchmark.auroc and mode == "standard":
            extra["yes_probabilities"] = [record[mode]["yes_probability"] for record in records]
        predictions = [record[mode][field] for record in records]
        results[mode] = load_metric(benchmark.metric, mode).compute(
            predictions=predictions, references=references, **extra
        )
    return results


def benchmark_result(benchmark: Benchmark, split: str, records: list[dict]) -> dict:
    """One benchmark split's summary per mode and every record with its score in each mode."""
    results = score(benchmark, records)
    predictions = [
        {**record, **{mode: {**record[mode], "score": results[mode]["scores"][index]} for mode in MODES}}
        for index, record in enumerate(records)
    ]
    summary = {"benchmark": benchmark.name, "split": split, "num_samples": len(records)}
    for mode in MODES:
        summary[mode] = {name: value for name, value in results[mode].items() if name != "scores"}
    return {"key": result_key(benchmark, split), "summary": summary, "predictions": predictions}


def evaluate_benchmark(
    model, processor, benchmark: Benchmark, split: str, samples: list[Sample], **kwargs
) -> dict:
    """Predict and score one benchmark split in memory (`tinygptv eval` also saves each batch as it goes)."""
    return benchmark_result(benchmark, split, predict(model, processor, benchmark, split, samples, **kwargs))

"""Running a model over a benchmark: batched greedy generation, or likelihood ranking of choices, then both
scoring modes.

Decoding is the original harness's: greedy, 20 new tokens, stopping only at the end-of-text token (the
checkpoint's own stop string is switched off, because the paper rules read past it). Ranking scores each
(sample, choice) pair by its own mean token loss, so a batch gives the answers batch size 1 gives; the original
compared batch-mean losses, which is only right at batch size 1.
"""

from contextlib import contextmanager
from itertools import islice

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

from ..processors.image_processing_tinygptv import load_image
from ..processors.templates import END_SYMBOL
from .answers import clean_answer
from .benchmarks import Benchmark, result_key
from .metric_base import MODES, load_metric
from .samples import Sample

MAX_NEW_TOKENS = 20


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


def _model_inputs(model, processor, images, prompts):
    inputs = processor(images=images, text=prompts, return_tensors="pt", padding=True).to(model.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    return inputs


@torch.no_grad()
def generate_answers(model, processor, images, prompts, max_new_tokens: int = MAX_NEW_TOKENS) -> list[str]:
    """Raw generations (special tokens skipped, nothing cut) for a batch of left-padded prompts."""
    inputs = _model_inputs(model, processor, images, prompts)
    with _generation_defaults(model, harness_generation_config(model, processor, max_new_tokens)):
        output = model.generate(**inputs)
    return processor.tokenizer.batch_decode(
        output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
    )


@torch.no_grad()
def choice_losses(model, processor, images, prompts, choices: list[tuple[str, ...]]) -> list[list[float]]:
    """Mean token loss of `choice + ###` after `BOS + prompt`, as the original's training-style forward, for every
    choice of every sample. Rows are right-padded so that padding never moves a token's position."""
    tokenizer = processor.tokenizer
    inputs = _model_inputs(model, processor, images, prompts)
    prefix = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    rows, targets, owners = [], [], []
    for index, sample_choices in enumerate(choices):
        prompt_ids = prefix + inputs["input_ids"][index][inputs["attention_mask"][index].bool()].tolist()
        for choice in sample_choices:
            choice_ids = tokenizer(choice + END_SYMBOL, add_special_tokens=False)["input_ids"]
            rows.append(prompt_ids + choice_ids)
            targets.append([-100] * len(prompt_ids) + choice_ids)
            owners.append(index)
    length = max(len(row) for row in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([row + [pad] * (length - len(row)) for row in rows], device=model.device)
    labels = torch.tensor(
        [target + [-100] * (length - len(target)) for target in targets], device=model.device
    )
    attention_mask = torch.tensor(
        [[1] * len(row) + [0] * (length - len(row)) for row in rows], device=model.device
    )
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, pixel_values=inputs["pixel_values"][owners]
    ).logits.float()
    shifted = labels[:, 1:]
    token_losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), shifted, ignore_index=-100, reduction="none"
    )
    counted = (shifted != -100).sum(dim=1)
    row_losses = (token_losses.sum(dim=1) / counted).tolist()
    losses = [[] for _ in choices]
    for owner, loss in zip(owners, row_losses, strict=True):
        losses[owner].append(loss)
    return losses


def _batches(items, size: int):
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def predict(
    model,
    processor,
    benchmark: Benchmark,
    samples: list[Sample],
    batch_size: int = 10,
    max_new_tokens: int = MAX_NEW_TOKENS,
    progress: bool = True,
    description: str | None = None,
) -> list[dict]:
    """One record per sample: the prompt, the raw generation and the processed answer; for ranking, the chosen
    choice, its index and every choice's loss."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    records = []
    with tqdm(
        total=len(samples), desc=description or benchmark.name, unit="sample", disable=not progress
    ) as bar:
        for batch in _batches(samples, batch_size):
            images = [load_image(sample.image) for sample in batch]
            prompts = [benchmark.prompt(sample) for sample in batch]
            if benchmark.ranking:
                losses = choice_losses(
                    model, processor, images, prompts, [sample.choices for sample in batch]
                )
                records.extend(_ranking_record(*item) for item in zip(batch, prompts, losses, strict=True))
            else:
                texts = generate_answers(model, processor, images, prompts, max_new_tokens)
                records.extend(
                    {"prompt": prompt, "generation": text, "answer": clean_answer(text)}
                    for prompt, text in zip(prompts, texts, strict=True)
                )
            bar.update(len(batch))
    return records


def _ranking_record(sample: Sample, prompt: str, losses: list[float]) -> dict:
    chosen = min(range(len(losses)), key=losses.__getitem__)
    choice = sample.choices[chosen]
    return {
        "prompt": prompt,
        "generation": choice,
        "answer": choice,
        "chosen": chosen,
        "choices": list(sample.choices),
        "choice_losses": losses,
    }


def score(benchmark: Benchmark, samples: list[Sample], records: list[dict]) -> dict[str, dict]:
    """Each mode's metric over the records: `{mode: {"accuracy": ..., "scores": [...]}}`. Metrics see the raw
    generation (their rules include the post-processing) or, for ranking, the chosen index."""
    field = "chosen" if benchmark.ranking else "generation"
    inputs = {
        "predictions": [record[field] for record in records],
        "references": [s.reference for s in samples],
    }
    return {mode: load_metric(benchmark.metric, mode).compute(**inputs) for mode in MODES}


def evaluate_benchmark(
    model, processor, benchmark: Benchmark, split: str, samples: list[Sample], **kwargs
) -> dict:
    """Predict and score one benchmark split: its summary per mode and every prediction with its scores."""
    key = result_key(benchmark, split)
    records = predict(model, processor, benchmark, samples, description=key, **kwargs)
    results = score(benchmark, samples, records)
    predictions = [
        {
            "benchmark": key,
            "question_id": sample.question_id,
            **record,
            "references": sample.reference,
            "scores": {mode: results[mode]["scores"][index] for mode in MODES},
        }
        for index, (sample, record) in enumerate(zip(samples, records, strict=True))
    ]
    summary = {"benchmark": benchmark.name, "split": split, "num_samples": len(samples)}
    summary.update({mode: {"accuracy": results[mode]["accuracy"]} for mode in MODES})
    return {"key": key, "summary": summary, "predictions": predictions}

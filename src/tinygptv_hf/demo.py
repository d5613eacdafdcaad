"""`tinygptv demo`: the whole product on a bundled default, on CPU, in minutes.

A synthetic world is written in the original's real on-disk formats; the `tiny` stage-0 model is built; the four
stages run through the same Trainer subclasses and recipe mechanism as real training (the demo recipes ship in
`tinygptv_hf/recipes/demo_stage*.yaml`); after every stage the checkpoint is scored on held-out scenes; at the end
the final folder is reloaded with `AutoModelForImageTextToText(trust_remote_code=True)` and answers questions.
"""

import json
import re
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForImageTextToText, AutoProcessor

from .cards import recipe_card
from .checkpoint import init_checkpoint
from .data import blip_caption
from .data.synthetic import write_synthetic_world
from .evaluation.answers import box_iou
from .evaluation.refer import load_instances, load_refs
from .evaluation.runner import generate_answers
from .grounding import parse_grounded_text
from .processors import load_image
from .processors.templates import IMAGE_TOKEN
from .stages import STAGES, TRAINING_STAGES
from .trainers.recipe import Recipe, run_recipe


@dataclass(frozen=True)
class DemoSize:
    """How much data, how many steps per stage, how many held-out items: `FULL` is the measured default (README),
    `QUICK` checks the same pipeline end to end for CI."""

    n_train: int
    n_eval: int
    steps: tuple[int, int, int, int]
    batch_size: int
    eval_questions: int
    eval_refs: int
    eval_captions: int


FULL = DemoSize(
    n_train=3000,
    n_eval=100,
    steps=(1500, 100, 100, 1200),
    batch_size=16,
    eval_questions=200,
    eval_refs=100,
    eval_captions=40,
)
QUICK = DemoSize(
    n_train=96, n_eval=16, steps=(4, 2, 2, 4), batch_size=8, eval_questions=24, eval_refs=12, eval_captions=8
)


# `tiny`'s structure, set up to learn from random weights within the demo's minutes (see presets.py).
DEMO_PRESET = "tiny-demo"


def stage_recipe(stage: int, variables: dict, size: DemoSize, seed: int) -> Recipe:
    text = resources.files("tinygptv_hf").joinpath(f"recipes/demo_stage{stage}.yaml")
    recipe = Recipe.load(text, variables)
    recipe.training.update(
        max_steps=size.steps[stage - 1],
        per_device_train_batch_size=size.batch_size,
        logging_steps=1 if size.steps[stage - 1] < 20 else 10,
        seed=seed,
        data_seed=seed,
    )
    return recipe


def word_f1(prediction: str, reference: str) -> float:
    predicted, expected = re.findall(r"\w+", prediction.lower()), re.findall(r"\w+", reference.lower())
    common = sum(min(predicted.count(word), expected.count(word)) for word in set(expected))
    if not common:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


class HeldOut:
    """The world's held-out evaluation sets: GQA-style questions by type, RefCOCO val boxes, reference captions."""

    def __init__(self, world: dict, size: DemoSize):
        images = Path(world["gqa_images"])
        questions = json.loads(Path(world["gqa_testdev"]).read_text())[: size.eval_questions]
        # Questions are normalised as the stage-4 training text was (blip_caption: lower case, no punctuation).
        self.questions = [
            (images / q["image"], blip_caption(q["question"]), q["answer"], q["types"]["detailed"])
            for q in questions
        ]
        captions = json.loads(Path(world["caption_eval"]).read_text())[: size.eval_captions]
        self.captions = [(images / c["image"], c["caption"]) for c in captions]
        refer_root = Path(world["refer_root"]) / "refcoco"
        image_entries, annotations = load_instances(refer_root / "instances.json")
        refs = [
            ref
            for ref in load_refs(refer_root / "refs(unc).p")
            if ref["split"] == world["refcoco_eval_split"]
        ]
        coco = Path(world["coco_images"])
        self.refs = []
        for ref in refs[: size.eval_refs]:
            entry = image_entries[ref["image_id"]]
            x, y, w, h = annotations[ref["ann_id"]]["bbox"]
            self.refs.append((coco / entry["file_name"], ref["sentences"][0]["sent"], (x, y, x + w, y + h)))


def chat_prompt(processor, text: str | None) -> str:
    """The checkpoint's own default template around an image (and the text, if any)."""
    content = [{"type": "image"}] + ([{"type": "text", "text": text}] if text else [])
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


def answer(model, processor, image_paths, prompts, max_new_tokens: int, batch_size: int = 16) -> list[str]:
    answers = []
    for start in range(0, len(prompts), batch_size):
        images = [load_image(path) for path in image_paths[start : start + batch_size]]
        raw = generate_answers(model, processor, images, prompts[start : start + batch_size], max_new_tokens)
        answers.extend(processor.clean_answer(text) for text in raw)
    return answers


def evaluate_checkpoint(folder: Path, held_out: HeldOut, image_alone_captions: bool = False) -> dict:
    """Held-out scores; `image_alone_captions` asks for captions in the layout stages 1-2 train on (BOS and the
    image, no instruction) rather than the checkpoint's chat template."""
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    paths = [q[0] for q in held_out.questions]
    predictions = answer(
        model, processor, paths, [chat_prompt(processor, f"[vqa] {q[1]}") for q in held_out.questions], 6
    )
    by_type: dict[str, list[bool]] = {}
    for (_, _, truth, kind), predicted in zip(held_out.questions, predictions, strict=True):
        by_type.setdefault(kind, []).append(predicted.strip().lower() == truth.lower())
    correct = [hit for hits in by_type.values() for hit in hits]

    paths = [r[0] for r in held_out.refs]
    boxes = answer(
        model,
        processor,
        paths,
        [chat_prompt(processor, f"[refer] give me the location of {r[1]}") for r in held_out.refs],
        16,
    )
    ious = []
    for (path, _, truth), text in zip(held_out.refs, boxes, strict=True):
        width, height = load_image(path).size
        parsed = parse_grounded_text(text, width, height)
        ious.append(box_iou(parsed[0].box, truth) if parsed else 0.0)

    paths = [c[0] for c in held_out.captions]
    caption_prompt = (
        processor.tokenizer.bos_token + IMAGE_TOKEN if image_alone_captions else chat_prompt(processor, None)
    )
    captions = answer(model, processor, paths, [caption_prompt] * len(paths), 24)
    return {
        "vqa_accuracy": sum(correct) / len(correct),
        "vqa_by_type": {kind: sum(hits) / len(hits) for kind, hits in sorted(by_type.items())},
        "refer_iou50": sum(iou >= 0.5 for iou in ious) / len(ious),
        "caption_f1": sum(word_f1(p, c[1]) for p, c in zip(captions, held_out.captions, strict=True))
        / len(captions),
    }


def final_loss(log_history: list[dict]) -> float | None:
    losses = [entry["loss"] for entry in log_history if "loss" in entry]
    return losses[-1] if losses else None


def run_demo(output_dir, seed: int = 0, quick: bool = False, echo=print) -> dict:
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        # Stage folders of an earlier run would mix its checkpoints with this run's.
        raise FileExistsError(f"demo output folder {output_dir} is not empty; pass a new --output or remove it")
    size = QUICK if quick else FULL
    torch.manual_seed(seed)
    started = time.perf_counter()
    world = write_synthetic_world(output_dir / "data", seed=seed, n_train=size.n_train, n_eval=size.n_eval)
    held_out = HeldOut(world, size)
    echo(
        f"synthetic world: {size.n_train} training scenes, {size.n_eval} held-out scenes in {output_dir / 'data'}"
    )

    clock = time.perf_counter()
    model_dir = init_checkpoint(DEMO_PRESET, output_dir / "stage-0", seed=seed)
    rows = [
        {
            "stage": 0,
            "seconds": time.perf_counter() - clock,
            "loss": None,
            **evaluate_checkpoint(model_dir, held_out),
        }
    ]
    histories = {}
    for stage in tqdm(sorted(TRAINING_STAGES), desc="stages", unit="stage"):
        clock = time.perf_counter()
        variables = {**{k: str(v) for k, v in world.items() if isinstance(v, str)}, "model": str(model_dir)}
        variables["output"] = str(output_dir / f"stage-{stage}")
        recipe = stage_recipe(stage, variables, size, seed)
        result = run_recipe(recipe)
        recipe_card(recipe, result.final).save(result.final / "README.md")
        model_dir, histories[stage] = result.final, result.log_history
        seconds = time.perf_counter() - clock
        rows.append(
            {
                "stage": stage,
                "seconds": seconds,
                "loss": final_loss(result.log_history),
                **evaluate_checkpoint(
                    model_dir, held_out, image_alone_captions=STAGES[stage].prompt_template is None
                ),
            }
        )
        echo(format_row(rows[-1]))

    summary = {
        "stages": rows,
        "seconds": time.perf_counter() - started,
        "final_model": str(model_dir),
        "quick": quick,
    }
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    plot(histories, rows, output_dir)
    echo(format_table(rows))
    echo(show_answers(model_dir, held_out))
    echo(
        f"demo finished in {summary['seconds'] / 60:.1f} min: stage-4 VQA accuracy {rows[-1]['vqa_accuracy']:.0%}, "
        f"[refer] boxes at IoU>=0.5 {rows[-1]['refer_iou50']:.0%}; results in {output_dir}"
    )
    return summary


def format_row(row: dict) -> str:
    loss = "-" if row["loss"] is None else f"{row['loss']:.3f}"
    return (
        f"{row['stage']:>5}  {row['seconds']:>7.0f}  {loss:>6}  {row['vqa_accuracy']:>6.1%}  "
        f"{row['refer_iou50']:>9.1%}  {row['caption_f1']:>10.2f}  "
        + " ".join(f"{kind}={value:.0%}" for kind, value in row["vqa_by_type"].items())
    )


def format_table(rows: list[dict]) -> str:
    header = "stage  seconds    loss     VQA  refer@0.5  caption F1  VQA by question type"
    return "\n".join([header, *map(format_row, rows)])


def show_answers(model_dir: Path, held_out: HeldOut, count: int = 5) -> str:
    """Reload the final folder as a user would (Auto class, remote code) and answer held-out questions."""
    model = AutoModelForImageTextToText.from_pretrained(model_dir, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    picked = held_out.questions[:count]
    answers = answer(
        model, processor, [q[0] for q in picked], [chat_prompt(processor, f"[vqa] {q[1]}") for q in picked], 6
    )
    lines = [f"answers of {model_dir} (reloaded with AutoModelForImageTextToText, trust_remote_code=True):"]
    lines += [
        f"  {path.name}: {question} -> {predicted!r} (truth {truth!r})"
        for (path, question, truth, _), predicted in zip(picked, answers, strict=True)
    ]
    return "\n".join(lines)


def plot(histories: dict[int, list[dict]], rows: list[dict], output_dir: Path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axis = pyplot.subplots(figsize=(7, 4))
    offset = 0
    for stage, history in histories.items():
        points = [(entry["step"] + offset, entry["loss"]) for entry in history if "loss" in entry]
        if points:
            axis.plot(*zip(*points, strict=True), label=f"stage {stage}")
        offset += max((entry.get("step", 0) for entry in history), default=0)
    axis.set(
        xlabel="step (all stages)", ylabel="training loss", title="TinyGPT-V demo: training loss per stage"
    )
    axis.legend()
    figure.savefig(output_dir / "loss.png", dpi=100, bbox_inches="tight")
    pyplot.close(figure)

    figure, axis = pyplot.subplots(figsize=(7, 4))
    stages = [row["stage"] for row in rows]
    for key, label in (
        ("vqa_accuracy", "VQA accuracy"),
        ("refer_iou50", "[refer] IoU>=0.5"),
        ("caption_f1", "caption F1"),
    ):
        axis.plot(stages, [row[key] for row in rows], marker="o", label=label)
    axis.set(
        xlabel="stage",
        ylabel="held-out score",
        ylim=(0, 1),
        xticks=stages,
        title="TinyGPT-V demo: held-out scores",
    )
    axis.legend()
    figure.savefig(output_dir / "accuracy.png", dpi=100, bbox_inches="tight")
    pyplot.close(figure)

"""`tinygptv demo`: the whole product on a bundled default, on CPU, in minutes.

A synthetic world is written in the original's real on-disk formats; the `tiny` stage-0 model is built; the four
stages run through the same Trainer subclasses and recipe mechanism as real training (the demo recipes ship in
`tinygptv_hf/recipes/demo_stage*.yaml`); after every stage the checkpoint is scored on held-out scenes; at the end
the final folder is reloaded with `AutoModelForImageTextToText(trust_remote_code=True)` and answers questions.
"""

import contextlib
import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import datasets
import huggingface_hub
import torch
import transformers
from tqdm.auto import tqdm
from transformers import AutoModelForImageTextToText, AutoProcessor
from transformers.trainer_callback import ProgressCallback

from .cards import recipe_card
from .checkpoint import init_checkpoint
from .data import blip_caption
from .data.synthetic import write_synthetic_world
from .evaluation.captions import pair_f1, word_f1
from .evaluation.metric_base import load_metric
from .evaluation.prompts import REFER_QUESTION
from .evaluation.refer import load_instances, load_refs
from .evaluation.runner import generate_answers
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
    steps=(1500, 100, 100, 3000),
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


@dataclass(frozen=True)
class HeldOutQuestion:
    image: Path
    question: str
    answer: str
    kind: str


@dataclass(frozen=True)
class HeldOutReference:
    """`reference` is what the harness's `refcoco` metric takes: the COCO box and the image's size."""

    image: Path
    expression: str
    reference: dict


@dataclass(frozen=True)
class HeldOutCaption:
    image: Path
    caption: str


@dataclass(frozen=True)
class HeldOut:
    """The world's held-out evaluation sets: GQA-style questions by type, RefCOCO val boxes, reference captions."""

    questions: list[HeldOutQuestion]
    references: list[HeldOutReference]
    captions: list[HeldOutCaption]

    @classmethod
    def from_world(cls, world: dict, size: DemoSize) -> "HeldOut":
        images = Path(world["gqa_images"])
        questions = json.loads(Path(world["gqa_testdev"]).read_text())[: size.eval_questions]
        captions = json.loads(Path(world["caption_eval"]).read_text())[: size.eval_captions]
        refer_root = Path(world["refer_root"]) / "refcoco"
        image_entries, annotations = load_instances(refer_root / "instances.json")
        refs = [
            ref
            for ref in load_refs(refer_root / "refs(unc).p")
            if ref["split"] == world["refcoco_eval_split"]
        ][: size.eval_refs]
        coco = Path(world["coco_images"])
        return cls(
            # Questions are normalised as the stage-4 training text was (blip_caption: lower case, no punctuation).
            questions=[
                HeldOutQuestion(
                    images / q["image"], blip_caption(q["question"]), q["answer"], q["types"]["detailed"]
                )
                for q in questions
            ],
            references=[
                HeldOutReference(
                    coco / image_entries[ref["image_id"]]["file_name"],
                    ref["sentences"][0]["sent"],
                    {
                        "bbox": annotations[ref["ann_id"]]["bbox"],
                        "width": image_entries[ref["image_id"]]["width"],
                        "height": image_entries[ref["image_id"]]["height"],
                    },
                )
                for ref in refs
            ],
            captions=[HeldOutCaption(images / c["image"], c["caption"]) for c in captions],
        )


def chat_prompt(processor, text: str | None) -> str:
    """The checkpoint's own default template around an image (and the text, if any)."""
    content = [{"type": "image"}] + ([{"type": "text", "text": text}] if text else [])
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


def generations(
    model, processor, image_paths, prompts, max_new_tokens: int, batch_size: int = 16
) -> list[str]:
    """Raw generations, as the evaluation harness makes them (its greedy settings, nothing cut)."""
    texts = []
    for start in range(0, len(prompts), batch_size):
        images = [load_image(path) for path in image_paths[start : start + batch_size]]
        texts += generate_answers(
            model, processor, images, prompts[start : start + batch_size], max_new_tokens
        )
    return texts


def evaluate_checkpoint(folder: Path, held_out: HeldOut, image_alone_captions: bool) -> dict:
    """Held-out scores, VQA and boxes by the harness's own metrics (`tinygptv eval`'s `gqa` and `refcoco`, standard
    rules) on the checkpoint's own chat template; `image_alone_captions` asks for captions in the layout stages 0-2
    train on (BOS and the image, no instruction)."""
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    questions = held_out.questions
    said = generations(
        model,
        processor,
        [q.image for q in questions],
        [chat_prompt(processor, f"[vqa] {q.question}") for q in questions],
        6,
    )
    vqa = load_metric("gqa", "standard").compute(predictions=said, references=[q.answer for q in questions])
    by_type: dict[str, list[float]] = {}
    for question, hit in zip(questions, vqa["scores"], strict=True):
        by_type.setdefault(question.kind, []).append(hit)

    references = held_out.references
    said = generations(
        model,
        processor,
        [r.image for r in references],
        [chat_prompt(processor, REFER_QUESTION.format(r.expression)) for r in references],
        16,
    )
    boxes = load_metric("refcoco", "standard").compute(
        predictions=said, references=[r.reference for r in references]
    )

    captions = held_out.captions
    caption_prompt = (
        processor.tokenizer.bos_token + IMAGE_TOKEN if image_alone_captions else chat_prompt(processor, None)
    )
    said = generations(model, processor, [c.image for c in captions], [caption_prompt] * len(captions), 24)
    captioned = [(processor.clean_answer(text), c.caption) for text, c in zip(said, captions, strict=True)]
    return {
        "vqa_accuracy": vqa["accuracy"] / 100,
        "vqa_by_type": {kind: sum(hits) / len(hits) for kind, hits in sorted(by_type.items())},
        "refer_iou50": boxes["accuracy"] / 100,
        "caption_f1": sum(word_f1(text, truth) for text, truth in captioned) / len(captioned),
        "caption_pairs": sum(pair_f1(text, truth) for text, truth in captioned) / len(captioned),
    }


def stage_row(stage: int, folder: Path, held_out: HeldOut, seconds: float, log_history: list[dict]) -> dict:
    """One line of the demo's table: the stage's time, first and last training loss, held-out scores."""
    losses = [entry["loss"] for entry in log_history if "loss" in entry]
    return {
        "stage": stage,
        "seconds": seconds,
        "first_loss": losses[0] if losses else None,
        "loss": losses[-1] if losses else None,
        **evaluate_checkpoint(folder, held_out, image_alone_captions=STAGES[stage].prompt_template is None),
    }


LOG_FILE = "demo.log"
# Libraries whose messages and warnings go to the demo's log file instead of the console.
LIBRARY_LOGGERS = (
    "transformers",
    "datasets",
    "huggingface_hub",
    "accelerate",
    "peft",
    "tinygptv_hf",
    "py.warnings",
)
logger = logging.getLogger(__name__)


class StageProgress(ProgressCallback):
    """One bar per stage with the last logged loss in its postfix; every log entry goes to the log file, not the
    console (Trainer's own display prints each one as a dict between bar redraws)."""

    def __init__(self, stage: int):
        super().__init__()
        self.stage = stage

    def on_train_begin(self, args, state, control, **kwargs):
        self.training_bar = tqdm(
            total=state.max_steps, desc=f"stage {self.stage}", unit="step", dynamic_ncols=True, leave=True
        )
        self.current_step = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        logger.info("stage %d step %d %s", self.stage, state.global_step, json.dumps(logs))
        if self.training_bar is not None and "loss" in logs:
            self.training_bar.set_postfix(loss=f"{logs['loss']:.3f}")


@contextlib.contextmanager
def libraries_logging_to(path: Path):
    """The libraries' log messages, warnings and loading bars go to `path` while the demo runs; the console keeps
    the stage bars, the score rows and the answers. Everything is put back afterwards."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = []
    for name in (*LIBRARY_LOGGERS, __name__):
        library_logger = logging.getLogger(name)
        saved.append(
            (library_logger, library_logger.handlers[:], library_logger.propagate, library_logger.level)
        )
        library_logger.handlers[:] = [handler]
        library_logger.propagate = False
        library_logger.setLevel(logging.INFO if name == __name__ else logging.WARNING)
    bars = (
        (
            transformers.utils.logging.is_progress_bar_enabled(),
            transformers.utils.logging.enable_progress_bar,
        ),
        (not datasets.utils.are_progress_bars_disabled(), datasets.enable_progress_bars),
        (not huggingface_hub.utils.are_progress_bars_disabled(), huggingface_hub.utils.enable_progress_bars),
    )
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    huggingface_hub.utils.disable_progress_bars()
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        for was_enabled, enable in bars:
            if was_enabled:
                enable()
        for library_logger, handlers, propagate, level in saved:
            library_logger.handlers[:] = handlers
            library_logger.propagate = propagate
            library_logger.setLevel(level)
        handler.close()


def run_demo(output_dir, seed: int = 0, quick: bool = False, echo=print) -> dict:
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        # Stage folders of an earlier run would mix its checkpoints with this run's.
        raise FileExistsError(
            f"demo output folder {output_dir} is not empty; pass a new --output or remove it"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    with libraries_logging_to(output_dir / LOG_FILE):
        return _run_demo(output_dir, seed, QUICK if quick else FULL, echo)


def _run_demo(output_dir: Path, seed: int, size: DemoSize, echo) -> dict:
    torch.manual_seed(seed)
    started = time.perf_counter()
    world = write_synthetic_world(output_dir / "data", seed=seed, n_train=size.n_train, n_eval=size.n_eval)
    held_out = HeldOut.from_world(world, size)
    echo(
        f"synthetic world: {size.n_train} training scenes, {size.n_eval} held-out scenes in {output_dir / 'data'}; "
        f"libraries' messages and the training logs go to {output_dir / LOG_FILE}"
    )

    clock = time.perf_counter()
    model_dir = init_checkpoint(DEMO_PRESET, output_dir / "stage-0", seed=seed)
    rows = [stage_row(0, model_dir, held_out, time.perf_counter() - clock, [])]
    echo(format_table(rows))
    histories = {}
    for stage in sorted(TRAINING_STAGES):
        clock = time.perf_counter()
        variables = {**{k: str(v) for k, v in world.items() if isinstance(v, str)}, "model": str(model_dir)}
        variables["output"] = str(output_dir / f"stage-{stage}")
        recipe = stage_recipe(stage, variables, size, seed)
        result = run_recipe(recipe, trainer_callbacks=[StageProgress(stage)])
        recipe_card(recipe, result.final).save(result.final / "README.md")
        model_dir, histories[stage] = result.final, result.log_history
        rows.append(stage_row(stage, model_dir, held_out, time.perf_counter() - clock, result.log_history))
        echo(format_row(rows[-1]))

    summary = {
        "stages": rows,
        "seconds": time.perf_counter() - started,
        "final_model": str(model_dir),
        "quick": size is QUICK,
    }
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    plot(histories, rows, output_dir)
    echo(format_table(rows))
    echo(show_answers(model_dir, held_out))
    echo(
        f"demo finished in {summary['seconds'] / 60:.1f} min: stage-4 VQA accuracy {rows[-1]['vqa_accuracy']:.0%}, "
        f"[refer] boxes at IoU>0.5 {rows[-1]['refer_iou50']:.0%}; results in {output_dir}"
    )
    return summary


def format_row(row: dict) -> str:
    loss = "-" if row["loss"] is None else f"{row['loss']:.3f}"
    return (
        f"{row['stage']:>5}  {row['seconds']:>7.0f}  {loss:>6}  {row['vqa_accuracy']:>6.1%}  "
        f"{row['refer_iou50']:>9.1%}  {row['caption_f1']:>10.2f}  {row['caption_pairs']:>13.2f}  "
        + " ".join(f"{kind}={value:.0%}" for kind, value in row["vqa_by_type"].items())
    )


def format_table(rows: list[dict]) -> str:
    header = "stage  seconds    loss     VQA  refer@0.5  caption F1  caption pairs  VQA by question type"
    return "\n".join([header, *map(format_row, rows)])


def show_answers(model_dir: Path, held_out: HeldOut, count: int = 5) -> str:
    """Reload the final folder as a user without this package would (Auto class, its remote code) and answer
    held-out questions."""
    picked = held_out.questions[:count]
    script = resources.files("tinygptv_hf").joinpath("resources/answer_without_package.py")
    result = subprocess.run(
        [sys.executable, str(script), str(model_dir)],
        input=json.dumps([[str(q.image), q.question] for q in picked]),
        capture_output=True,
        text=True,
        check=True,
    )
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    lines = [f"answers of {model_dir} (reloaded with AutoModelForImageTextToText, trust_remote_code=True):"]
    lines += [
        f"  {q.image.name}: {q.question} -> {predicted!r} (truth {q.answer!r})"
        for q, predicted in zip(picked, answers, strict=True)
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
        ("refer_iou50", "[refer] IoU>0.5"),
        ("caption_f1", "caption word F1"),
        ("caption_pairs", "caption colour-shape pairs F1"),
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

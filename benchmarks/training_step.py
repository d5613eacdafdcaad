"""One stage-2 training step of the paper-size model (`phi2` preset): seconds, peak memory, and the FLOP floor.

Stage 2 as the package trains it: `prepare_model_for_stage(model, STAGES[2])` (LoRA r=64 on the language
model's attention projections; projector and norm weights trainable; the rest frozen), gradient checkpointing,
AdamW, batch 1 built by the stage's collator (one 224 px image, a caption cut at 32 tokens). Matmuls run under
bf16 autocast where the hardware has fast bf16 kernels (measured here first). Each mode runs in its own process:

    fp32         every weight float32, as a model loaded in float32 (built in the process, like a zero-copy load)
    bf16-frozen  frozen weights bf16 from the bf16 checkpoint of `inference.py prepare`, trainable ones float32

    python benchmarks/training_step.py [--modes fp32 bf16-frozen] [--root DIR]
"""

import argparse
import json
import time
from pathlib import Path

import modes
import torch
from _common import (
    device,
    machine,
    matmul_throughput,
    peak_memory_gb,
    run_isolated,
    synchronize,
)

# Training mode -> the mode of modes.py that loads its model (bf16-frozen: the bf16 checkpoint).
MODES = {"fp32": "fp32", "bf16-frozen": "bf16"}


def load(mode: str, root: Path, preset: str):
    from tinygptv_hf.tokenization import build_tiny_tokenizer

    return modes.load(MODES[mode], root, modes.Sizes(preset)), build_tiny_tokenizer()


def one_batch(model, tokenizer) -> dict:
    from PIL import Image

    from tinygptv_hf.checkpoint import build_processor
    from tinygptv_hf.trainers import STAGES, TinyGPTVCollator

    spec = STAGES[2]
    collator = TinyGPTVCollator(
        build_processor(tokenizer, model.config, stage=2),
        prompt_template=spec.prompt_template,
        end_symbol=spec.end_symbol,
        max_text_length=spec.max_text_length,
    )
    pixels = torch.randint(
        0, 256, (spec.image_size, spec.image_size, 3), generator=torch.Generator().manual_seed(0)
    )
    caption = "a small brown dog runs across a green field towards a red ball while two children watch " * 2
    sample = {
        "image": Image.fromarray(pixels.to(torch.uint8).numpy()),
        "turns": [{"instruction": "", "answer": caption}],
    }
    return {key: value.to(device()) for key, value in collator([sample]).items()}


def measure(mode: str, root: Path, preset: str, autocast: bool) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from tinygptv_hf.trainers import STAGES, prepare_model_for_stage

    if mode == "bf16-frozen" and not autocast:
        raise ValueError("bf16-frozen needs bf16 autocast, which this hardware has no fast kernels for")
    start = time.perf_counter()
    model, tokenizer = load(mode, root, preset)
    load_s = time.perf_counter() - start
    model = prepare_model_for_stage(model, STAGES[2])
    for module in model.modules():  # trainable modules (norms, projector, LoRA) stay float32, bias included
        if any(parameter.requires_grad for parameter in module.parameters(recurse=False)):
            module.float()
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.05)
    batch = one_batch(model, tokenizer)

    def step():
        with torch.autocast(device().type, dtype=torch.bfloat16, enabled=autocast):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize()
        return loss.item()

    counter = FlopCounterMode(display=False)
    times, losses = [], []
    for index in range(2):  # the first step also creates the optimizer state; FLOPs are counted on it
        start = time.perf_counter()
        if index == 0:
            with counter:
                losses.append(step())
        else:
            losses.append(step())
        times.append(time.perf_counter() - start)
    return {
        "mode": mode,
        "load_s": load_s,
        "trainable": sum(parameter.numel() for parameter in trainable),
        "total": sum(parameter.numel() for parameter in model.parameters()),
        "tokens": batch["input_ids"].shape[1],
        "step_s": times,
        "losses": losses,
        "flops": counter.get_total_flops(),
        "autocast_bf16": autocast,
        **peak_memory_gb(),
    }


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="phi2")
    parser.add_argument(
        "--root", type=Path, default=Path("/tmp/tinygptv_bench"), help="where `prepare` wrote"
    )
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--output", type=Path, help="JSON file for the raw results")
    parser.add_argument("--measure", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--autocast", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.root, args.preset, args.autocast)))
        return

    rates = {
        str(dtype).removeprefix("torch."): matmul_throughput(dtype)
        for dtype in (torch.float32, torch.bfloat16)
    }
    autocast = rates["bfloat16"] > rates["float32"]
    session = {"machine": machine(), "matmul_gflops": rates, "modes": []}
    for mode in args.modes:
        arguments = ["--measure", mode, "--root", str(args.root), "--preset", args.preset]
        row = {"mode": mode, **run_isolated(__file__, arguments + (["--autocast"] if autocast else []))}
        session["modes"].append(row)
        print(json.dumps(row), flush=True)
        if args.output:
            args.output.write_text(json.dumps(session, indent=1))

    m = session["machine"]
    print(
        f"\n{m['device']}, {m['cores']} cores, torch {m['torch']}, peft {m['peft']}, {m['date']}; matmul "
        f"float32 {rates['float32']:.0f} GFLOP/s, bf16 {rates['bfloat16']:.0f} GFLOP/s; bf16 autocast: {autocast}\n"
    )
    print(
        "| mode | trainable / all parameters | tokens | step 1 | step 2 | FLOPs | floor | reached | peak resident memory |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in session["modes"]:
        if "error" in row:
            print(f"| {row['mode']} | failed: {row['error']} | | | | | | | |")
            continue
        floor = row["flops"] / rates["bfloat16" if row["autocast_bf16"] else "float32"] / 1e9
        step = row["step_s"][1]
        print(
            f"| {row['mode']} | {row['trainable'] / 1e6:.1f} M / {row['total'] / 1e9:.2f} B | {row['tokens']} | "
            f"{row['step_s'][0]:.1f} s | {step:.1f} s | {row['flops'] / 1e12:.2f} T | {floor:.1f} s | "
            f"{floor / step:.0%} | {row['peak_rss_gb']:.1f} GB |"
        )


if __name__ == "__main__":
    main()

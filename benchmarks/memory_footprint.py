"""Memory of the paper-size model (`phi2` preset, about 3.9 B parameters) in each loading mode, on CPU.

A random checkpoint is written once (bf16, built on the meta device and filled in bulk, so no per-parameter Python
initialisation); each mode then loads it in a fresh process, which reports `model.get_memory_footprint()` and the
process's peak resident memory. fp32 needs about 16 GB: run this on a machine with at least 24 GB and nothing else
heavy running.

    python benchmarks/memory_footprint.py [--checkpoint DIR] [--modes fp32 fp16 bf16 int8 nf4 nf4-double]
"""

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

MODES = ["fp32", "fp16", "bf16", "int8", "nf4", "nf4-double"]


def write_checkpoint(folder: Path, preset: str) -> None:
    from tinygptv_hf import TinyGPTVForConditionalGeneration
    from tinygptv_hf.checkpoint import build_processor, fit_tokenizer, save_checkpoint
    from tinygptv_hf.presets import preset_config
    from tinygptv_hf.tokenization import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config = fit_tokenizer(preset_config(preset), tokenizer)
    with torch.device("meta"):
        model = TinyGPTVForConditionalGeneration(config)
    model = model.to(torch.bfloat16).to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.uniform_(-0.02, 0.02, generator=generator)
    save_checkpoint(model, build_processor(tokenizer, config), folder)


def count_parameters(folder: Path) -> int:
    from safetensors import safe_open

    total = 0
    for path in folder.glob("*.safetensors"):
        with safe_open(path, "pt") as weights:
            for key in weights.keys():
                total += math.prod(weights.get_slice(key).get_shape())
    return total


def measure(folder: Path, mode: str) -> dict:
    """Runs in its own process, so peak RSS belongs to this mode alone."""
    from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

    import tinygptv_hf  # noqa: F401  (registers the classes)

    options = {
        "fp32": dict(dtype=torch.float32),
        "fp16": dict(dtype=torch.float16),
        "bf16": dict(dtype=torch.bfloat16),
        "int8": dict(quantization_config=BitsAndBytesConfig(load_in_8bit=True)),
        "nf4": dict(quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")),
        "nf4-double": dict(
            quantization_config=BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True
            )
        ),
    }[mode]
    start = time.perf_counter()
    model = AutoModelForImageTextToText.from_pretrained(folder, **options)
    seconds = time.perf_counter() - start
    return {
        "mode": mode,
        "vision_dtype": str(model.model.vision_model.embeddings.patch_embedding.weight.dtype).removeprefix(
            "torch."
        ),
        "qformer_dtype": str(model.model.query_tokens.dtype).removeprefix("torch."),
        "footprint_gb": model.get_memory_footprint() / 1e9,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
        "load_seconds": seconds,
    }


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, default=Path("/tmp/tinygptv_phi2_random"))
    parser.add_argument("--preset", default="phi2", help="model size of a checkpoint written by this script")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=MODES)
    parser.add_argument("--measure", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.checkpoint, args.measure)))
        return

    if not (args.checkpoint / "config.json").exists():
        start = time.perf_counter()
        write_checkpoint(args.checkpoint, args.preset)
        print(
            f"wrote a random {args.preset} checkpoint to {args.checkpoint} in {time.perf_counter() - start:.0f} s"
        )
    rows = []
    for mode in args.modes:
        result = subprocess.run(
            [sys.executable, __file__, "--checkpoint", str(args.checkpoint), "--measure", mode],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            reason = (
                "killed (out of memory?)" if result.returncode < 0 else result.stderr.strip().splitlines()[-1]
            )
            rows.append({"mode": mode, "error": reason})
        else:
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)

    print(f"\n{count_parameters(args.checkpoint) / 1e9:.3f} B parameters\n")
    print("| mode | get_memory_footprint() | peak RSS | vision tower / Q-Former dtype | load time |")
    print("|---|---|---|---|---|")
    for row in rows:
        if "error" in row:
            print(f"| {row['mode']} | failed: {row['error']} | | | |")
        else:
            print(
                f"| {row['mode']} | {row['footprint_gb']:.2f} GB | {row['peak_rss_gb']:.2f} GB | "
                f"{row['vision_dtype']} / {row['qformer_dtype']} | {row['load_seconds']:.0f} s |"
            )


if __name__ == "__main__":
    main()

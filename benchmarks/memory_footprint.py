"""Memory of the paper-size model (`phi2` preset, about 3.9 B parameters) in each loading mode, on CPU.

A random checkpoint is written once (bf16, built on the meta device and filled in bulk, so no per-parameter Python
initialisation); each mode then loads it in a fresh process, which reports `model.get_memory_footprint()` and the
process's peak resident memory. fp32 needs about 16 GB: run this on a machine with at least 24 GB and nothing else
heavy running.

    python benchmarks/memory_footprint.py [--checkpoint DIR] [--modes fp32 fp16 bf16 int8 nf4 nf4-double]
"""

import argparse
import json
import time
from pathlib import Path

import torch
from _common import count_parameters, peak_memory_gb, run_isolated, write_checkpoint

MODES = ["fp32", "fp16", "bf16", "int8", "nf4", "nf4-double"]


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
        **peak_memory_gb(),
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
        rows.append(
            {
                "mode": mode,
                **run_isolated(__file__, ["--checkpoint", str(args.checkpoint), "--measure", mode]),
            }
        )
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

"""Inference cost of the paper-size model (`phi2` preset, 3.9 B parameters) against the machine's physical floors.

Modes come from `modes.py` (one table for every benchmark). `prepare` writes the checkpoints they load, once.
`run` measures the floors (large tensor copy, square matmul, one Phi-2 MLP Linear at 1 and 8 rows), then each mode
in its own process: image encoding, prefill and decode at batch 1 and 8, generation through the image path, peak
resident memory, footprint, and logit drift against fp32 on a fixed prompt (fp32 first). `drift` runs only the
drift check (minutes where `run` takes most of an hour). `--text-layers N` gives the same model with N decoder
layers (checkpoints of its own). `report` prints the tables of one or several results files (a later file's mode
replaces an earlier one's); `report.py --docs docs/benchmarks.md` writes them into the page.

    python benchmarks/inference.py prepare [--preset phi2] [--text-layers N] [--root DIR] [--modes ...]
    python benchmarks/inference.py run [--modes fp32 cpu-int8 ...] [--text-layers N] [--output results.json]
    python benchmarks/inference.py drift [--modes fp32 cpu-int8 int8 ...] [--output drift.json]
    python benchmarks/inference.py report results.json [more.json ...]
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from unittest.mock import patch

import modes
import torch
from _common import (
    decode_steps,
    device,
    logit_drift,
    machine,
    machine_line,
    matmul_throughput,
    memory_bandwidth,
    peak_memory_gb,
    run_isolated,
    seconds,
    table,
    timed_generate,
)
from modes import Mode, Sizes, language_model
from transformers import masking_utils

TEXT_TOKENS = 23  # with 32 image tokens, the 55-token prompt of the original code's measurement
BATCHES = (1, 8)


# ---------------------------------------------------------------------------------------------- counting


def stored_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor holds; a tensor subclass (torchao's quantized weights, which report their float dtype)
    counts the tensors it is made of."""
    if hasattr(tensor, "__tensor_flatten__") and type(tensor) not in (torch.Tensor, torch.nn.Parameter):
        names, _ = tensor.__tensor_flatten__()
        return sum(stored_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def tensor_bytes(module) -> int:
    """Bytes of every parameter and buffer, with bitsandbytes' scales and quantization states."""
    total = 0
    for tensor in (*module.parameters(), *module.buffers()):
        total += stored_bytes(tensor)
        state = getattr(tensor, "quant_state", None)
        if state is not None:
            total += sum(v.numel() * v.element_size() for v in state.as_dict().values() if torch.is_tensor(v))
        scales = getattr(tensor, "SCB", None)
        if scales is not None:
            total += scales.numel() * scales.element_size()
    return total


def decode_bytes_per_step(model, batch: int, context: int, dtype: torch.dtype) -> int:
    """Weights a decode step must read (the language model without its embedding table, plus the LM head) and
    the key/value cache of `context` positions."""
    text = language_model(model)
    weights = tensor_bytes(text) - tensor_bytes(text.embed_tokens) + tensor_bytes(model.lm_head)
    config = text.config
    head_dim = config.hidden_size // config.num_attention_heads
    kv_heads = config.num_key_value_heads or config.num_attention_heads
    cache = batch * config.num_hidden_layers * 2 * kv_heads * head_dim * context * dtype.itemsize
    return weights + cache


def count_flops(entry: Mode, sizes: Sizes, batch: int, image_size: int | None) -> int:
    """FLOPs of one image encoding (`image_size`) or one prefill of the 55-token prompt, counted by
    torch.utils.flop_counter on the model's own forward over meta tensors (no computation)."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import PhiForCausalLM

    from tinygptv_hf import TinyGPTVForConditionalGeneration

    if entry.model == "phi":
        model_class, config = PhiForCausalLM, sizes.phi_config()
        hidden = config.hidden_size
    else:
        model_class = TinyGPTVForConditionalGeneration
        config = sizes.config(image_size=image_size or 224)
        hidden = config.text_config.hidden_size

    # Meta tensors hold no data, so the mask code must not look into the all-ones masks to skip them.
    def never_skip(*args, **kwargs):
        return False

    with (
        torch.device("meta"),
        patch.object(masking_utils, "_ignore_causal_mask_sdpa", never_skip),
        patch.object(masking_utils, "_ignore_bidirectional_mask_sdpa", never_skip),
    ):
        model = model_class(config)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            if image_size:
                model.get_image_features(torch.empty(batch, 3, image_size, image_size))
            else:
                embeds = torch.empty(batch, 32 + TEXT_TOKENS, hidden)
                mask = torch.ones(embeds.shape[:2], dtype=torch.long)
                model(inputs_embeds=embeds, attention_mask=mask, logits_to_keep=1, use_cache=False)
    return counter.get_total_flops()


# ---------------------------------------------------------------------------------------------- measuring


# ---------------------------------------------------------------------------------------------- prompts


def fixed_prompt(model, entry: Mode, batch: int = 1):
    """The same 55-token prompt in every mode: 32 image tokens then 23 text tokens, one random image."""
    generator = torch.Generator().manual_seed(0)
    config = model.config if entry.model == "phi" else model.config.text_config
    text = torch.randint(0, min(config.vocab_size, 1000), (1, TEXT_TOKENS), generator=generator)
    if entry.model == "phi":
        ids = torch.cat([torch.randint(0, 1000, (1, 32), generator=generator), text], dim=1)
        return {"input_ids": ids.expand(batch, -1).to(device())}
    ids = torch.cat([torch.full((1, 32), model.config.image_token_id), text], dim=1)
    size = model.config.vision_config.image_size
    pixels = torch.randn(1, 3, size, size, generator=generator)
    return {
        "input_ids": ids.expand(batch, -1).to(device()),
        "pixel_values": pixels.expand(batch, -1, -1, -1).to(device(), torch.float32),
    }


def prompt_embeddings(model, entry: Mode, prompt: dict) -> torch.Tensor:
    """The prompt as the language model sees it, image features spliced in, so prefill is timed alone."""
    if entry.model == "phi":
        return model.get_input_embeddings()(prompt["input_ids"])
    backbone = model.model
    embeds = backbone.embed_tokens(prompt["input_ids"])
    features = model.get_image_features(prompt["pixel_values"]).pooler_output.to(embeds.dtype)
    mask = backbone.get_placeholder_mask(prompt["input_ids"], embeds, features)
    return embeds.masked_scatter(mask, features)


# ---------------------------------------------------------------------------------------------- measuring


def measure(name: str, args) -> dict:
    """One mode, in its own process: everything this mode's rows need except the session's floors."""
    entry, sizes = modes.mode(name), Sizes(args.preset, args.text_layers)
    start = time.perf_counter()
    model = modes.load(name, args.root, sizes)
    result = {
        "mode": name,
        "what": entry.what,
        "compute_dtype": str(entry.dtype).removeprefix("torch."),
        "load_s": time.perf_counter() - start,
        "footprint_gb": tensor_bytes(model) / 1e9,
        "env": {key: os.environ.get(key) for key, _ in entry.env},
        "decode_bytes": {},
        "prefill_flops": {b: count_flops(entry, sizes, b, None) for b in BATCHES},
        "prefill_s": {},
        "decode_step_s": {},
    }
    with torch.inference_mode():
        prompt = fixed_prompt(model, entry)
        if entry.model == "tinygptv":
            result["encode_flops"] = {224: count_flops(entry, sizes, 1, 224)}
            result["encode_s"] = {
                224: seconds(lambda: model.get_image_features(prompt["pixel_values"]), args.repeats)
            }
            _, stamps = timed_generate(model, 4, **prompt)  # the real image path, once
            result["first_token_s"] = stamps[0]
        embeds = prompt_embeddings(model, entry, prompt)
        for batch in BATCHES:
            batch_embeds = embeds.expand(batch, -1, -1).contiguous()
            timed_generate(model, 2, inputs_embeds=batch_embeds[:, :8])  # warm-up of this batch size
            runs = [
                timed_generate(model, args.new_tokens, inputs_embeds=batch_embeds)[1]
                for _ in range(args.repeats)
            ]
            result["prefill_s"][batch] = [stamps[0] for stamps in runs]
            result["decode_step_s"][batch] = [step for stamps in runs for step in decode_steps(stamps)]
            context = embeds.shape[1] + args.new_tokens // 2
            result["decode_bytes"][batch] = decode_bytes_per_step(model, batch, context, entry.dtype)
        # Serving peak: image encoding and generation. The checks below add their own transients (all-position
        # logits, which make bitsandbytes dequantize the whole LM head; a 4x longer ViT sequence).
        result["peak_generation"] = peak_memory_gb()
        save_logits(model, entry, name, args)
        if entry.model == "tinygptv":
            for size in (size for size in args.sizes if size != model.config.vision_config.image_size):
                model.set_image_size(size)
                pixels = torch.randn(1, 3, size, size, device=device())
                result["encode_flops"][size] = count_flops(entry, sizes, 1, size)
                result["encode_s"][size] = seconds(
                    lambda pixels=pixels: model.get_image_features(pixels), max(1, args.repeats - 1), warmup=0
                )
    result.update(peak_memory_gb())
    # The machine is shared: the floors are measured again here, right after this mode's timings.
    result["floors"] = {"bandwidth": memory_bandwidth(), "matmul_gflops": matmul_rates()}
    return result


def logits_path(name: str, args) -> Path:
    return args.root / f"{Sizes(args.preset, args.text_layers).name}-{name}-logits.pt"


def save_logits(model, entry: Mode, name: str, args) -> None:
    """The mode's logits at every position of the fixed prompt (image included), for the drift against fp32."""
    logits = model(**fixed_prompt(model, entry)).logits.float()[0].cpu()
    torch.save(logits, logits_path(name, args))


def fixed_logits(name: str, args) -> dict:
    """`drift`'s child: one mode's logits saved, with its load time, footprint and peak memory."""
    start = time.perf_counter()
    model = modes.load(name, args.root, Sizes(args.preset, args.text_layers))
    result = {"mode": name, "what": modes.mode(name).what, "load_s": time.perf_counter() - start}
    with torch.inference_mode():
        save_logits(model, modes.mode(name), name, args)
    return {**result, "footprint_gb": tensor_bytes(model) / 1e9, **peak_memory_gb()}


def reference(name: str) -> str:
    """The mode whose logits a mode's drift is measured against: fp32 of the same model."""
    return "phi-fp32" if modes.mode(name).model == "phi" else "fp32"


def with_drift(row: dict, args) -> dict:
    """`row` with its logits' drift against its reference's, where both were saved."""
    base = reference(row["mode"])
    expected, logits = logits_path(base, args), logits_path(row["mode"], args)
    if row["mode"] != base and "error" not in row and expected.exists() and logits.exists():
        row["drift"] = logit_drift(torch.load(logits), torch.load(expected))
    return row


def floors() -> dict:
    """The machine's rates, measured in the same session as the modes."""
    return {"bandwidth": memory_bandwidth(), "matmul_gflops": matmul_rates(), "linear_ms": linear_kernels()}


def matmul_rates() -> dict:
    dtypes = (torch.float32, torch.bfloat16, torch.float16)
    return {str(dtype).removeprefix("torch."): matmul_throughput(dtype) for dtype in dtypes}


def linear_kernels(budget_s: float = 2.0) -> dict:
    """One Phi-2 MLP weight (10240 x 2560) applied to 1 and 8 rows through the modes' kernels: stock eager
    float32 and bf16, the package's float32 GEMM choice and int8 layer (CPU). Each variant gets as many calls as fit
    in `budget_s` (3 to 20): bf16 without native kernels takes ~1 s."""

    def layer(dtype=torch.float32):
        return torch.nn.Sequential(torch.nn.Linear(2560, 10240)).to(device(), dtype).requires_grad_(False)

    variants = {
        "float32 eager": (layer(), torch.float32),
        "bfloat16 eager": (layer(torch.bfloat16), torch.bfloat16),
    }
    if device().type == "cpu":
        chosen = layer()
        modes.gemm_choice(chosen)
        variants["float32 GEMM choice"] = (chosen, torch.float32)
        variants["cpu_int8"] = (modes.cpu_int8_layer(layer()[0]), torch.float32)
    timings = {}
    with torch.no_grad():
        for name, (module, dtype) in variants.items():
            for rows in (1, 8):
                x = torch.randn(1, rows, 2560, device=device(), dtype=dtype)
                once = min(seconds(lambda module=module, x=x: module(x), 1, 1))
                repeats = max(3, min(20, int(budget_s / once)))
                times = seconds(lambda module=module, x=x: module(x), repeats, 1)
                timings[f"{name}, {rows} row(s)"] = 1e3 * statistics.median(times)
    return timings


# ---------------------------------------------------------------------------------------------- reporting


def merge(sessions: list[dict]) -> dict:
    """One session from several runs (a later run's mode replaces an earlier one's); a row without floors of its
    own keeps those of its session. Machine and floors come from the first run that has them."""
    rows = {}
    for session in sessions:
        for row in session["modes"]:
            if "error" not in row or row["mode"] not in rows:
                rows[row["mode"]] = {**({"floors": session["floors"]} if "floors" in session else {}), **row}
    with_floors = [session for session in sessions if "floors" in session]
    return {**(with_floors or sessions)[0], "modes": list(rows.values())}


def median_best(values: list[float], unit: str = "s") -> str:
    return f"{statistics.median(values):.3g} {unit} ({min(values):.3g})"


def encode_floor(row: dict, size: str) -> float:
    return row["encode_flops"][size] / gflops(row) / 1e9


def prefill_floor(row: dict, batch: str) -> float:
    return row["prefill_flops"][batch] / gflops(row) / 1e9


def gflops(row: dict) -> float:
    return row["floors"]["matmul_gflops"][row["compute_dtype"]]


def tok_s(row: dict, batch: str) -> float:
    return int(batch) / statistics.median(row["decode_step_s"][batch])


def decode_floor(row: dict, batch: str) -> float:
    return int(batch) * row["floors"]["bandwidth"]["copy_gbps"] * 1e9 / row["decode_bytes"][batch]


DRIFT = {
    "drift: relative RMS ": lambda r: f"{r['drift']['relative_rms']:.2%}",
    "mean KL ": lambda r: f"{r['drift']['mean_kl']:.2g}",
    "top-1 agreement ": lambda r: f"{r['drift']['top1_agreement']:.1%}",
}


def report(sessions: list[dict]) -> str:
    """Markdown tables of one or several results files of `run` or `drift`: the floors, then each quantity beside
    its floor and the fraction of it reached, then memory and drift."""
    session = merge(sessions)
    rows = [row for row in session["modes"] if "error" not in row]
    timed = [row for row in rows if "decode_step_s" in row]
    parts = [
        f"{machine_line(session['machine'])} Model: `{session['model']}` (preset; `-LN`: N decoder layers), random "
        "weights. Median of the runs, best in brackets; floors measured again in each mode's process.",
        *(f"Failed: {row['mode']}: {row['error']}" for row in session["modes"] if "error" in row),
    ]
    if "floors" in session:
        rates = session["floors"]
        floor_rows = [
            (
                "memory bandwidth, 1 GiB float32 copy (read + write)",
                f"{rates['bandwidth']['copy_gbps']:.1f} GB/s",
            ),
            (
                "memory bandwidth, 1 GiB float32 sum (read only)",
                f"{rates['bandwidth']['read_gbps']:.1f} GB/s",
            ),
            *((f"matmul {name}", f"{rate:.0f} GFLOP/s") for name, rate in rates["matmul_gflops"].items()),
            *(
                (f"Linear 2560->10240, {name}", f"{ms:.2f} ms")
                for name, ms in rates.get("linear_ms", {}).items()
            ),
        ]
        parts.append(table(floor_rows, {"floor": lambda r: r[0], "measured ": lambda r: r[1]}))
    encoding = {"mode": lambda r: r["mode"]}
    for size in ("224", "448"):
        encoding[f"encode {size} px "] = lambda r, s=size: median_best(r["encode_s"][s])
        encoding[f"floor {size} "] = lambda r, s=size: f"{encode_floor(r, s):.3g} s"
        encoding[f"reached {size} "] = lambda r, s=size: (
            f"{encode_floor(r, s) / statistics.median(r['encode_s'][s]):.0%}"
        )
    prefill = {"mode": lambda r: r["mode"]}
    decode = {"mode": lambda r: r["mode"]}
    for batch in ("1", "8"):
        prefill[f"prefill 55 tokens, batch {batch} "] = lambda r, b=batch: median_best(r["prefill_s"][b])
        prefill[f"floor b{batch} "] = lambda r, b=batch: f"{prefill_floor(r, b):.3g} s"
        prefill[f"reached b{batch} "] = lambda r, b=batch: (
            f"{prefill_floor(r, b) / statistics.median(r['prefill_s'][b]):.0%}"
        )
        decode[f"decode batch {batch}, tok/s "] = lambda r, b=batch: (
            f"{tok_s(r, b):.3g} ({int(b) / min(r['decode_step_s'][b]):.3g})"
        )
        decode[f"floor b{batch} "] = lambda r, b=batch: f"{decode_floor(r, b):.3g}"
        decode[f"reached b{batch} "] = lambda r, b=batch: f"{tok_s(r, b) / decode_floor(r, b):.0%}"
    summary = {
        "mode": lambda r: r["mode"],
        "what": lambda r: r["what"],
        "first token with image ": lambda r: f"{r['first_token_s']:.3g} s",
        "peak serving / whole run ": lambda r: (
            f"{r['peak_generation']['peak_rss_gb']:.2f} / {r['peak_rss_gb']:.2f} GB"
        ),
        "footprint ": lambda r: f"{r['footprint_gb']:.3g} GB",
        "load ": lambda r: f"{r['load_s']:.0f} s",
        **DRIFT,
    }
    if any("encode_s" in row for row in timed):
        parts.append(table([row for row in timed if "encode_s" in row], encoding))
    if timed:
        parts += [table(timed, prefill), table(timed, decode)]
    parts.append(table(rows, summary))
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------------- commands

PUBLIC, CHILDREN = ["prepare", "run", "drift", "report"], ["measure", "logits", "quantize"]


def parse(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=PUBLIC + CHILDREN, metavar="{" + ",".join(PUBLIC) + "}")
    parser.add_argument("arguments", nargs="*", help="report: results files")
    parser.add_argument("--preset", default="phi2")
    parser.add_argument("--text-layers", type=int, help="decoder layers, if not the preset's")
    parser.add_argument(
        "--root", type=Path, default=Path("/tmp/tinygptv_bench"), help="where checkpoints live"
    )
    parser.add_argument("--modes", nargs="+", choices=modes.available(), default=modes.available())
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448], help="image sizes to encode")
    parser.add_argument("--output", type=Path, help="JSON file for the results")
    return parser, parser.parse_args(argv)


def child_argv(command: str, name: str, args) -> list[str]:
    """The argv of a child process: this one's options, for one mode."""
    options = ["--root", str(args.root), "--preset", args.preset, "--new-tokens", str(args.new_tokens)]
    options += ["--repeats", str(args.repeats), "--sizes", *map(str, args.sizes)]
    return [command, name, *options, *modes.text_layers_argv(Sizes(args.preset, args.text_layers))]


def each_mode(command: str, args, session: dict) -> dict:
    """Run `command` for each mode in its own process (references first: the others' drift is against them), saving the
    session after each."""
    for name in sorted(args.modes, key=lambda name: name != reference(name)):
        result = run_isolated(__file__, child_argv(command, name, args), env=dict(modes.mode(name).env))
        session["modes"].append(with_drift({"mode": name, **result}, args))
        print(json.dumps(session["modes"][-1]), flush=True)
        if args.output:
            args.output.write_text(json.dumps(session, indent=1))
    return session


def main(argv=None):
    parser, args = parse(argv)
    sizes = Sizes(args.preset, args.text_layers)
    if args.command == "report":
        print(report([json.loads(Path(path).read_text()) for path in args.arguments]))
    elif args.command == "prepare":
        modes.prepare(args.root, sizes, args.modes, __file__)
    elif args.command in CHILDREN:
        (name,) = args.arguments
        if args.command == "quantize":
            modes.quantize(name, args.root, sizes)
            result = peak_memory_gb()
        else:
            result = measure(name, args) if args.command == "measure" else fixed_logits(name, args)
        print(json.dumps(result))
    else:
        missing = {reference(name) for name in args.modes} - set(args.modes)
        if args.command == "drift" and any(not logits_path(name, args).exists() for name in missing):
            parser.error(f"drift compares against the logits of {sorted(missing)}: put them in --modes")
        session = {"benchmark": "inference", "machine": machine(), "model": sizes.name, "modes": []}
        if args.command == "run":
            session["floors"] = floors()
        each_mode("measure" if args.command == "run" else "logits", args, session)
        print(report([session]))


if __name__ == "__main__":
    sys.exit(main())

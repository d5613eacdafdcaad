"""Ratios between the CPU inference modes on a shared machine: the modes live in one process and take turns, one
measurement each in every round, so that whatever else runs on the machine slows them alike.

The model is the `phi2` preset (full vision tower and Q-Former) with `--text-layers` decoder layers (8 by default,
so that float32 and int8 fit in one process beside other work; a decode step's cost is linear in the layers).
Weights are random, float32 rounded through bf16 (those of `inference.py`'s checkpoints). The int8 model is built
from the float32 one's weights with cpu_int8's own quantization and shares every unquantized tensor with it.

Modes: `fp32` (stock `nn.Linear`), `fp32-gemm-choice` (the same model after `use_cpu_gemm_choice`: oneDNN on
packed weights where that is faster here, else the faster of MKL and oneDNN per row count) and `cpu-int8`.
Measured per round: image encoding at 224 px, time to first token of `generate` through `input_ids` +
`pixel_values` (32 image + 23 text tokens), and decode steps at batch 1 and 8 from the same prompt's embeddings.

    python benchmarks/interleaved.py [--text-layers 8] [--rounds 3] [--new-tokens 8] [--output ratios.json]
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from _common import machine, memory_bandwidth, peak_memory_gb, random_tinygptv
from inference import TEXT_TOKENS, Mode, decode_bytes_per_step, fixed_prompt, generate, prompt_embeddings

TINYGPTV = Mode("tinygptv", "random", torch.float32)


def int8_twin(model):
    """A cpu_int8 model with `model`'s weights: its Linear layers quantized, every other tensor shared."""
    from accelerate import init_empty_weights

    from tinygptv_hf import TinyGPTVCpuInt8Config
    from tinygptv_hf.modeling import CpuInt8Linear
    from tinygptv_hf.modeling.integration_tinygptv import quantize_int8 as quantize_weight
    from tinygptv_hf.modeling.integration_tinygptv import replace_linear_layers

    with init_empty_weights(include_buffers=False):
        twin = type(model)(model.config)
    replace_linear_layers(twin, TinyGPTVCpuInt8Config())
    state = dict(model.state_dict())
    for name, module in twin.named_modules():
        if isinstance(module, CpuInt8Linear):
            state[f"{name}.weight"], state[f"{name}.weight_scale"] = quantize_weight(state[f"{name}.weight"])
    twin.load_state_dict(state, assign=True)
    return twin.eval()


def set_gemm_choice(model, on: bool):
    """`use_cpu_gemm_choice` and its undoing (plain weights again, stock class)."""
    from tinygptv_hf.chat.cpu_float32 import CpuFloat32Linear, use_cpu_gemm_choice

    if on:
        use_cpu_gemm_choice(model.requires_grad_(False))
    else:
        for module in model.modules():
            if type(module) is CpuFloat32Linear:
                module.unpack()
                module.__class__ = torch.nn.Linear


def measure_round(model, prompt, embeds, new_tokens: int) -> dict:
    start = time.perf_counter()
    model.get_image_features(prompt["pixel_values"])
    result = {"encode_s": time.perf_counter() - start}
    _, stamps = generate(model, 1, **prompt)
    result["first_token_s"] = stamps[0]
    for batch in (1, 8):
        _, stamps = generate(model, new_tokens, inputs_embeds=embeds.expand(batch, -1, -1).contiguous())
        result[f"prefill_{batch}_s"] = stamps[0]
        result[f"decode_{batch}_steps_s"] = [
            later - earlier for earlier, later in zip(stamps, stamps[1:], strict=False)
        ]
    return result


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="phi2")
    parser.add_argument("--text-layers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()

    session = {
        "machine": machine(),
        "preset": args.preset,
        "text_layers": args.text_layers,
        "bandwidth_start": memory_bandwidth(),
    }
    fp32, _ = random_tinygptv(
        args.preset,
        torch.float32,
        rounded_through=torch.bfloat16,
        text_config={"num_hidden_layers": args.text_layers},
    )
    fp32.eval()
    int8 = int8_twin(fp32)
    modes = {"fp32": (fp32, False), "fp32-gemm-choice": (fp32, True), "cpu-int8": (int8, False)}
    rounds = {name: [] for name in modes}
    with torch.inference_mode():
        prompt = fixed_prompt(fp32, TINYGPTV)
        embeds = prompt_embeddings(fp32, TINYGPTV, prompt)
        for model, gemm_choice in modes.values():  # warm-up: calibrations, first-call allocations
            set_gemm_choice(fp32, gemm_choice)
            measure_round(model, prompt, embeds, 2)
        for _ in range(args.rounds):
            for name, (model, gemm_choice) in modes.items():
                set_gemm_choice(fp32, gemm_choice)
                rounds[name].append(measure_round(model, prompt, embeds, args.new_tokens))
                print(json.dumps({name: rounds[name][-1]}), flush=True)
        context = embeds.shape[1] + args.new_tokens // 2
        session["decode_bytes"] = {
            name: {b: decode_bytes_per_step(model, b, context, torch.float32) for b in (1, 8)}
            for name, (model, _) in modes.items()
        }
    session.update(rounds=rounds, peak=peak_memory_gb(), bandwidth_end=memory_bandwidth())
    session["summary"] = summary(rounds)
    if args.output:
        args.output.write_text(json.dumps(session, indent=1))
    print(report(session))


def summary(rounds: dict) -> dict:
    """Medians per mode: seconds for encoding, first token and prefill; tokens/s for decoding."""
    table = {}
    for name, results in rounds.items():
        row = {key: statistics.median(r[key] for r in results) for key in ("encode_s", "first_token_s")}
        for batch in (1, 8):
            row[f"prefill_{batch}_s"] = statistics.median(r[f"prefill_{batch}_s"] for r in results)
            steps = [step for r in results for step in r[f"decode_{batch}_steps_s"]]
            row[f"decode_{batch}_tok_s"] = batch / statistics.median(steps)
        table[name] = row
    return table


def report(session: dict) -> str:
    m, table = session["machine"], session["summary"]
    base = table["fp32"]
    lines = [
        f"Machine: {m['device']} ({m['cpu_features']}), {m['cores']} cores, {m['threads']} threads; torch "
        f"{m['torch']}; {m['date']}, load average {m['load_average']:.1f} at the start. Model: `{session['preset']}` with "
        f"{session['text_layers']} decoder layers, {TEXT_TOKENS} text + 32 image tokens; medians over "
        f"{len(session['rounds']['fp32'])} interleaved rounds; ratios against fp32 of the same rounds.",
        "",
        "| mode | encoding 224 px | first token with image | prefill b1 | decode b1 tok/s | decode b8 tok/s | "
        "b8 / b1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in table.items():
        lines.append(
            f"| {name} | {row['encode_s']:.2f} s ({base['encode_s'] / row['encode_s']:.2f}x) | "
            f"{row['first_token_s']:.2f} s ({base['first_token_s'] / row['first_token_s']:.2f}x) | "
            f"{row['prefill_1_s']:.2f} s | {row['decode_1_tok_s']:.3g} ({row['decode_1_tok_s'] / base['decode_1_tok_s']:.2f}x) | "
            f"{row['decode_8_tok_s']:.3g} ({row['decode_8_tok_s'] / base['decode_8_tok_s']:.2f}x) | "
            f"{row['decode_8_tok_s'] / row['decode_1_tok_s']:.1f}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

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
from pathlib import Path

import modes
import torch
from _common import (
    decode_steps,
    machine,
    machine_line,
    memory_bandwidth,
    peak_memory_gb,
    random_tinygptv,
    seconds,
    table,
    timed_generate,
)
from inference import TEXT_TOKENS, decode_bytes_per_step, fixed_prompt, prompt_embeddings

TINYGPTV = modes.mode("fp32")
# Each mode as the table defines it, made from the one float32 model: its transforms applied in turn (and undone),
# cpu-int8 as a twin sharing every unquantized tensor.
MODES = ("fp32", "fp32-gemm-choice", "cpu-int8")


def measure_round(model, prompt, embeds, new_tokens: int) -> dict:
    (encode,) = seconds(lambda: model.get_image_features(prompt["pixel_values"]), 1, warmup=0)
    result = {"encode_s": encode, "first_token_s": timed_generate(model, 1, **prompt)[1][0]}
    for batch in (1, 8):
        _, stamps = timed_generate(model, new_tokens, inputs_embeds=embeds.expand(batch, -1, -1).contiguous())
        result[f"prefill_{batch}_s"] = stamps[0]
        result[f"decode_{batch}_steps_s"] = decode_steps(stamps)
    return result


def switch(model, name: str):
    """`model` as mode `name` runs it: the GEMM choice on or off (the only transform these modes use)."""
    if modes.gemm_choice in modes.mode(name).transforms:
        modes.gemm_choice(model)
    else:
        modes.undo_gemm_choice(model)


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
        "benchmark": "interleaved",
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
    models = {"fp32": fp32, "fp32-gemm-choice": fp32, "cpu-int8": modes.cpu_int8_twin(fp32)}
    rounds = {name: [] for name in MODES}
    with torch.inference_mode():
        prompt = fixed_prompt(fp32, TINYGPTV)
        embeds = prompt_embeddings(fp32, TINYGPTV, prompt)
        for name in MODES:  # warm-up: calibrations, first-call allocations
            switch(fp32, name)
            measure_round(models[name], prompt, embeds, 2)
        for _ in range(args.rounds):
            for name in MODES:
                switch(fp32, name)
                rounds[name].append(measure_round(models[name], prompt, embeds, args.new_tokens))
                print(json.dumps({name: rounds[name][-1]}), flush=True)
        context = embeds.shape[1] + args.new_tokens // 2
        session["decode_bytes"] = {
            name: {b: decode_bytes_per_step(models[name], b, context, torch.float32) for b in (1, 8)}
            for name in MODES
        }
    session.update(rounds=rounds, peak=peak_memory_gb(), bandwidth_end=memory_bandwidth())
    session["summary"] = summary(rounds)
    if args.output:
        args.output.write_text(json.dumps(session, indent=1))
    print(report([session]))


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


def ratio(base: dict, key: str, rate: bool = False):
    """A cell: the figure and how many times faster than fp32's (`base`) it is."""

    def cell(row):
        factor = row[key] / base[key] if rate else base[key] / row[key]
        return f"{row[key]:.3g}{'' if rate else ' s'} ({factor:.2f}x)"

    return cell


def report(sessions: list[dict]) -> str:
    parts = []
    for session in sessions:
        table_rows = session["summary"]
        base = table_rows["fp32"]
        parts.append(
            f"{machine_line(session['machine'])} Model: `{session['preset']}` with {session['text_layers']} decoder "
            f"layers, {TEXT_TOKENS} text + 32 image tokens; medians over {len(session['rounds']['fp32'])} "
            "interleaved rounds; ratios against fp32 of the same rounds."
        )
        columns = {
            "mode": lambda row: row["mode"],
            "encoding 224 px ": ratio(base, "encode_s"),
            "first token with image ": ratio(base, "first_token_s"),
            "prefill b1 ": lambda row: f"{row['prefill_1_s']:.2f} s",
            "decode b1 tok/s ": ratio(base, "decode_1_tok_s", rate=True),
            "decode b8 tok/s ": ratio(base, "decode_8_tok_s", rate=True),
            "b8 / b1 ": lambda row: f"{row['decode_8_tok_s'] / row['decode_1_tok_s']:.1f}x",
        }
        parts.append(table([{"mode": name, **row} for name, row in table_rows.items()], columns))
    return "\n\n".join(parts)


if __name__ == "__main__":
    main()

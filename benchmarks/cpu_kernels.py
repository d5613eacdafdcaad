"""CPU kernels and rounding, measured on Phi-2's shapes.

`kernels`: library kernels for one Phi-2 MLP weight (10240 x 2560) at 1, 8 and 55 rows. Each call reads its
weight from memory, not cache (one of `COPIES` distinct copies, together larger than the last-level cache, taken
in turn). Prints milliseconds (best of the rounds: the least disturbed on a shared machine) and GB/s of weight bytes
at 1 row. Rerun under AVX2 with `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2`.

`drift`: logit drift of the CPU quantizations on a random Phi-2-shaped language model (the stock Phi-2 part of the
`phi2` preset: 32 layers, N(0, 0.02) weights, 64 random tokens), as docs/cpu-inference.md compares with
llama.cpp's Q8_0 / Q4_K_M / Q4_0 on the same kind of model. The model is built and run one layer at a time (every
variant's hidden states carried side by side), so the full size needs about 1 GB.

    python benchmarks/cpu_kernels.py kernels [--rounds 15] [--rows 1 8 55]
    python benchmarks/cpu_kernels.py drift [--layers 32]
    python benchmarks/cpu_kernels.py profile [--bits 8|4] [--prompt-tokens 55]

`profile`: one decode step of the full-size int8 (3.3 GB) or int4 (2 GB) language model under torch.profiler.
"""

import argparse
import copy
import time

import torch
import torch.nn.functional as F

OUT, IN = 10240, 2560
COPIES = 4


def dynamic_int8_mm(rows: torch.Tensor, weight_t: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """int8 x int8 -> int32 (`torch._int_mm`) with each row of the activations quantized on the fly."""
    row_scale = rows.abs().amax(dim=1, keepdim=True).clamp_(min=1e-8) / 127
    quantized = (rows / row_scale).round_().to(torch.int8)
    if quantized.shape[0] <= 16:  # _int_mm wants more than 16 rows
        quantized = F.pad(quantized, (0, 0, 0, 17 - quantized.shape[0]))
    return torch._int_mm(quantized, weight_t)[: rows.shape[0]] * row_scale * scale


def variants() -> dict:
    """name -> (weights read per call in bytes, a function of the rows that runs one call on the next copy)."""
    torch.manual_seed(0)
    dense = [torch.randn(OUT, IN) / 50 for _ in range(COPIES)]
    made = {}

    def cycle(weights, call):
        state = {"i": 0}

        def run(rows):
            state["i"] = (state["i"] + 1) % len(weights)
            return call(rows, weights[state["i"]])

        return run

    made["fp32 F.linear"] = (OUT * IN * 4, torch.float32, cycle(dense, F.linear))
    bf16 = [w.bfloat16() for w in dense]
    made["bf16 F.linear"] = (OUT * IN * 2, torch.bfloat16, cycle(bf16, F.linear))
    int8 = [(w / (w.abs().amax(1, keepdim=True) / 127)).round().to(torch.int8) for w in dense]
    scale = torch.full((OUT,), 1 / 127 / 50)
    for dtype in (torch.bfloat16, torch.float32):
        cast = scale.to(dtype)
        made[f"_weight_int8pack_mm, {str(dtype)[6:]} x"] = (
            OUT * IN,
            dtype,
            cycle(int8, lambda x, w, s=cast: torch.ops.aten._weight_int8pack_mm(x, w, s)),
        )
    transposed = [w.t().contiguous().t() for w in int8]  # (IN, OUT) column-major, as _int_mm wants
    made["_int_mm, dynamic int8 x"] = (
        OUT * IN,
        torch.float32,
        cycle([w.t() for w in transposed], lambda x, w: dynamic_int8_mm(x, w, scale)),
    )
    for group in (32, 64, 128):
        packed = [
            torch.ops.aten._convert_weight_to_int4pack_for_cpu(
                torch.randint(0, 16, (OUT, IN), dtype=torch.int32), 1
            )
            for _ in range(COPIES)
        ]
        for dtype in (torch.bfloat16, torch.float32):
            scales = torch.rand(IN // group, OUT, 2, dtype=dtype) / 100
            made[f"_weight_int4pack_mm_for_cpu g{group}, {str(dtype)[6:]} x"] = (
                OUT * IN // 2 + scales.numel() * scales.element_size(),
                dtype,
                cycle(
                    packed,
                    lambda x, w, g=group, s=scales: torch.ops.aten._weight_int4pack_mm_for_cpu(x, w, g, s),
                ),
            )
    return made


def symmetric_int4(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """Symmetric max/7 rounding per group, as float32 (the naive int4 the issue measured)."""
    groups = weight.reshape(-1, group_size)
    scale = groups.abs().amax(1, keepdim=True).clamp(min=1e-12) / 7
    return ((groups / scale).round().clamp(-8, 7) * scale).view_as(weight)


def quantized_copy(module: torch.nn.Module, variant: str) -> torch.nn.Module:
    """`module` with every Linear replaced as `variant` says, the real layers and kernels of the package."""
    from tinygptv_hf.modeling import TinyGPTVCpuInt4Config, TinyGPTVCpuInt8Config
    from tinygptv_hf.modeling.integration_tinygptv import (
        prepare_for_kernels,
        quantize_int4,
        quantize_int8,
        replace_linear_layers,
    )

    twin = copy.deepcopy(module)
    if variant.startswith("int4 symmetric"):
        with torch.no_grad():
            for layer in twin.modules():
                if type(layer) is torch.nn.Linear:
                    layer.weight.copy_(symmetric_int4(layer.weight, int(variant.split("g")[-1])))
        return twin
    plain = {name: layer for name, layer in twin.named_modules() if type(layer) is torch.nn.Linear}
    config = (
        TinyGPTVCpuInt8Config() if variant == "int8" else TinyGPTVCpuInt4Config(int(variant.split("g")[-1]))
    )
    for name in replace_linear_layers(twin, config):
        layer, source = twin.get_submodule(name), plain[name]
        layer.to_empty(device="cpu")
        if config.bits == 8:
            layer.weight.data, layer.weight_scale = quantize_int8(source.weight)
        else:
            layer.weight.data, layer.weight_scale_zero = quantize_int4(source.weight, config.group_size)
        if source.bias is not None:
            layer.bias.data = source.bias.detach().clone()
    prepare_for_kernels(twin)
    return twin


def drift(layers: int) -> None:
    from transformers import PhiConfig, PhiModel

    from tinygptv_hf.presets import PHI2_TEXT

    config = PhiConfig(**{**PHI2_TEXT, "num_hidden_layers": 1}, attn_implementation="eager")
    variants = ["int8", "int4 g32", "int4 g64", "int4 g128", "int4 symmetric g32", "int4 symmetric g128"]
    torch.manual_seed(0)
    tokens = torch.randint(0, config.vocab_size, (1, 64))
    embedding = torch.nn.Embedding(config.vocab_size, config.hidden_size)
    torch.nn.init.normal_(embedding.weight, std=0.02)
    with torch.no_grad():
        hidden = {name: embedding(tokens) for name in ["fp32", *variants]}
        for index in range(layers):
            torch.manual_seed(1 + index)
            block = PhiModel(config).eval()  # one decoder layer, its own random weights (transformers' init)
            block.embed_tokens, block.final_layernorm = None, torch.nn.Identity()
            for name in hidden:
                model = block if name == "fp32" else quantized_copy(block, name)
                hidden[name] = model(inputs_embeds=hidden[name]).last_hidden_state
            print(f"layer {index + 1}/{layers}", flush=True)
        torch.manual_seed(1000)
        head = torch.nn.Sequential(
            torch.nn.LayerNorm(config.hidden_size), torch.nn.Linear(config.hidden_size, config.vocab_size)
        )
        torch.nn.init.normal_(head[1].weight, std=0.02)
        torch.nn.init.zeros_(head[1].bias)
        expected = head(hidden["fp32"])
        reference = expected.log_softmax(-1)
        print("| variant | relative RMS | mean KL | top-1 agreement |\n|---|---:|---:|---:|")
        for name in variants:
            logits = quantized_copy(head, name)(hidden[name])
            rms = ((logits - expected).norm() / expected.norm()).item()
            kl = (reference.exp() * (reference - logits.log_softmax(-1))).sum(-1).mean().item()
            top1 = (logits.argmax(-1) == expected.argmax(-1)).sum().item()
            print(f"| {name} | {rms:.3f} | {kl:.1e} | {top1}/{tokens.shape[1]} |")


def quantized_language_model(bits: int):
    """The `phi2` preset's language model and LM head (TinyGPT-V's Phi-2, 2.78 B parameters) with every Linear
    quantized as `TinyGPTVCpuInt8Config` / `TinyGPTVCpuInt4Config` make it, random weights written straight into
    the quantized layers (no float32 copy: about 3.3 GB in all for int8, 2 GB for int4)."""
    from tinygptv_hf.modeling import TinyGPTVCpuInt4Config, TinyGPTVCpuInt8Config, TinyGPTVTextModel
    from tinygptv_hf.modeling.integration_tinygptv import prepare_for_kernels, replace_linear_layers
    from tinygptv_hf.presets import preset_config

    text_config = preset_config("phi2").text_config
    with torch.device("meta"):
        model = torch.nn.ModuleDict(
            {
                "model": TinyGPTVTextModel(text_config),
                "lm_head": torch.nn.Linear(text_config.hidden_size, text_config.vocab_size),
            }
        )
    replace_linear_layers(model, TinyGPTVCpuInt8Config() if bits == 8 else TinyGPTVCpuInt4Config())
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.dtype == torch.int8:
                tensor.random_(-127, 128)
            elif tensor.dtype == torch.uint8:
                tensor.random_(0, 256)
            elif name.endswith("weight_scale"):
                tensor.fill_(0.02 / 127 / 3)
            elif name.endswith("weight_scale_zero"):
                tensor[..., 0].fill_(0.02 / 4)
                tensor[..., 1].normal_(std=0.001)
            elif "norm" in name and name.endswith("weight"):
                tensor.fill_(1)
            elif name.endswith("bias"):
                tensor.zero_()
            elif tensor.is_floating_point():
                tensor.normal_(std=0.02)
    prepare_for_kernels(model)
    return model.eval()


def profile_decode(bits: int, prompt_tokens: int, steps: int) -> None:
    """One decode step of the quantized language model after a `prompt_tokens` prompt, under torch.profiler: the time
    in the weight-only kernel against everything else, by operator."""
    from torch.profiler import ProfilerActivity, profile
    from transformers import DynamicCache

    model = quantized_language_model(bits)
    language_model, head = model["model"], model["lm_head"]
    tokens = torch.randint(0, 50000, (1, prompt_tokens))

    def step(ids, cache):
        hidden = language_model(input_ids=ids, past_key_values=cache, use_cache=True).last_hidden_state
        return head(hidden[:, -1:]).argmax(-1)

    with torch.no_grad():
        cache = DynamicCache()
        token = step(tokens, cache)
        for _ in range(2):
            token = step(token, cache)
        timed = []
        for _ in range(steps):
            start = time.perf_counter()
            token = step(token, cache)
            timed.append(time.perf_counter() - start)
        with profile(activities=[ProfilerActivity.CPU]) as trace:
            step(token, cache)
    total = sum(event.self_cpu_time_total for event in trace.key_averages()) / 1e3
    print(f"decode step: best {min(timed) * 1e3:.1f} ms of {steps} (profiled: {total:.1f} ms self CPU)")
    print("| operator | calls | self ms | share |\n|---|---:|---:|---:|")
    for event in sorted(trace.key_averages(), key=lambda e: -e.self_cpu_time_total)[:14]:
        share = event.self_cpu_time_total / 1e3 / total
        print(f"| {event.key} | {event.count} | {event.self_cpu_time_total / 1e3:.1f} | {share:.0%} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    timing = commands.add_parser("kernels", help="time the library kernels")
    timing.add_argument("--rounds", type=int, default=15)
    timing.add_argument("--rows", type=int, nargs="+", default=[1, 8, 55])
    rounding = commands.add_parser("drift", help="logit drift of the quantizations on a random Phi-2")
    rounding.add_argument("--layers", type=int, default=32)
    stepping = commands.add_parser("profile", help="profile one full-size int8 decode step")
    stepping.add_argument("--prompt-tokens", type=int, default=55)
    stepping.add_argument("--steps", type=int, default=5)
    stepping.add_argument("--bits", type=int, choices=[8, 4], default=8)
    args = parser.parse_args()
    if args.command == "profile":
        return profile_decode(args.bits, args.prompt_tokens, args.steps)
    if args.command == "drift":
        return drift(args.layers)
    print(
        f"torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}, threads {torch.get_num_threads()}"
    )
    print("| kernel | " + " | ".join(f"{r} rows ms" for r in args.rows) + " | GB/s at 1 row |")
    print("|---|" + "---:|" * (len(args.rows) + 1))
    with torch.no_grad():
        for name, (nbytes, dtype, run) in variants().items():
            times = []
            for count in args.rows:
                rows = torch.randn(count, IN, dtype=dtype)
                for _ in range(COPIES):
                    run(rows)
                samples = []
                for _ in range(args.rounds):
                    start = time.perf_counter()
                    run(rows)
                    samples.append(time.perf_counter() - start)
                times.append(min(samples))
            rate = f"{nbytes / times[0] / 1e9:.1f}" if args.rows[0] == 1 else ""
            print(f"| {name} | " + " | ".join(f"{t * 1e3:.2f}" for t in times) + f" | {rate} |")


if __name__ == "__main__":
    main()

"""Inference cost of the paper-size model (`phi2` preset, 3.9 B parameters) against the machine's physical floors.

`prepare` writes random checkpoints once: bf16 (frozen parts already in half precision, so nothing large is
converted or memory-mapped twice at load), and from it bitsandbytes 8-bit and nf4 checkpoints and the package's
`cpu_int8` checkpoint, each with every Linear layer quantized (vision tower, Q-Former, projector, language model,
LM head), the leanest the package can load. `--text-layers N` gives the same model with N decoder layers (its own
checkpoints), for modes that are too slow or too large to run at full size on a small machine.
`run` measures the floors (large tensor copy, square matmul, one Linear layer at 1 and 8 rows) and then each
mode in its own process: image encoding at 224 and 448, prefill and decode at batch 1 and 8, generation through
the image path, peak resident memory, footprint, and logit drift against fp32 on a fixed input. Stock
`transformers.PhiForCausalLM` with the same text sizes runs in the same session. `drift` runs only the drift
check (logits at every position of the fixed image + text prompt, each mode in its own process, fp32 first):
minutes where `run` takes most of an hour. On a CUDA machine the same commands measure bf16, torch.compile and
the quantized modes instead.

    python benchmarks/inference.py prepare [--preset phi2] [--text-layers N] [--root DIR] [--modes ...]
    python benchmarks/inference.py run [--modes fp32 cpu-int8 ...] [--text-layers N] [--output results.json]
    python benchmarks/inference.py drift [--modes fp32 cpu-int8 int8 ...] [--text-layers N] [--output drift.json]
    python benchmarks/inference.py report results.json [more.json ...]   # tables from one or several runs
"""

import argparse
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from unittest.mock import patch

import torch
from _common import (
    device,
    machine,
    matmul_throughput,
    memory_bandwidth,
    peak_memory_gb,
    random_model,
    random_tinygptv,
    run_isolated,
    seconds,
    synchronize,
    write_checkpoint,
)
from transformers import LogitsProcessor, LogitsProcessorList, masking_utils

TEXT_TOKENS = 23  # with 32 image tokens, the 55-token prompt of the original code's measurement
BATCHES = (1, 8)


@dataclass(frozen=True)
class Mode:
    """`source` is "random" (built in this process, float32 weights) or a checkpoint written by `prepare`."""

    model: str  # "tinygptv" or "phi" (stock PhiForCausalLM, same text sizes)
    source: str
    dtype: torch.dtype  # of the layers left unquantized, and of the activations
    pack: bool = False  # CPU: Linear weights of the language model pre-packed for oneDNN
    gemm_choice: bool = False  # CPU: every Linear through cpu_int8's per-machine choice of float32 GEMM
    torchao: bool = False  # transformers' TorchAoConfig(Int8WeightOnlyConfig()) at load (needs torchao)
    compile: bool = False  # torch.compile on every decoder layer
    # bitsandbytes repacks each 4-bit weight into a new buffer at its first CPU forward on AVX512-BF16 machines
    # (not on others); the memory-mapped checkpoint stays resident beside it, so the weights are held twice.
    repack_4bit: bool = True
    # Environment of the mode's process, set before Python starts (glibc reads its malloc settings at start-up).
    env: tuple[tuple[str, str], ...] = ()
    what: str = ""


# glibc's malloc raises its mmap threshold (up to 32 MB) each time a large block is freed, so the next blocks of
# that size come from the heap, which returns memory to the system only from its top: working memory freed
# between layers stays resident. A fixed threshold (which also stops the raising) sends every block above 64 KiB
# to its own mapping, unmapped when freed; trimming at 0 returns the heap's free top at once.
LEAN_MALLOC = (("MALLOC_MMAP_THRESHOLD_", "65536"), ("MALLOC_TRIM_THRESHOLD_", "0"))

CPU_MODES = {
    "fp32": Mode("tinygptv", "random", torch.float32, what="everything float32, eager"),
    "cpu-int8": Mode(
        "tinygptv",
        "cpu-int8",
        torch.float32,
        what="cpu_int8: every Linear int8 (per-channel scales, int8 kernel up to 16 rows), rest float32",
    ),
    "cpu-int8-lean": Mode(
        "tinygptv",
        "cpu-int8",
        torch.float32,
        env=LEAN_MALLOC,
        what="cpu-int8, glibc malloc returning freed blocks (MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0)",
    ),
    "torchao-int8": Mode(
        "tinygptv",
        "bf16",
        torch.float32,
        torchao=True,
        what="TorchAoConfig(Int8WeightOnlyConfig()) at load, every Linear (LM head too), float32 activations, eager",
    ),
    "torchao-int8-compile": Mode(
        "tinygptv",
        "bf16",
        torch.float32,
        torchao=True,
        compile=True,
        what="torchao int8 weight-only as above, decoder layers torch.compile'd (inductor freezing)",
    ),
    "fp32-gemm-choice": Mode(
        "tinygptv",
        "random",
        torch.float32,
        gemm_choice=True,
        what="float32, every Linear through use_cpu_gemm_choice (oneDNN-packed weights where faster here)",
    ),
    "fp32-packed": Mode(
        "tinygptv", "random", torch.float32, pack=True, what="float32, LM Linear weights pre-packed by oneDNN"
    ),
    "bf16": Mode("tinygptv", "bf16", torch.bfloat16, what="bf16 (Q-Former float32), eager"),
    "int8": Mode(
        "tinygptv", "int8", torch.bfloat16, what="every Linear bnb int8, rest bf16 (Q-Former norms fp32)"
    ),
    "nf4": Mode("tinygptv", "nf4", torch.bfloat16, what="every Linear bnb nf4 + double quant, rest bf16"),
    "nf4-lean": Mode(
        "tinygptv",
        "nf4",
        torch.bfloat16,
        repack_4bit=False,
        what="nf4 as above, weights used in place (no repack)",
    ),
    "nf4-lean-malloc": Mode(
        "tinygptv",
        "nf4",
        torch.bfloat16,
        repack_4bit=False,
        env=LEAN_MALLOC,
        what="nf4-lean, glibc malloc returning freed blocks (MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0)",
    ),
    "int8-lean": Mode(
        "tinygptv",
        "int8",
        torch.bfloat16,
        env=LEAN_MALLOC,
        what="int8 as above, glibc malloc returning freed blocks (MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0)",
    ),
    "phi-fp32": Mode("phi", "random", torch.float32, what="stock PhiForCausalLM, float32, eager"),
    "phi-fp32-packed": Mode("phi", "random", torch.float32, pack=True, what="stock Phi, float32, packed"),
    "phi-bf16": Mode("phi", "random", torch.bfloat16, what="stock Phi, bf16, eager"),
}
CUDA_MODES = {
    "bf16": CPU_MODES["bf16"],
    "bf16-compile": Mode(
        "tinygptv", "bf16", torch.bfloat16, compile=True, what="bf16, decoder layers torch.compile'd"
    ),
    "int8": CPU_MODES["int8"],
    "nf4": CPU_MODES["nf4"],
    "int8-lean": CPU_MODES["int8-lean"],
    "phi-bf16": CPU_MODES["phi-bf16"],
    "phi-bf16-compile": Mode("phi", "random", torch.bfloat16, compile=True, what="stock Phi, bf16, compiled"),
}
MODES = CUDA_MODES if torch.cuda.is_available() else CPU_MODES


@dataclass(frozen=True)
class Sizes:
    """A preset, optionally with fewer decoder layers (`text_layers`); such a model has checkpoints of its own."""

    preset: str
    text_layers: int | None = None

    @property
    def name(self) -> str:
        return self.preset if self.text_layers is None else f"{self.preset}-L{self.text_layers}"

    def text_overrides(self) -> dict:
        return {} if self.text_layers is None else {"num_hidden_layers": self.text_layers}

    def config(self, **vision):
        from tinygptv_hf.presets import preset_config

        return preset_config(self.preset, vision_config=vision, text_config=self.text_overrides())


# ---------------------------------------------------------------------------------------------- checkpoints


def quantization_config(kind: str):
    from transformers import BitsAndBytesConfig

    from tinygptv_hf import TinyGPTVCpuInt8Config

    if kind == "cpu-int8":  # every Linear layer by default
        return TinyGPTVCpuInt8Config()
    # An explicit list replaces the package's default skips: nothing is left out, the LM head included.
    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=[])
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        llm_int8_skip_modules=[],
    )


def quantize_checkpoint(source: Path, target: Path, kind: str):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import tinygptv_hf  # noqa: F401  (registers the classes)

    dtype = torch.float32 if kind == "cpu-int8" else torch.bfloat16  # what stays unquantized
    model = AutoModelForImageTextToText.from_pretrained(
        source, dtype=dtype, quantization_config=quantization_config(kind), device_map=device()
    )
    model.save_pretrained(target)
    AutoProcessor.from_pretrained(source).save_pretrained(target)


def prepare(root: Path, sizes: Sizes, modes: list[str]):
    """The checkpoints `modes` load that do not exist yet: bf16 first, the quantized ones from it."""
    bf16 = root / f"{sizes.name}-bf16"
    if not (bf16 / "config.json").exists():
        start = time.perf_counter()
        write_checkpoint(bf16, sizes.preset, torch.bfloat16, text_config=sizes.text_overrides())
        print(f"wrote {bf16} in {time.perf_counter() - start:.0f} s", flush=True)
    for kind in sorted({MODES[mode].source for mode in modes} - {"random", "bf16"}):
        target = root / f"{sizes.name}-{kind}"
        if not (target / "config.json").exists():
            start = time.perf_counter()
            result = run_isolated(__file__, ["quantize", str(bf16), str(target), kind])
            print(f"wrote {target} in {time.perf_counter() - start:.0f} s {result}", flush=True)


# ---------------------------------------------------------------------------------------------- building


def phi_config(sizes: Sizes):
    """Stock Phi with the text sizes of the preset (no q/k LayerNorm, no extra RMSNorm)."""
    from transformers import PhiConfig

    from tinygptv_hf.presets import PRESETS

    return PhiConfig(**{**PRESETS[sizes.preset]["text_config"], **sizes.text_overrides()})


def load(mode: Mode, root: Path, sizes: Sizes):
    from transformers import AutoModelForImageTextToText, PhiForCausalLM

    import tinygptv_hf  # noqa: F401

    if mode.model == "phi":
        return random_model(PhiForCausalLM, phi_config(sizes), mode.dtype)
    if mode.source == "random":
        # The bf16 checkpoint's weights exactly, so that the logit drift of the modes loaded from it (or from the
        # checkpoints quantized from it) is theirs alone, not bf16's rounding of the weights.
        return random_tinygptv(
            sizes.preset, mode.dtype, rounded_through=torch.bfloat16, text_config=sizes.text_overrides()
        )[0]
    extra = {}
    if mode.torchao:
        from torchao.quantization import Int8WeightOnlyConfig
        from transformers import TorchAoConfig

        # the LM head too (transformers leaves it out by default), as in every other quantized mode here
        extra["quantization_config"] = TorchAoConfig(
            Int8WeightOnlyConfig(), include_input_output_embeddings=True
        )
    model = AutoModelForImageTextToText.from_pretrained(
        root / f"{sizes.name}-{mode.source}", dtype=mode.dtype, device_map=device(), **extra
    )
    if not mode.repack_4bit:
        from bitsandbytes.nn import Linear4bit

        for module in model.modules():
            if isinstance(module, Linear4bit):
                module.support_avx512bf16_for_cpu = (
                    False  # what bitsandbytes does on CPUs without AVX512-BF16
                )
    return model


def language_model(model):
    return model.model.language_model if hasattr(model.model, "language_model") else model.model


def pack_for_onednn(model, dtype: torch.dtype):
    """Replace the language model's and LM head's `nn.Linear`s by oneDNN Linears whose weights are reordered
    once into oneDNN's blocked layout (the original weight is freed). Stock MKL re-reads a plain weight badly
    for 2-16 rows, which is what batched decoding feeds it."""
    from torch.utils.mkldnn import to_mkldnn

    with torch.no_grad():  # else each packed copy's autograd node keeps its original weight alive
        to_mkldnn(language_model(model), dtype)
        model.lm_head = to_mkldnn(model.lm_head, dtype)


def apply_mode(model, mode: Mode):
    """What a mode does to the loaded model before it runs: packing, the GEMM choice, compilation."""
    if mode.pack:
        pack_for_onednn(model, mode.dtype)
    if mode.gemm_choice:
        from tinygptv_hf.chat.cpu_float32 import use_cpu_gemm_choice

        use_cpu_gemm_choice(model.requires_grad_(False))
    if mode.compile:
        compile_layers(model)


def compile_layers(model):
    """torch.compile each decoder layer; on CPU with inductor freezing, which packs weights for oneDNN."""
    if device().type == "cpu":
        torch._inductor.config.freezing = True
    # Prefill, decode, batch sizes and the cache's first use each guard a graph; 32 layers share the code.
    torch._dynamo.config.recompile_limit = 64
    for layer in language_model(model).layers:
        layer.compile(dynamic=True)


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


def count_flops(mode: Mode, sizes: Sizes, batch: int, image_size: int | None) -> int:
    """FLOPs of one image encoding (`image_size`) or one prefill of the 55-token prompt, counted by
    torch.utils.flop_counter on the model's own forward over meta tensors (no computation)."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import PhiForCausalLM

    from tinygptv_hf import TinyGPTVForConditionalGeneration

    if mode.model == "phi":
        model_class, config = PhiForCausalLM, phi_config(sizes)
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


class StepClock(LogitsProcessor):
    """Stamps the time at which each new token's logits are ready, inside the real `generate` loop."""

    def __init__(self):
        self.stamps = []

    def __call__(self, input_ids, scores):
        synchronize()
        self.stamps.append(time.perf_counter())
        return scores


def fixed_prompt(model, mode: Mode, batch: int = 1):
    """The same 55-token prompt in every mode: 32 image tokens then 23 text tokens, one random image."""
    generator = torch.Generator().manual_seed(0)
    config = model.config if mode.model == "phi" else model.config.text_config
    text = torch.randint(0, min(config.vocab_size, 1000), (1, TEXT_TOKENS), generator=generator)
    if mode.model == "phi":
        ids = torch.cat([torch.randint(0, 1000, (1, 32), generator=generator), text], dim=1)
        return {"input_ids": ids.expand(batch, -1).to(device())}
    ids = torch.cat([torch.full((1, 32), model.config.image_token_id), text], dim=1)
    size = model.config.vision_config.image_size
    pixels = torch.randn(1, 3, size, size, generator=generator)
    return {
        "input_ids": ids.expand(batch, -1).to(device()),
        "pixel_values": pixels.expand(batch, -1, -1, -1).to(device(), torch.float32),
    }


def prompt_embeddings(model, mode: Mode, prompt: dict) -> torch.Tensor:
    """The prompt as the language model sees it, image features spliced in, so prefill is timed alone."""
    if mode.model == "phi":
        return model.get_input_embeddings()(prompt["input_ids"])
    backbone = model.model
    embeds = backbone.embed_tokens(prompt["input_ids"])
    features = model.get_image_features(prompt["pixel_values"]).pooler_output.to(embeds.dtype)
    mask = backbone.get_placeholder_mask(prompt["input_ids"], embeds, features)
    return embeds.masked_scatter(mask, features)


def generate(model, new_tokens: int, **inputs) -> tuple[torch.Tensor, list[float]]:
    """Greedy generation of exactly `new_tokens`; returns the tokens and the time to each token's logits."""
    clock = StepClock()
    batch = next(iter(inputs.values())).shape[0]
    synchronize()
    start = time.perf_counter()
    tokens = model.generate(
        **inputs,
        attention_mask=torch.ones(
            batch, next(iter(inputs.values())).shape[1], dtype=torch.long, device=device()
        ),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        stop_strings=None,
        pad_token_id=0,
        logits_processor=LogitsProcessorList([clock]),
    )
    return tokens, [stamp - start for stamp in clock.stamps]


def measure(
    mode_name: str, root: Path, sizes: Sizes, new_tokens: int, repeats: int, image_sizes: list[int]
) -> dict:
    """One mode, in its own process: everything this mode's rows need except the floors."""
    mode = MODES[mode_name]
    start = time.perf_counter()
    model = load(mode, root, sizes).eval()
    result = {
        "mode": mode_name,
        "what": mode.what,
        "load_s": time.perf_counter() - start,
        "env": {name: os.environ.get(name) for name, _ in mode.env},
    }
    result["footprint_gb"] = tensor_bytes(model) / 1e9
    apply_mode(model, mode)
    result["decode_bytes"] = {}
    result["prefill_flops"] = {b: count_flops(mode, sizes, b, None) for b in BATCHES}

    with torch.inference_mode():
        prompt = fixed_prompt(model, mode)
        if mode.model == "tinygptv":
            result["encode_flops"] = {224: count_flops(mode, sizes, 1, 224)}
            result["encode_s"] = {
                224: seconds(lambda: model.get_image_features(prompt["pixel_values"]), repeats)
            }
            _, stamps = generate(model, 4, **prompt)  # the real image path, once
            result["generate_with_image"] = {"first_token_s": stamps[0], "new_tokens": len(stamps)}
        embeds = prompt_embeddings(model, mode, prompt)
        result["prefill_s"], result["decode_step_s"] = {}, {}
        for batch in BATCHES:
            batch_embeds = embeds.expand(batch, -1, -1).contiguous()
            generate(model, 2, inputs_embeds=batch_embeds[:, :8])  # warm-up of this batch size
            prefill, steps = [], []
            for _ in range(repeats):
                _, stamps = generate(model, new_tokens, inputs_embeds=batch_embeds)
                prefill.append(stamps[0])
                steps += [later - earlier for earlier, later in zip(stamps, stamps[1:], strict=False)]
            result["prefill_s"][batch], result["decode_step_s"][batch] = prefill, steps
            context = embeds.shape[1] + new_tokens // 2
            result["decode_bytes"][batch] = decode_bytes_per_step(model, batch, context, mode.dtype)
        # Serving peak: image encoding and generation. The checks below add their own transients (all-position
        # logits, which make bitsandbytes dequantize the whole LM head; a 4x longer ViT sequence).
        result["peak_generation"] = peak_memory_gb()
        if mode.model == "tinygptv":
            logits = model(**prompt).logits.float()[0].cpu()
            torch.save(logits, logits_path(root, sizes, mode_name))
            reference = logits_path(root, sizes, "fp32")
            if mode_name != "fp32" and reference.exists():
                result["drift"] = logit_drift(logits, torch.load(reference))
            for size in (size for size in image_sizes if size != model.config.vision_config.image_size):
                model.set_image_size(size)
                pixels = torch.randn(1, 3, size, size, device=device())
                result["encode_flops"][size] = count_flops(mode, sizes, 1, size)
                result["encode_s"][size] = seconds(
                    lambda pixels=pixels: model.get_image_features(pixels), max(1, repeats - 1), warmup=0
                )
    result.update(peak_memory_gb())
    # The machine is shared: the floors are measured again here, right after this mode's timings.
    result["floors"] = {"bandwidth": memory_bandwidth(), "matmul_gflops": matmul_rates()}
    return result


def floors() -> dict:
    """The machine's rates, measured in the same session as the modes."""
    return {"bandwidth": memory_bandwidth(), "matmul_gflops": matmul_rates(), "linear_ms": linear_kernels()}


def matmul_rates() -> dict:
    dtypes = (torch.float32, torch.bfloat16, torch.float16)
    return {str(dtype).removeprefix("torch."): matmul_throughput(dtype) for dtype in dtypes}


def linear_kernels(budget_s: float = 2.0) -> dict:
    """One Phi-2 MLP weight (10240 x 2560) applied to 1 and 8 rows: stock eager, oneDNN-packed, inductor with
    freezing and cpu_int8's int8 layer (CPU), and bf16 eager. Shows why batched decoding needs packed weights on
    CPU. Each variant gets as many calls as fit in `budget_s` (3 to 20): bf16 without native kernels takes ~1 s."""
    from torch.utils.mkldnn import to_mkldnn

    from tinygptv_hf.modeling import CpuInt8Linear
    from tinygptv_hf.modeling.integration_tinygptv import quantize_int8 as quantize_weight

    def layer(dtype=torch.float32):
        return torch.nn.Linear(2560, 10240).to(device(), dtype)

    variants = {
        "float32 eager": (layer(), torch.float32),
        "bfloat16 eager": (layer(torch.bfloat16), torch.bfloat16),
    }
    if device().type == "cpu":
        variants["float32 oneDNN-packed"] = (to_mkldnn(layer()), torch.float32)
        torch._inductor.config.freezing = True
        variants["float32 inductor freezing"] = (torch.compile(layer()), torch.float32)
        int8 = CpuInt8Linear(2560, 10240)
        int8.weight.data, int8.weight_scale = quantize_weight(layer().weight)
        int8.bias.data.zero_()
        variants["cpu_int8 (int8 kernel)"] = (int8, torch.float32)
    else:
        variants["float32 compiled"] = (torch.compile(layer()), torch.float32)
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


def report(session: dict, model: str) -> str:
    """Markdown tables: the floors, then each quantity beside its floor and the fraction of it reached."""
    m, rates = session["machine"], session["floors"]
    bandwidth = rates["bandwidth"]["copy_gbps"]
    rows = [row for row in session["modes"] if "error" not in row]
    lines = [
        f"Machine: {m['device']} ({m['cpu_features']}), {m['cores']} cores, {m['threads']} threads, "
        f"{m['memory_gb']:.0f} GB; Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, "
        f"bitsandbytes {m['bitsandbytes']}, peft {m['peft']}; {m['date']}, load average {m['load_average']:.1f} at the "
        f"start. Model: `{model}` (preset, `-LN`: N decoder layers), random weights.",
        *(f"\nFailed: {row['mode']}: {row['error']}" for row in session["modes"] if "error" in row),
        "",
        "| floor | measured |",
        "|---|---|",
        f"| memory bandwidth, 1 GiB float32 copy (read + write) | {bandwidth:.1f} GB/s |",
        f"| memory bandwidth, 1 GiB float32 sum (read only) | {rates['bandwidth']['read_gbps']:.1f} GB/s |",
        *(f"| matmul {name} | {gflops:.0f} GFLOP/s |" for name, gflops in rates["matmul_gflops"].items()),
        *(f"| Linear 2560->10240, {name} | {ms:.2f} ms |" for name, ms in rates["linear_ms"].items()),
        "",
        "Floors: FLOPs (torch.utils.flop_counter) / matmul throughput of the mode's compute dtype (bf16 for the "
        "quantized modes) for encoding and prefill; bytes read per decode step (language model without its "
        "embedding table, LM head, KV cache) / copy bandwidth for decoding, with the rates measured again in each "
        "mode's process right after its timings (last column). Median of the runs, best in brackets.",
        "",
        "| mode | image encoding, batch 1 | 224 px | floor | reached | 448 px | floor | reached | matmul |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def gflops(row):
        dtype = "float32" if MODES[row["mode"]].dtype == torch.float32 else "bfloat16"
        return row.get("floors", rates)["matmul_gflops"][dtype]

    def timed(times, flops, row):
        floor = flops / gflops(row) / 1e9
        return (
            f"{statistics.median(times):.3g} s ({min(times):.3g}) | {floor:.3g} s | "
            f"{floor / statistics.median(times):.0%}"
        )

    for row in rows:
        if "encode_s" in row:
            cells = [
                timed(row["encode_s"][size], row["encode_flops"][size], row)
                if size in row["encode_s"]
                else "- | - | -"
                for size in ("224", "448")
            ]
            lines.append(
                f"| {row['mode']} | {row['what']} | {' | '.join(cells)} | {gflops(row):.0f} GFLOP/s |"
            )
    lines += [
        "",
        "| mode | prefill, 55 tokens | batch 1 | floor | reached | batch 8 | floor | reached | matmul |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [timed(row["prefill_s"][batch], row["prefill_flops"][batch], row) for batch in ("1", "8")]
        lines.append(f"| {row['mode']} | {row['what']} | {' | '.join(cells)} | {gflops(row):.0f} GFLOP/s |")
    lines += [
        "",
        "| mode | decode | batch 1 tok/s | floor | reached | batch 8 tok/s | floor | reached | batch 8 / batch 1 | "
        "copy bandwidth |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells, rate = [], {}
        bandwidth = row.get("floors", rates)["bandwidth"]["copy_gbps"]
        for batch in ("1", "8"):
            steps = row["decode_step_s"][batch]
            rate[batch] = int(batch) / statistics.median(steps)
            floor = int(batch) * bandwidth * 1e9 / row["decode_bytes"][batch]
            cells.append(
                f"{rate[batch]:.3g} ({int(batch) / min(steps):.3g}) | {floor:.3g} | {rate[batch] / floor:.0%}"
            )
        lines.append(
            f"| {row['mode']} | {row['what']} | {' | '.join(cells)} | {rate['8'] / rate['1']:.1f}x | {bandwidth:.1f} GB/s |"
        )
    lines += [
        "",
        "| mode | peak resident memory: encoding + generation / whole run | model footprint | "
        "read per decode step (batch 1) | load | "
        "generate with image: first token | logit drift vs fp32: max abs / relative RMS / top-1 agreement |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        drift = row.get("drift")
        drift = (
            f"{drift['max_abs']:.3g} / {drift['relative_rms']:.2%} / {drift['top1_agreement']:.0%}"
            if drift
            else "-"
        )
        serving = row["peak_generation"]
        gpu = (
            f" (GPU {serving['peak_gpu_gb']:.2f} / {row['peak_gpu_gb']:.2f} GB)"
            if "peak_gpu_gb" in row
            else ""
        )
        first = row.get("generate_with_image", {}).get("first_token_s")
        lines.append(
            f"| {row['mode']} | {serving['peak_rss_gb']:.2f} / {row['peak_rss_gb']:.2f} GB{gpu} | {row['footprint_gb']:.2f} GB | "
            f"{row['decode_bytes']['1'] / 1e9:.2f} GB | {row['load_s']:.0f} s | "
            f"{f'{first:.3g} s' if first else '-'} | {drift} |"
        )
    return "\n".join(lines)


def logits_path(root: Path, sizes: Sizes, mode_name: str) -> Path:
    return root / f"{sizes.name}-{mode_name}-logits.pt"


def logit_drift(logits: torch.Tensor, expected: torch.Tensor) -> dict:
    """How far `logits` (positions x vocabulary) are from `expected`: the largest absolute difference, the
    difference's norm relative to `expected`'s, and the fraction of positions with the same top token."""
    return {
        "max_abs": (logits - expected).abs().max().item(),
        "relative_rms": ((logits - expected).norm() / expected.norm()).item(),
        "top1_agreement": (logits.argmax(-1) == expected.argmax(-1)).float().mean().item(),
    }


def fixed_logits(mode_name: str, root: Path, sizes: Sizes) -> dict:
    """One mode, in its own process: its logits at every position of the fixed prompt (image included), saved
    for `drift`, with its load time and peak memory."""
    mode = MODES[mode_name]
    start = time.perf_counter()
    model = load(mode, root, sizes).eval()
    result = {"load_s": time.perf_counter() - start, "footprint_gb": tensor_bytes(model) / 1e9}
    apply_mode(model, mode)
    with torch.inference_mode():
        logits = model(**fixed_prompt(model, mode)).logits.float()[0].cpu()
    torch.save(logits, logits_path(root, sizes, mode_name))
    return {**result, **peak_memory_gb()}


def drift_report(session: dict) -> str:
    m = session["machine"]
    lines = [
        f"Machine: {m['device']} ({m['cpu_features']}), {m['threads']} threads; torch {m['torch']}, bitsandbytes "
        f"{m['bitsandbytes']}; {m['date']}. Model: `{session['model']}`, random weights (float32 = the bf16 "
        f"checkpoint's values); {TEXT_TOKENS} text + 32 image tokens, logits at every position.",
        "",
        "| mode | what | max abs | relative RMS | top-1 agreement | footprint | peak resident memory |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in session["modes"]:
        if "error" in row:
            lines.append(f"| {row['mode']} | failed: {row['error']} | | | | | |")
            continue
        drift = row.get("drift")
        cells = (
            f"{drift['max_abs']:.3g} | {drift['relative_rms']:.2%} | {drift['top1_agreement']:.1%}"
            if drift
            else "reference | - | -"
        )
        lines.append(
            f"| {row['mode']} | {MODES[row['mode']].what} | {cells} | {row['footprint_gb']:.2f} GB | "
            f"{row['peak_rss_gb']:.2f} GB |"
        )
    return "\n".join(lines)


def merge(sessions: list[dict]) -> dict:
    """One session from several runs (a later run's mode replaces an earlier one's); a row without floors of its
    own keeps those of its session. Machine and kernel table come from the first run."""
    modes = {}
    for session in sessions:
        for row in session["modes"]:
            if "error" not in row or row["mode"] not in modes:
                modes[row["mode"]] = {"floors": session["floors"], **row}
    return {**sessions[0], "modes": list(modes.values())}


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "command", choices=["prepare", "run", "drift", "report", "measure", "logits", "quantize"]
    )
    parser.add_argument("arguments", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--preset", default="phi2")
    parser.add_argument("--text-layers", type=int, help="decoder layers, if not the preset's")
    parser.add_argument(
        "--root", type=Path, default=Path("/tmp/tinygptv_bench"), help="where checkpoints live"
    )
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448], help="image sizes to encode")
    parser.add_argument("--output", type=Path, help="JSON file for the raw results")
    args = parser.parse_args()
    sizes = Sizes(args.preset, args.text_layers)

    if args.command == "quantize":
        source, target, kind = args.arguments
        quantize_checkpoint(Path(source), Path(target), kind)
        print(json.dumps(peak_memory_gb()))
    elif args.command == "prepare":
        prepare(args.root, sizes, args.modes)
    elif args.command == "report":
        sessions = [json.loads(Path(path).read_text()) for path in args.arguments]
        print(report(merge(sessions), sessions[0].get("model", args.preset)))
    elif args.command == "measure":
        result = measure(args.arguments[0], args.root, sizes, args.new_tokens, args.repeats, args.sizes)
        print(json.dumps(result))
    elif args.command == "logits":
        print(json.dumps(fixed_logits(args.arguments[0], args.root, sizes)))
    elif args.command == "drift":
        if "fp32" not in args.modes and not logits_path(args.root, sizes, "fp32").exists():
            parser.error("drift compares against fp32's logits: put fp32 in --modes")
        session = {"machine": machine(), "model": sizes.name, "modes": []}
        common = ["--root", str(args.root), "--preset", args.preset]
        if args.text_layers is not None:
            common += ["--text-layers", str(args.text_layers)]
        for mode in sorted(args.modes, key=lambda mode: mode != "fp32"):  # the reference first
            row = {
                "mode": mode,
                **run_isolated(__file__, ["logits", mode, *common], env=dict(MODES[mode].env)),
            }
            if "error" not in row and mode != "fp32":
                reference = torch.load(logits_path(args.root, sizes, "fp32"))
                row["drift"] = logit_drift(torch.load(logits_path(args.root, sizes, mode)), reference)
            session["modes"].append(row)
            print(json.dumps(row), flush=True)
        if args.output:
            args.output.write_text(json.dumps(session, indent=1))
        print(drift_report(session))
    else:
        session = {"machine": machine(), "model": sizes.name, "floors": floors(), "modes": []}
        print(json.dumps(session["floors"]), flush=True)
        common = [
            "--root",
            str(args.root),
            "--preset",
            args.preset,
            "--new-tokens",
            str(args.new_tokens),
            "--repeats",
            str(args.repeats),
            "--sizes",
            *map(str, args.sizes),
        ]
        if args.text_layers is not None:
            common += ["--text-layers", str(args.text_layers)]
        for mode in args.modes:
            row = {
                "mode": mode,
                **run_isolated(__file__, ["measure", mode, *common], env=dict(MODES[mode].env)),
            }
            session["modes"].append(row)
            print(json.dumps(row), flush=True)
            if args.output:
                args.output.write_text(json.dumps(session, indent=1))
        print(report(session, sizes.name))


if __name__ == "__main__":
    main()

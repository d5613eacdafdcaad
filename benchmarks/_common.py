"""What the benchmark scripts share: random full-size models without per-parameter Python initialisation, the
machine's floors (memory bandwidth, matmul throughput), peak memory, and one measurement per subprocess.

Random values are drawn in float32 in a fixed order from one seeded generator and then cast, so a float32 model
built in a process and a bf16 checkpoint written from the same seed hold the same weights up to bf16 rounding.
"""

import datetime
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def random_model(
    model_class, config, dtype: torch.dtype = torch.float32, seed: int = 0, on=None, rounded_through=None
):
    """`model_class(config)` with random weights, built in seconds: parameters start on the meta device (buffers
    such as RoPE frequencies are computed normally), then each is allocated once and filled in bulk. Norm weights
    are 1 and everything else uniform in +-0.02, so activations keep a realistic scale through 32 layers.
    `rounded_through=torch.bfloat16` gives float32 weights equal to those of a bf16 checkpoint of the same seed."""
    from accelerate import init_empty_weights

    on = on or device()
    with init_empty_weights(include_buffers=False):
        model = model_class(config)
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        for name, meta in list(module.named_parameters(recurse=False)):
            values = torch.empty(meta.shape, dtype=torch.float32)
            if isinstance(module, nn.LayerNorm | nn.RMSNorm) or "norm" in type(module).__name__.lower():
                values.fill_(1.0 if name == "weight" else 0.0)
            else:
                values.uniform_(-0.02, 0.02, generator=generator)
            if rounded_through is not None:
                values = values.to(rounded_through)
            module._parameters[name] = nn.Parameter(values.to(on, dtype), requires_grad=meta.requires_grad)
    return model.to(on)


def random_tinygptv(
    preset: str, dtype: torch.dtype = torch.float32, seed: int = 0, on=None, rounded_through=None, **overrides
):
    """(model, tokenizer) for a preset, with the tiny tokenizer that random checkpoints carry."""
    from tinygptv_hf import TinyGPTVForConditionalGeneration
    from tinygptv_hf.checkpoint import fit_tokenizer
    from tinygptv_hf.presets import preset_config
    from tinygptv_hf.tokenization import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config = fit_tokenizer(preset_config(preset, **overrides), tokenizer)
    return random_model(TinyGPTVForConditionalGeneration, config, dtype, seed, on, rounded_through), tokenizer


def write_checkpoint(folder: Path, preset: str, dtype: torch.dtype = torch.bfloat16, **overrides) -> None:
    """A complete random checkpoint folder (weights, config, processor), loadable with the Auto classes."""
    from tinygptv_hf.checkpoint import build_processor, save_checkpoint

    model, tokenizer = random_tinygptv(preset, dtype, on=torch.device("cpu"), **overrides)
    save_checkpoint(model.eval(), build_processor(tokenizer, model.config), folder)


def count_parameters(folder: Path) -> int:
    from safetensors import safe_open

    total = 0
    for path in folder.glob("*.safetensors"):
        with safe_open(path, "pt") as weights:
            for key in weights.keys():
                total += math.prod(weights.get_slice(key).get_shape())
    return total


def peak_memory_gb() -> dict:
    """The process's own high-water marks: resident memory (memory-mapped weights it touched count too) and, on
    CUDA, the allocator's peak. Linux keeps `getrusage`'s ru_maxrss across exec, so a child started by a larger
    parent would report the parent's peak; VmHWM belongs to this process image alone."""
    status = Path("/proc/self/status")
    if status.exists():
        kib = next(int(line.split()[1]) for line in status.open() if line.startswith("VmHWM"))
    else:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = {"peak_rss_gb": kib * 1024 / 1e9}
    if status.exists():  # what is resident now: pages of mapped files (the weights) and anonymous memory
        now = {line.split(":")[0]: int(line.split()[1]) for line in status.open() if line.startswith("Rss")}
        peak.update(
            rss_file_gb=now.get("RssFile", 0) * 1024 / 1e9, rss_anon_gb=now.get("RssAnon", 0) * 1024 / 1e9
        )
    if torch.cuda.is_available():
        peak["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return peak


def seconds(function, repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        function()
    synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        synchronize()
        times.append(time.perf_counter() - start)
    return times


def memory_bandwidth(gib: float = 1.0, repeats: int = 5) -> dict:
    """GB/s of a large tensor copy (bytes read + written) and of a sum (bytes read), best of `repeats`."""
    source = torch.ones(int(gib * 2**30) // 4, device=device())
    target = torch.empty_like(source)
    nbytes = source.numel() * 4
    copy = min(seconds(lambda: target.copy_(source), repeats))
    read = min(seconds(lambda: source.sum(), repeats))
    return {"copy_gbps": 2 * nbytes / copy / 1e9, "read_gbps": nbytes / read / 1e9}


def matmul_throughput(dtype: torch.dtype, size: int = 2048, repeats: int = 5, budget_s: float = 3.0) -> float:
    """GFLOP/s of a square matmul, best of `repeats`. A dtype without fast kernels here (bf16 and fp16 on an
    AVX2 CPU: ~0.3 GFLOP/s, minutes per 2048^3 product) is measured on the largest size whose products fit in
    `budget_s`, judged from a 256^3 probe; its rate at that size is the same, since its kernels are not blocked."""
    size = size * 2 if torch.cuda.is_available() else size
    probe = 256
    a = torch.randn(probe, probe, device=device()).to(dtype)
    rate = 2 * probe**3 / min(seconds(lambda: a @ a, 2)) / 1e9
    while size > probe and 2 * size**3 * (repeats + 1) / (rate * 1e9) > budget_s:
        size //= 2
    a = torch.randn(size, size, device=device()).to(dtype)
    b = torch.randn(size, size, device=device()).to(dtype)
    best = min(seconds(lambda: a @ b, repeats))
    return 2 * size**3 / best / 1e9


def machine() -> dict:
    import bitsandbytes
    import peft
    import transformers

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
    else:
        name = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").open()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
    flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[-1].split("\n", 1)[0].split()
    return {
        "device": name,
        "cpu_features": " ".join(
            f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16") if f in flags
        ),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "memory_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "bitsandbytes": bitsandbytes.__version__,
        "peft": peft.__version__,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average": os.getloadavg()[0],  # other work on a shared machine slows every figure
    }


def run_isolated(script: str, arguments: list[str], env: dict | None = None) -> dict:
    """Run `script arguments` in a fresh process (with `env` added to this one's environment), so that its peak
    memory is its own; return the JSON object on the last line of its output, or {"error": ...}."""
    result = subprocess.run(
        [sys.executable, script, *arguments],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        return {
            "error": f"killed by signal {-result.returncode} (out of memory?)"
            if result.returncode < 0
            else (lines[-1] if lines else f"exit status {result.returncode}")
        }
    return json.loads(result.stdout.strip().splitlines()[-1])

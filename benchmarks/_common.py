"""What the benchmark scripts share: random full-size models without per-parameter Python initialisation, the
machine's floors (memory bandwidth, matmul throughput), peak memory, the one timing harness (`seconds` for a call,
`timed_generate` for prefill and decode steps inside `generate`), logit drift, one measurement per subprocess, and
the one Markdown table writer.

Random values are drawn in float32 in a fixed order from one seeded generator and then cast, so a float32 model
built in a process and a bf16 checkpoint written from the same seed hold the same weights up to bf16 rounding.
"""

import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch
from torch import nn
from transformers import LogitsProcessor


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def random_parameters(model, seed: int = 0, rounded_through=None):
    """(module, name, float32 values) for each parameter of `model` (on the meta device), drawn in a fixed order
    from one seeded generator: norm weights 1, norm biases 0, everything else uniform in +-0.02, so activations keep
    a realistic scale through 32 layers. `rounded_through=torch.bfloat16` gives the values of a bf16 checkpoint."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        for name, meta in list(module.named_parameters(recurse=False)):
            values = torch.empty(meta.shape, dtype=torch.float32)
            if isinstance(module, nn.LayerNorm | nn.RMSNorm) or "norm" in type(module).__name__.lower():
                values.fill_(1.0 if name == "weight" else 0.0)
            else:
                values.uniform_(-0.02, 0.02, generator=generator)
            if rounded_through is not None:
                values = values.to(rounded_through).float()
            yield module, name, values


def empty_model(model_class, config):
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return model_class(config)


def random_model(
    model_class, config, dtype: torch.dtype = torch.float32, seed: int = 0, on=None, rounded_through=None
):
    """`model_class(config)` with `random_parameters`, built in seconds: parameters start on the meta device
    (buffers such as RoPE frequencies are computed normally), then each is allocated once and filled in bulk."""
    on = on or device()
    model = empty_model(model_class, config)
    for module, name, values in random_parameters(model, seed, rounded_through):
        requires_grad = module._parameters[name].requires_grad
        module._parameters[name] = nn.Parameter(values.to(on, dtype), requires_grad=requires_grad)
    return model.to(on)


def write_random_folder(model_class, config, folder: Path, seed: int = 0, shard_gb: float = 2.0) -> None:
    """The weights `random_model(model_class, config, seed=seed)` holds, saved as a float32 `save_pretrained`
    folder one shard at a time (a full-size Phi-2 is 11 GB: it is never held whole)."""
    from safetensors.torch import save_file

    model = empty_model(model_class, config)
    names = {module: prefix for prefix, module in model.named_modules()}
    folder.mkdir(parents=True, exist_ok=True)
    shards, shard, size, total_size = [], {}, 0, 0

    def flush():
        shards.append(list(shard))
        save_file(shard, folder / f"part-{len(shards)}.safetensors", metadata={"format": "pt"})
        shard.clear()

    for module, name, values in random_parameters(model, seed):
        shard[f"{names[module]}.{name}".lstrip(".")] = values
        size += values.numel() * 4
        if size > shard_gb * 1e9:
            flush()
            total_size, size = total_size + size, 0
    flush()
    weight_map = {}
    for number, keys in enumerate(shards, 1):
        final = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        (folder / f"part-{number}.safetensors").rename(folder / final)
        weight_map.update(dict.fromkeys(keys, final))
    index = {"metadata": {"total_size": total_size + size}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    config.dtype, config.architectures = torch.float32, [model_class.__name__]
    config.save_pretrained(folder)


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
            f
            for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_bf16", "amx_int8")
            if f in flags
        ),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "memory_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "bitsandbytes": version("bitsandbytes"),
        "peft": peft.__version__,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average": os.getloadavg()[0],  # other work on a shared machine slows every figure
        "load_averages": list(os.getloadavg()),
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


class StepClock(LogitsProcessor):
    """Stamps the time at which each new token's logits are ready, inside the real
    `generate` loop."""

    def __init__(self):
        self.stamps = []

    def __call__(self, input_ids, scores):
        synchronize()
        self.stamps.append(time.perf_counter())
        return scores


def timed_generate(model, new_tokens: int, **inputs) -> tuple[torch.Tensor, list[float]]:
    """Greedy generation of exactly `new_tokens`; returns the tokens and the time to each token's logits (the
    first is the prefill, the gaps between the others are decode steps)."""
    from transformers import LogitsProcessorList

    clock = StepClock()
    first = next(iter(inputs.values()))
    synchronize()
    start = time.perf_counter()
    tokens = model.generate(
        **inputs,
        attention_mask=torch.ones(first.shape[:2], dtype=torch.long, device=first.device),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        stop_strings=None,
        pad_token_id=0,
        logits_processor=LogitsProcessorList([clock]),
    )
    return tokens, [stamp - start for stamp in clock.stamps]


def decode_steps(stamps: list[float]) -> list[float]:
    return [later - earlier for earlier, later in zip(stamps, stamps[1:], strict=False)]


def logit_drift(logits: torch.Tensor, expected: torch.Tensor) -> dict:
    """How far `logits` (positions x vocabulary) are from `expected`: the largest absolute difference, the
    difference's norm relative to `expected`'s, the mean KL divergence KL(expected || logits) per position, and
    the fraction of positions with the same top token."""
    logits, expected = logits.double(), expected.double()
    kl = torch.nn.functional.kl_div(
        logits.log_softmax(-1), expected.log_softmax(-1), log_target=True, reduction="none"
    )
    return {
        "max_abs": (logits - expected).abs().max().item(),
        "relative_rms": ((logits - expected).norm() / expected.norm()).item(),
        "mean_kl": kl.sum(-1).mean().item(),
        "top1_agreement": (logits.argmax(-1) == expected.argmax(-1)).double().mean().item(),
    }


def table(rows: list[dict], columns: dict) -> str:
    """A Markdown table: one line per row, one column per `title: cell(row) -> str`; a cell that raises KeyError
    (a figure the row does not have) is shown as "-". Titles ending in a space are right-aligned."""
    lines = ["| " + " | ".join(title.strip() for title in columns) + " |"]
    lines.append("|" + "|".join("---:" if title.endswith(" ") else "---" for title in columns) + "|")
    for row in rows:
        cells = []
        for cell in columns.values():
            try:
                cells.append(cell(row))
            except KeyError:
                cells.append("-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine_line(m: dict) -> str:
    loads = m.get("load_averages", [m["load_average"]])
    return (
        f"Machine: {m['device']} ({m['cpu_features']}), {m['cores']} cores, {m['threads']} threads, "
        f"{m['memory_gb']:.0f} GB; torch {m['torch']}, transformers {m['transformers']}; {m['date']}; load average "
        f"{' / '.join(f'{x:.1f}' for x in loads)} (1 / 5 / 15 min) at the start."
    )


BEGIN, END = "<!-- results: ", "<!-- end results -->"


def write_docs(page: Path, report) -> list[str]:
    """Rewrite every block of `page` between `<!-- results: FILE.json [FILE.json ...] -->` and
    `<!-- end results -->` with `report(sessions)` of those results files (paths relative to the repository
    root), so that each figure in the page comes from a results file; returns the blocks' file lists."""
    root = page.resolve().parent.parent
    text, out, written = page.read_text(), [], []
    while BEGIN in text:
        before, rest = text.split(BEGIN, 1)
        header, rest = rest.split("-->", 1)
        if END not in rest:
            raise ValueError(f"{page}: a '{BEGIN.strip()}' block has no '{END}' line.")
        files = header.split()
        sessions = [json.loads((root / name).read_text()) for name in files]
        out += [before, f"{BEGIN}{' '.join(files)} -->\n", report(sessions), "\n"]
        text = END + rest.split(END, 1)[1]
        out.append(END)
        text = text[len(END) :]
        written.append(files)
    page.write_text("".join(out) + text)
    return written

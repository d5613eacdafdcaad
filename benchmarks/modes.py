"""Every benchmark mode, in one table that every benchmark script reads.

A mode is how the model loads plus what is done to it after loading:

- `model`: "tinygptv" (the whole TinyGPT-V) or "phi" (stock `PhiForCausalLM` with the preset's text sizes: no
  q/k LayerNorm, no extra RMSNorm; the part llama.cpp can run too);
- `dtype`: of what stays unquantized, and of the activations;
- `quantization`: a factory of a transformers quantization config, or None. `prepare` writes the checkpoint it
  quantizes once (serving loads pre-quantized weights, so the float file is never mapped beside them);
- `transforms`: functions applied in order to the loaded model;
- `env`: environment of the mode's own process, set before Python starts.

Adding a mode is one line in `MODES`, plus at most one transform function; an unknown name is an error
(`mode(name)`). Weights are random, the same for every mode of a model and size: a float32 TinyGPT-V is built in
the process (its values those of the bf16 checkpoint, so that drift is the mode's alone), everything else loads
from the checkpoints `prepare` writes under `--root`.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from _common import device, empty_model, random_tinygptv, run_isolated, write_checkpoint, write_random_folder

# The package's CPU kernels, imported here only.
from tinygptv_hf.chat.cpu_float32 import CpuFloat32Linear, use_cpu_gemm_choice
from tinygptv_hf.modeling import CpuInt8Linear, TinyGPTVCpuInt4Config, TinyGPTVCpuInt8Config
from tinygptv_hf.modeling.integration_tinygptv import quantize_int8, quantized_layer

# ---------------------------------------------------------------------------------------------- quantizations


def bnb_int8():
    from transformers import BitsAndBytesConfig

    # An explicit list replaces the package's default skips: nothing is left out, the LM head included.
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=[])


def bnb_nf4():
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        llm_int8_skip_modules=[],
    )


# ---------------------------------------------------------------------------------------------- transforms


def gemm_choice(model):
    """Every frozen Linear through the package's float32 GEMM choice (oneDNN-packed weights where faster here)."""
    use_cpu_gemm_choice(model.requires_grad_(False))


def compile_layers(model):
    """torch.compile each decoder layer; on CPU with inductor freezing, which packs weights for oneDNN."""
    if device().type == "cpu":
        torch._inductor.config.freezing = True
    # Prefill, decode, batch sizes and the cache's first use each guard a graph; 32 layers share the code.
    torch._dynamo.config.recompile_limit = 64
    for layer in language_model(model).layers:
        layer.compile(dynamic=True)


def torchao_int8(model):
    """torchao's int8 weight-only tensors on every Linear, the LM head included (needs the `bench` extra)."""
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    quantize_(model, Int8WeightOnlyConfig())


def bnb_4bit_in_place(model):
    """bitsandbytes repacks each 4-bit weight into a new buffer at its first forward on AVX512-BF16 CPUs, while
    the mapped checkpoint stays resident: weights held twice. Use them in place, as on other CPUs."""
    from bitsandbytes.nn import Linear4bit

    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False


def cpu_int8_layer(linear: torch.nn.Linear) -> CpuInt8Linear:
    """The package's int8 layer for `linear`'s weight, quantized as the `cpu_int8` quantizer does at load."""
    layer = quantized_layer(linear, TinyGPTVCpuInt8Config())
    weight, layer.weight_scale = quantize_int8(linear.weight.detach())
    layer.weight = torch.nn.Parameter(weight, requires_grad=False)
    layer.bias = linear.bias
    return layer


def cpu_int8_twin(model):
    """A cpu_int8 model with `model`'s weights, for comparisons in one process: every Linear quantized, every
    other tensor shared with `model`."""
    twin = empty_model(type(model), model.config)
    twin.load_state_dict(model.state_dict(), assign=True)
    for name, module in list(twin.named_modules()):
        if type(module) is torch.nn.Linear:
            twin.set_submodule(name, cpu_int8_layer(module))
    return twin.eval()


def undo_gemm_choice(model):
    """Plain weights and the stock class again, after `gemm_choice`."""
    for module in model.modules():
        if type(module) is CpuFloat32Linear:
            module.unpack()
            module.__class__ = torch.nn.Linear


# ---------------------------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Mode:
    what: str
    model: str = "tinygptv"
    dtype: torch.dtype = torch.float32
    quantization: Callable | None = None
    transforms: tuple[Callable, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    devices: tuple[str, ...] = ("cpu",)


BF16 = torch.bfloat16
# glibc's malloc raises its mmap threshold (up to 32 MB) each time a large block is freed, so later blocks come
# from the heap, which returns memory only from its top; a fixed threshold and trimming at 0 return it at once.
LEAN_MALLOC = (("MALLOC_MMAP_THRESHOLD_", "65536"), ("MALLOC_TRIM_THRESHOLD_", "0"))
BOTH = ("cpu", "cuda")

MODES = {
    "fp32": Mode("everything float32, eager"),
    "fp32-gemm-choice": Mode("float32, every Linear through use_cpu_gemm_choice", transforms=(gemm_choice,)),
    "cpu-int8": Mode("cpu_int8: every Linear int8, per-channel scales; rest float32", quantization=TinyGPTVCpuInt8Config),
    "cpu-int4": Mode("cpu_int4: every Linear int4, groups of 32 with scale and zero point", quantization=TinyGPTVCpuInt4Config),
    "cpu-int8-lean": Mode("cpu-int8, glibc malloc returning freed blocks", quantization=TinyGPTVCpuInt8Config, env=LEAN_MALLOC),
    "torchao-int8": Mode("torchao Int8WeightOnlyConfig on every Linear, float32 activations", transforms=(torchao_int8,)),
    "torchao-int8-compile": Mode("torchao int8 as above, decoder layers compiled", transforms=(torchao_int8, compile_layers)),
    "bf16": Mode("bf16 (Q-Former float32), eager", dtype=BF16, devices=BOTH),
    "bf16-compile": Mode("bf16, decoder layers torch.compile'd", dtype=BF16, transforms=(compile_layers,), devices=("cuda",)),
    "int8": Mode("every Linear bitsandbytes int8, rest bf16", dtype=BF16, quantization=bnb_int8, devices=BOTH),
    "int8-lean": Mode("int8, glibc malloc returning freed blocks", dtype=BF16, quantization=bnb_int8, env=LEAN_MALLOC, devices=BOTH),
    "nf4": Mode("every Linear bitsandbytes nf4 + double quant, rest bf16", dtype=BF16, quantization=bnb_nf4, devices=BOTH),
    "nf4-lean": Mode("nf4, weights used in place (no repack)", dtype=BF16, quantization=bnb_nf4, transforms=(bnb_4bit_in_place,)),
    "nf4-lean-malloc": Mode("nf4-lean, glibc malloc returning freed blocks", dtype=BF16, quantization=bnb_nf4, transforms=(bnb_4bit_in_place,), env=LEAN_MALLOC),
    "phi-fp32": Mode("stock PhiForCausalLM, float32, eager", model="phi"),
    "phi-fp32-gemm-choice": Mode("stock Phi, float32, use_cpu_gemm_choice", model="phi", transforms=(gemm_choice,)),
    "phi-cpu-int8": Mode("stock Phi, cpu_int8", model="phi", quantization=TinyGPTVCpuInt8Config),
    "phi-cpu-int4": Mode("stock Phi, cpu_int4", model="phi", quantization=TinyGPTVCpuInt4Config),
    "phi-bf16": Mode("stock Phi, bf16, eager", model="phi", dtype=BF16, devices=BOTH),
    "phi-bf16-compile": Mode("stock Phi, bf16, compiled", model="phi", dtype=BF16, transforms=(compile_layers,), devices=("cuda",)),
}  # fmt: skip


def available() -> list[str]:
    """The modes this machine can run (CPU or CUDA)."""
    return [name for name, entry in MODES.items() if device().type in entry.devices]


def mode(name: str) -> Mode:
    if name not in MODES:
        raise ValueError(f"Unknown benchmark mode {name!r}; add it to MODES in benchmarks/modes.py or choose one of {sorted(MODES)}.")  # fmt: skip
    return MODES[name]


# ---------------------------------------------------------------------------------------------- sizes


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

    def phi_config(self):
        """Stock Phi with the text sizes of the preset and Phi-2's vocabulary (GPT-2's 50257 tokens padded to
        51200, which llama.cpp's converter reads), whatever the preset's."""
        from transformers import PhiConfig

        from tinygptv_hf.presets import PHI2_TEXT, PRESETS

        text = {**PRESETS[self.preset]["text_config"], **self.text_overrides()}
        return PhiConfig(**{**text, "vocab_size": PHI2_TEXT["vocab_size"]})


# ---------------------------------------------------------------------------------------------- checkpoints


def float_checkpoint(entry: Mode, root: Path, sizes: Sizes) -> Path:
    """The float folder of a mode's model: bf16 TinyGPT-V, float32 stock Phi."""
    return root / f"{sizes.name}-{'phi' if entry.model == 'phi' else 'bf16'}"


def checkpoint(entry: Mode, root: Path, sizes: Sizes) -> Path | None:
    """The folder a mode loads (None: built in the process): its float folder, or that folder quantized by the
    mode's factory."""
    if entry.model == "tinygptv" and entry.quantization is None and entry.dtype == torch.float32:
        return None
    base = float_checkpoint(entry, root, sizes)
    return base.with_name(f"{base.name}-{entry.quantization.__name__}") if entry.quantization else base


def prepare(root: Path, sizes: Sizes, names: list[str], script: str) -> None:
    """Write the checkpoints the modes `names` load that do not exist yet: the float ones first, the quantized
    ones from them, each quantization in its own process (`script quantize MODE`)."""
    for name in names:
        entry = mode(name)
        target = checkpoint(entry, root, sizes)
        if target is None or (target / "config.json").exists():
            continue
        source = float_checkpoint(entry, root, sizes)
        if not (source / "config.json").exists():
            if entry.model == "phi":
                from transformers import PhiForCausalLM

                write_random_folder(PhiForCausalLM, sizes.phi_config(), source)
            else:
                write_checkpoint(source, sizes.preset, torch.bfloat16, text_config=sizes.text_overrides())
            print(f"wrote {source}", flush=True)
        if target != source:
            print(f"wrote {target}: {run_isolated(script, ['quantize', name, '--root', str(root), '--preset', sizes.preset, *text_layers_argv(sizes)])}", flush=True)  # fmt: skip


def text_layers_argv(sizes: Sizes) -> list[str]:
    return [] if sizes.text_layers is None else ["--text-layers", str(sizes.text_layers)]


def model_class(entry: Mode):
    from transformers import AutoModelForImageTextToText, PhiForCausalLM

    import tinygptv_hf  # noqa: F401  (registers the classes)

    return PhiForCausalLM if entry.model == "phi" else AutoModelForImageTextToText


def quantize(name: str, root: Path, sizes: Sizes) -> None:
    """The quantized checkpoint of mode `name`, written from its float one (run in a process of its own)."""
    entry = mode(name)
    source, target = float_checkpoint(entry, root, sizes), checkpoint(entry, root, sizes)
    model = model_class(entry).from_pretrained(
        source, dtype=entry.dtype, quantization_config=entry.quantization(), device_map=device()
    )
    model.save_pretrained(target)
    if entry.model == "tinygptv":
        from transformers import AutoProcessor

        AutoProcessor.from_pretrained(source).save_pretrained(target)


def load(name: str, root: Path, sizes: Sizes):
    """The mode's model, loaded and transformed, in eval mode."""
    entry = mode(name)
    missing = [key for key, _ in entry.env if key not in os.environ]
    if missing:
        raise RuntimeError(
            f"mode {name} needs {missing} set before Python starts; run it through `run_isolated`."
        )
    folder = checkpoint(entry, root, sizes)
    if folder is None:
        # The bf16 checkpoint's weights exactly, so that the drift of the modes loaded from it (or from the
        # checkpoints quantized from it) is theirs alone, not bf16's rounding of the weights.
        model = random_tinygptv(
            sizes.preset, entry.dtype, rounded_through=torch.bfloat16, text_config=sizes.text_overrides()
        )[0]
    elif not (folder / "config.json").exists():
        raise FileNotFoundError(
            f"{folder} does not exist: run `prepare --modes {name}` with the same sizes first."
        )
    else:
        model = model_class(entry).from_pretrained(folder, dtype=entry.dtype, device_map=device())
    for transform in entry.transforms:
        transform(model)
    return model.eval()


def language_model(model):
    return model.model.language_model if hasattr(model.model, "language_model") else model.model

"""CPU int8 inference: every Linear layer holds int8 weights with one float32 scale per output channel.

A CPU decode step reads every weight once per token, so its speed is the bytes it reads: int8 weights read a
quarter of float32's. How a layer multiplies depends on how many rows it gets:
- few rows (decoding: one per sequence) go through torch's int8 weight-only kernel, `aten._weight_int8pack_mm`,
  on activations cast to the dtype that kernel is fastest with on this CPU (measured once per process: on AVX2
  and AVX-512 its bfloat16 path is vectorised and its float32 one a plain loop, 20-50x slower), and the result
  is cast back to float32;
- many rows (prompts, the vision tower's 257 patches, the Q-Former) are bound by arithmetic, not bytes, and the
  int8 kernel is slower there than a plain GEMM, so the weight is converted, at most 32 MiB of it at a time
  (one layer, or a slice of output channels of a large one; never the model), into the dtype whose GEMM is
  faster on this CPU (timed once per process): bfloat16 where the CPU multiplies it natively (AVX512-BF16,
  AMX: about twice float32's speed; int8 values convert to bfloat16 exactly, so only the activations and the
  products are rounded, as on the few-rows path), else float32, through the faster of MKL's and oneDNN's GEMM
  for that many rows.
Everything that is not a Linear layer (embeddings, norms, the patch convolution, position tables, query tokens)
stays float32, and so do all activations between layers.

It is a transformers quantizer (`quant_method: "tinygptv_cpu_int8"`): `from_pretrained(..., cpu_int8=True)` or
`quantization_config=TinyGPTVCpuInt8Config()` quantizes each weight as it is read from the checkpoint (the float
weight is dropped at once, so no second copy is ever held), and `save_pretrained` writes the int8 weights and
scales with the config, so a saved folder loads int8 again without being asked.

This file ships as remote code: it may import only pip packages and siblings in its own folder.
"""

import bisect
import collections
import ctypes
import functools
import os
import sys
import threading
import time

import torch
import torch.nn.functional as F
from torch import nn
from transformers.core_model_loading import ConversionOps
from transformers.quantizers import HfQuantizer
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING
from transformers.quantizers.quantizers_utils import get_module_from_name, should_convert_module
from transformers.utils.quantization_config import QuantizationConfigMixin

CPU_INT8_METHOD = "tinygptv_cpu_int8"
# Bytes of weight dequantized at once on the many-rows path (32 MiB): in bfloat16, every layer of the vision
# tower and Q-Former in one piece and Phi-2's MLP in two (each piece costs a few more passes over the threads,
# which a busy machine makes expensive), and still a negligible transient next to the model.
DEQUANTIZED_SLICE_BYTES = 1 << 25
# `_weight_int8pack_mm`'s x86 kernels step through the input features a vector at a time with aligned loads and
# no remainder loop. Measured with torch 2.13 (AMD EPYC, AVX-512 and AVX2 dispatch): the AVX-512 kernel gives wrong
# numbers or crashes the process for widths that are not a multiple of 16 (the AVX2 one: 8), for activations not
# aligned to 32 bytes (AVX2: 16), and for weights not aligned to 16 bytes once 4 or more rows come. A
# memory-mapped safetensors file aligns its tensors to 8 bytes only: such weights are copied once at load
# (`align_weights`).
KERNEL_K_MULTIPLE = 16
KERNEL_WEIGHT_ALIGNMENT = 16
KERNEL_ACTIVATION_ALIGNMENT = 64
MADV_PAGEOUT = 21  # Linux >= 5.4
MADV_POPULATE_READ = 22  # Linux >= 5.14


class TinyGPTVCpuInt8Config(QuantizationConfigMixin):
    """Int8 weight-only CPU inference.

    Args:
        max_decode_rows: layers that get at most this many rows (tokens x sequences) use the int8 kernel; more rows
            use weights dequantized to bfloat16 or float32 (on the 2-core AMD EPYC of docs/benchmarks.md the int8
            kernel stops winning between 16 and 55 rows).
        modules_to_not_convert: Linear layers to keep in float32 (transformers' patterns: a module-name prefix, a
            regex or a suffix); by default every Linear layer is quantized, the LM head, vision tower and Q-Former
            included, which is what fits the full-size model in 5 GB.
    """

    def __init__(self, max_decode_rows: int = 16, modules_to_not_convert: list[str] | None = None, **kwargs):
        self.quant_method = CPU_INT8_METHOD
        self.max_decode_rows = max_decode_rows
        self.modules_to_not_convert = modules_to_not_convert
        self.post_init()

    def post_init(self):
        if not isinstance(self.max_decode_rows, int) or self.max_decode_rows < 0:
            raise ValueError(f"max_decode_rows must be a non-negative integer, got {self.max_decode_rows!r}.")
        if self.modules_to_not_convert is not None and not isinstance(self.modules_to_not_convert, list):
            raise ValueError(
                f"modules_to_not_convert must be a list of names, got {self.modules_to_not_convert!r}."
            )


def cpu_int8_config(quantization_config=None, dtype=None) -> TinyGPTVCpuInt8Config:
    """The config `from_pretrained(..., cpu_int8=True)` stands for; a different quantization or a half-precision
    `dtype` cannot be combined with it."""
    if quantization_config is not None and not isinstance(quantization_config, TinyGPTVCpuInt8Config):
        raise ValueError(
            f"cpu_int8=True is its own quantization and cannot be combined with quantization_config="
            f"{type(quantization_config).__name__}; pass one or the other."
        )
    if dtype not in (None, "auto", "float32", torch.float32):
        raise ValueError(
            f"cpu_int8 keeps every unquantized part in float32, but dtype={dtype} was asked for; leave dtype out."
        )
    return quantization_config or TinyGPTVCpuInt8Config()


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel: int8 values in [-127, 127] and the float32 scale of each row, computed
    a slice of rows at a time so that the float32 transient stays small even for the LM head."""
    weight = weight.detach()
    scale = torch.maximum(weight.amax(dim=1), -weight.amin(dim=1)).float()
    scale = scale.clamp_(min=torch.finfo(torch.float32).tiny) / 127
    quantized = torch.empty(weight.shape, dtype=torch.int8)
    step = max(1, DEQUANTIZED_SLICE_BYTES // torch.float32.itemsize // weight.shape[1])
    for start in range(0, weight.shape[0], step):
        rows = weight[start : start + step].float() / scale[start : start + step, None]
        quantized[start : start + step] = rows.round_().clamp_(-127, 127)
    return quantized, scale


@functools.cache
def kernel_activation_dtype() -> torch.dtype:
    """The activation dtype in which `_weight_int8pack_mm` decodes fastest on this CPU, timed once per process on
    one Phi-2 attention-sized weight. On x86 (AVX2 and AVX-512) only its bfloat16 path is vectorised; on ARM all
    are. Ties go to float32, which rounds nothing."""
    weight = torch.ones(2560, 2560, dtype=torch.int8)
    calls = {
        dtype: functools.partial(
            torch.ops.aten._weight_int8pack_mm,
            torch.ones(1, 2560, dtype=dtype),
            weight,
            torch.ones(2560, dtype=dtype),
        )
        for dtype in (torch.float32, torch.bfloat16)
    }
    best = fastest(calls)
    return torch.bfloat16 if best[torch.bfloat16] < 0.8 * best[torch.float32] else torch.float32


def fastest(calls: dict, rounds: int = 5) -> dict:
    """The best time of each call, the calls taking turns (a busy spell on a shared machine slows them alike)."""
    best = dict.fromkeys(calls, float("inf"))
    for call in calls.values():
        call()
    for _ in range(rounds):
        for key, call in calls.items():
            start = time.perf_counter()
            call()
            best[key] = min(best[key], time.perf_counter() - start)
    return best


# Row counts at which the float32 GEMMs are compared: one decoding sequence, a batch of them, a prompt.
CALIBRATION_ROWS = (1, 8, 64)


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_linear(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """oneDNN's float32 inner product, on a plain weight or one packed by `onednn_packed`."""
    return torch.ops.mkldnn._linear_pointwise(rows, weight, bias, "none", [], "")


def onednn_packed(weight: torch.Tensor) -> torch.Tensor:
    """`weight` (out, in) reordered into oneDNN's blocked layout for its inner product (a new tensor of the same
    size; `to_dense()` gives the plain weight back, bit for bit)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach())


def phi2_mlp_weight() -> torch.Tensor:
    """A weight of Phi-2's MLP (10240 x 2560, 105 MB): the calibrations' test piece."""
    return torch.randn(10240, 2560) / 50


@functools.cache
def float32_linear_choice() -> tuple[bool, ...]:
    """For each of `CALIBRATION_ROWS`, whether oneDNN beats stock `F.linear` (MKL's GEMM on x86) on this CPU,
    timed once per process on one Phi-2 MLP weight. On the project's AMD EPYC (AVX2) MKL's path for a few rows
    moves about half the memory bandwidth and oneDNN 2-7x more rows per second; elsewhere it may be the other way
    round, so it is measured, not assumed."""
    if not onednn_available():
        return (False,) * len(CALIBRATION_ROWS)
    weight = phi2_mlp_weight()
    choice = []
    for count in CALIBRATION_ROWS:
        rows = torch.randn(count, 2560)
        candidates = {
            False: lambda rows=rows: F.linear(rows, weight),
            True: lambda rows=rows: onednn_linear(rows, weight, None),
        }
        best = fastest(candidates, 3)
        choice.append(best[True] < best[False])
    return tuple(choice)


@functools.cache
def packed_weights_faster() -> bool:
    """Whether oneDNN on a packed weight beats `float32_linear` on the plain one, on average over
    `CALIBRATION_ROWS` (the ratio of times), timed once per process on one Phi-2 MLP weight. On the project's AMD
    EPYC, with AVX-512 and limited to AVX2 alike, the packed product takes 0.7-0.8x the plain one's time at 8 and
    64 rows and about the same at 1 row (docs/benchmarks.md)."""
    if not onednn_available():
        return False
    weight = phi2_mlp_weight()
    packed = onednn_packed(weight)
    ratios = []
    for count in CALIBRATION_ROWS:
        rows = torch.randn(count, 2560)
        best = fastest(
            {
                "plain": lambda rows=rows: float32_linear(rows, weight),
                "packed": lambda rows=rows: onednn_linear(rows, packed, None),
            },
            3,
        )
        ratios.append(best["packed"] / best["plain"])
    return sum(ratios) < len(ratios)


# Names the many-rows path's dtype instead of timing it (`many_rows_dtype`).
MANY_ROWS_DTYPE_VARIABLE = "TINYGPTV_CPU_INT8_MANY_ROWS_DTYPE"


@functools.cache
def many_rows_dtype() -> torch.dtype:
    """The dtype of the many-rows path's GEMM on this CPU, timed once per process: bfloat16 where it beats
    float32 (oneDNN on AVX512-BF16 or AMX), else float32. Without native bfloat16 a bfloat16 GEMM runs hundreds
    of times slower, so a small product is timed first and only a CPU that passes it is timed on Phi-2 sizes.
    `TINYGPTV_CPU_INT8_MANY_ROWS_DTYPE` (`bfloat16` or `float32`) sets it instead, e.g. for the same numbers in
    every process of a busy machine, where a timing can come out either way."""
    chosen = os.environ.get(MANY_ROWS_DTYPE_VARIABLE)
    if chosen:
        if chosen not in ("bfloat16", "float32"):
            raise ValueError(f"{MANY_ROWS_DTYPE_VARIABLE} must be bfloat16 or float32, got {chosen!r}")
        return getattr(torch, chosen)

    def products(count: int, width: int) -> dict:
        rows, weight = torch.randn(count, width), torch.randn(width, width) / 50
        half_rows, half_weight = rows.bfloat16(), weight.bfloat16()
        return {
            torch.float32: lambda: float32_linear(rows, weight),
            torch.bfloat16: lambda: F.linear(half_rows, half_weight),
        }

    small = fastest(products(16, 256), 2)
    if small[torch.bfloat16] > 2 * small[torch.float32]:
        return torch.float32
    best = fastest(products(64, 2560), 3)
    return torch.bfloat16 if best[torch.bfloat16] < 0.8 * best[torch.float32] else torch.float32


def autograd_records(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd would record a product of `tensors` (oneDNN's ops have no gradient)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def float32_linear(
    rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """`F.linear` on 2-D float32 `rows`, by whichever GEMM is faster here for about that many rows. oneDNN's op
    has no gradient, so whenever autograd would record the product (a trainable weight counts as much as an
    input that needs a gradient) it is stock `F.linear`."""
    nearest = min(range(len(CALIBRATION_ROWS)), key=lambda i: abs(CALIBRATION_ROWS[i] - rows.shape[0]))
    if float32_linear_choice()[nearest] and not autograd_records(rows, weight, bias):
        return onednn_linear(rows, weight, bias)
    return F.linear(rows, weight, bias)


class CpuFloat32Linear(nn.Linear):
    """`nn.Linear` whose float32 CPU inference goes through the faster GEMM of this machine: `float32_linear` on
    the plain weight, or, once `pack()`ed, oneDNN on a frozen weight held in oneDNN's blocked layout (in place of
    the plain one, never beside it). Anything else (other devices or dtypes, a product autograd records) is
    stock `nn.Linear`, on the plain weight rebuilt for the call if packed. The state dict always holds the plain
    weight, so saving and loading see an ordinary Linear."""

    @property
    def packed(self) -> bool:
        return self.weight.is_mkldnn

    def pack(self) -> None:
        """Hold the weight in oneDNN's blocked layout; the plain weight is dropped (a memory-mapped one's pages stay
        resident until released: `use_cpu_gemm_choice` does)."""
        if not self.packed:
            self.weight = nn.Parameter(onednn_packed(self.weight), requires_grad=False)

    def unpack(self) -> None:
        """Hold the weight plain again (still frozen)."""
        if self.packed:
            self.weight = nn.Parameter(self.weight.detach().to_dense(), requires_grad=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        cpu_float32 = hidden_states.device.type == "cpu" and hidden_states.dtype == torch.float32
        if self.packed:
            if cpu_float32 and not autograd_records(hidden_states, self.bias):
                return onednn_linear(hidden_states, self.weight, self.bias)
            return F.linear(hidden_states, self.weight.to_dense().to(hidden_states), self.bias)
        if not cpu_float32 or self.weight.dtype != torch.float32 or self.weight.device.type != "cpu":
            return super().forward(hidden_states)
        rows = float32_linear(hidden_states.reshape(-1, self.in_features), self.weight, self.bias)
        return rows.view(*hidden_states.shape[:-1], self.out_features)

    def _apply(self, fn, *args, **kwargs):
        """`.to()`, `.bfloat16()` and the like convert the plain weight (a packed one converts to nothing else);
        one still float32 on the CPU is packed again."""
        packed = self.packed
        self.unpack()
        super()._apply(fn, *args, **kwargs)
        if packed and self.weight.dtype == torch.float32 and self.weight.device.type == "cpu":
            self.pack()
        return self

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.packed:
            destination[prefix + "weight"] = self.weight.detach().to_dense()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        packed = self.packed
        self.unpack()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if packed:
            self.pack()


def use_cpu_gemm_choice(model: nn.Module) -> int:
    """Make every plain `nn.Linear` of `model` a `CpuFloat32Linear` in place (same parameters, same state dict):
    full-precision CPU inference at the faster GEMM of this machine. Where packed weights are faster here
    (`packed_weights_faster`), each frozen float32 CPU weight is packed in place (freeze the model first,
    `model.requires_grad_(False)`, for inference at full speed); trainable weights stay plain, since oneDNN's
    product has no gradient, and so do weights shared with another module (tied embeddings), for their other
    user. Returns how many layers. The one-off timings (`packed_weights_faster`, which times `float32_linear` and so
    its choice too) run here, not in the first request."""
    layers = [module for module in model.modules() if type(module) is nn.Linear]
    for layer in layers:
        layer.__class__ = CpuFloat32Linear
    if layers and packed_weights_faster():
        users = collections.Counter(
            id(weight) for _, weight in model.named_parameters(remove_duplicate=False)
        )
        spans = mapped_file_spans()
        with torch.no_grad():
            for layer in layers:
                plain = layer.weight
                packable = (
                    plain.dtype == torch.float32 and plain.device.type == "cpu" and not plain.requires_grad
                )
                if packable and users[id(plain)] == 1:
                    layer.pack()
                    release_pages(plain, spans)
                    return_freed_heap()  # at once: the peak stays the loaded model's
    return len(layers)


def to_float32_in_place(model: nn.Module) -> nn.Module:
    """Every floating parameter and buffer of `model` in float32, converted one tensor at a time, the pages of each
    memory-mapped original handed back at once; returns `model`. `from_pretrained(..., dtype=torch.float32)` and
    `model.float()` keep a mapped checkpoint's pages resident beside the copies: a full-size bf16 checkpoint loaded
    as float32 peaked at 23.0 GB, loaded as stored and converted this way at 16.0 GB (docs/benchmarks.md). A
    tensor several modules share (tied embeddings) stays one tensor."""
    slots = [
        (tensors, name, tensor)
        for module in model.modules()
        for tensors in (module._parameters, module._buffers)
        for name, tensor in tensors.items()
        if tensor is not None and tensor.is_floating_point() and tensor.dtype != torch.float32
    ]
    spans, converted = mapped_file_spans(), {}
    with torch.no_grad():
        for tensors, name, tensor in slots:
            if id(tensor) not in converted:
                copy = tensor.detach().float()
                if isinstance(tensor, nn.Parameter):
                    copy = nn.Parameter(copy, requires_grad=tensor.requires_grad)
                converted[id(tensor)] = copy
                release_pages(tensor, spans)
            tensors[name] = converted[id(tensor)]
    return model


class CpuInt8Linear(nn.Module):
    """`nn.Linear` with an int8 `weight` (out, in) and a float32 `weight_scale` (out,); bias stays float32."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, max_decode_rows: int = 16):
        super().__init__()
        self.in_features, self.out_features, self.max_decode_rows = in_features, out_features, max_decode_rows
        self.weight = nn.Parameter(
            torch.empty(out_features, in_features, dtype=torch.int8), requires_grad=False
        )
        self.register_buffer("weight_scale", torch.empty(out_features, dtype=torch.float32))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if hidden_states.device.type != "cpu":
            raise RuntimeError(
                f"The cpu_int8 model runs on the CPU only, but got inputs on {hidden_states.device}; on a GPU, load "
                "the checkpoint without cpu_int8 (bf16, or bitsandbytes for 8-bit)."
            )
        rows = hidden_states.reshape(-1, self.in_features)
        if rows.shape[0] <= self.max_decode_rows and self.kernel_can_read_weight():
            output = self._int8_kernel(rows)
        else:
            output = self._dequantized(rows)
        return output.view(*hidden_states.shape[:-1], self.out_features).to(hidden_states.dtype)

    def kernel_can_read_weight(self) -> bool:
        return (
            self.in_features % KERNEL_K_MULTIPLE == 0
            and self.weight.data_ptr() % KERNEL_WEIGHT_ALIGNMENT == 0
        )

    def _int8_kernel(self, rows: torch.Tensor) -> torch.Tensor:
        dtype = kernel_activation_dtype()
        rows = rows.to(dtype).contiguous()
        if rows.data_ptr() % KERNEL_ACTIVATION_ALIGNMENT:
            rows = rows.clone()
        product = torch.ops.aten._weight_int8pack_mm(rows, self.weight, self.weight_scale.to(dtype))
        return product.float() if self.bias is None else torch.add(self.bias, product)  # float32 either way

    def _dequantized(self, rows: torch.Tensor) -> torch.Tensor:
        """GEMM in `many_rows_dtype()` on the int8 weight converted into this thread's scratch buffer (a fresh
        buffer per slice would cost a page fault per 4 KiB), in as few equal slices of output channels as keep
        each under `DEQUANTIZED_SLICE_BYTES`; the scales multiply the float32 output, so the conversion is a
        plain copy."""
        dtype = many_rows_dtype()
        rows = rows.to(dtype)
        slices = -(-self.weight.numel() * dtype.itemsize // DEQUANTIZED_SLICE_BYTES)
        step = -(-self.out_features // slices)
        scratch = _scratch(step * self.in_features, dtype)
        products = []
        for start in range(0, self.out_features, step):
            weight = self.weight[start : start + step]
            dequantized = scratch[: weight.numel()].view(weight.shape).copy_(weight)
            gemm = float32_linear if dtype == torch.float32 else F.linear
            products.append(gemm(rows, dequantized))
        product = products[0] if len(products) == 1 else torch.cat(products, dim=1)
        if self.bias is None:  # float32 either way (type promotion), in one pass
            return product * self.weight_scale
        return torch.addcmul(self.bias, product, self.weight_scale)


_thread_state = threading.local()


def _scratch(elements: int, dtype: torch.dtype) -> torch.Tensor:
    """A buffer of at least `elements` of `dtype` for the calling thread, kept for its next call (one per thread,
    so that two generations in two threads never share it)."""
    buffer = getattr(_thread_state, "scratch", None)
    if buffer is None or buffer.dtype != dtype or buffer.numel() < elements:
        buffer = _thread_state.scratch = torch.empty(elements, dtype=dtype)
    return buffer


def align_weights(model: nn.Module) -> int:
    """Copy every int8 weight the kernel cannot read in place (a memory-mapped checkpoint aligns tensors to 8
    bytes) into memory of torch's own (64-byte aligned), one layer at a time, and hand the pages of the mapped
    copy back to the kernel, so the weights are held once; returns how many were copied."""
    copied, spans = 0, mapped_file_spans()
    for module in model.modules():
        if isinstance(module, CpuInt8Linear) and module.weight.data_ptr() % KERNEL_WEIGHT_ALIGNMENT:
            mapped = module.weight.data
            module.weight.data = mapped.clone()
            release_pages(mapped, spans)
            copied += 1
    return copied


@functools.cache
def _libc_function(name: str):
    """A function of the C library this process runs on (`madvise`, glibc's `malloc_trim`), or None where there
    is none (not Linux, another C library)."""
    return getattr(ctypes.CDLL(None), name, None) if sys.platform == "linux" else None


def return_freed_heap() -> None:
    """Hand the C heap's free memory back to the kernel (glibc's `malloc_trim`). Weights freed one at a time can
    leave gigabytes free inside the heap yet resident (3.7 GB after packing the full-size model at once)."""
    malloc_trim = _libc_function("malloc_trim")
    if malloc_trim is not None:
        malloc_trim(ctypes.c_size_t(0))


def _advise(tensor: torch.Tensor, advice: int) -> None:
    """`madvise` on the pages wholly inside a contiguous `tensor`'s own bytes (not its storage's: a memory-mapped
    checkpoint's tensors can share one storage, the whole file); nothing happens for a strided view, or where
    the call (or the advice, on an older kernel) does not exist."""
    madvise = _libc_function("madvise")
    if madvise is None or not tensor.is_contiguous():
        return
    page = os.sysconf("SC_PAGE_SIZE")
    start = -(-tensor.data_ptr() // page) * page
    end = (tensor.data_ptr() + tensor.numel() * tensor.element_size()) // page * page
    if end > start:
        madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), advice)


def populate_pages(model: nn.Module) -> None:
    """Map now (`MADV_POPULATE_READ`) every page of the tensors a request reads whole: all but embedding tables,
    which are read a row per token (Phi-2's is 0.5 GB in float32). A checkpoint loaded without conversion stays
    memory-mapped, and its pages would otherwise be faulted in, from the page cache or the disk, during the first
    request."""
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            continue
        for tensor in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
            if tensor.device.type == "cpu" and tensor.numel():
                _advise(tensor, MADV_POPULATE_READ)


def warm_up(model: nn.Module) -> None:
    """Do at load what the first request would otherwise pay for: the one-off kernel timings this process's
    paths use and the mapping of the weights' pages."""
    kernel_activation_dtype()
    if many_rows_dtype() == torch.float32:
        float32_linear_choice()
    populate_pages(model)


def mapped_file_spans() -> list[tuple[int, int]]:
    """The address ranges (start, end) of the files this process has memory-mapped, sorted (from
    `/proc/self/maps`; none where it does not exist)."""
    if not os.path.exists("/proc/self/maps"):
        return []
    spans = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            addresses, _, _, _, inode = line.split(maxsplit=5)[:5]
            if inode != "0":
                start, end = addresses.split("-")
                spans.append((int(start, 16), int(end, 16)))
    return sorted(spans)


def release_pages(tensor: torch.Tensor, spans: list[tuple[int, int]] | None = None) -> None:
    """Ask Linux to reclaim the pages wholly inside `tensor`'s memory (`MADV_PAGEOUT`) if it lies in a memory-mapped
    file: clean file pages, which leave this process's resident memory and are read from the file again if ever
    touched. Other memory is left alone: it is freed when dropped, and `MADV_PAGEOUT` would first write it to swap,
    where there is some. `spans` (`mapped_file_spans()`) lets a caller releasing many tensors read the process's
    mappings once; where the call does not exist nothing happens."""
    if tensor.is_mkldnn or not tensor.numel():
        return
    spans = mapped_file_spans() if spans is None else spans
    start = tensor.data_ptr()
    index = bisect.bisect_right(spans, (start, float("inf"))) - 1
    if index >= 0 and start < spans[index][1]:
        _advise(tensor.detach(), MADV_PAGEOUT)


def replace_linear_layers(model: nn.Module, config: TinyGPTVCpuInt8Config) -> list[str]:
    """Swap every `nn.Linear` not excluded by `config.modules_to_not_convert` for an empty `CpuInt8Linear` (on the
    meta device: the loader fills it); returns the names replaced."""
    replaced = []
    for name, module in list(model.named_modules()):
        if type(module) is nn.Linear and should_convert_module(name, config.modules_to_not_convert):
            with torch.device("meta"):
                layer = CpuInt8Linear(
                    module.in_features, module.out_features, module.bias is not None, config.max_decode_rows
                )
            model.set_submodule(name, layer)
            replaced.append(name)
    return replaced


class QuantizeOnLoad(ConversionOps):
    """Turns a float weight read from the checkpoint into the int8 `weight` and `weight_scale` of its layer."""

    def __init__(self, hf_quantizer):
        self.hf_quantizer = hf_quantizer

    def convert(self, input_dict, full_layer_name=None, **kwargs):
        (weight,) = next(iter(input_dict.values()))
        quantized, scale = quantize_weight(weight)
        return {full_layer_name: quantized, f"{full_layer_name}_scale": scale}


class TinyGPTVCpuInt8Quantizer(HfQuantizer):
    requires_calibration = False
    quantization_config: TinyGPTVCpuInt8Config

    def validate_environment(self, device_map=None, **kwargs):
        if not hasattr(torch.ops.aten, "_weight_int8pack_mm"):
            raise ImportError(
                f"cpu_int8 needs torch's int8 weight-only kernel (torch >= 2.4); this is {torch.__version__}."
            )
        places = set(device_map.values()) if isinstance(device_map, dict) else {device_map}
        off_cpu = {place for place in places if place is not None and torch.device(place).type != "cpu"}
        if off_cpu:
            raise ValueError(
                f"cpu_int8 runs on the CPU only, but device_map puts weights on {sorted(map(str, off_cpu))}; load "
                "with device_map='cpu' (or none), or use bf16 / bitsandbytes on a GPU."
            )

    def update_device_map(self, device_map):
        return device_map or {"": "cpu"}

    def update_dtype(self, dtype):
        """Everything that stays unquantized runs in float32, whatever the checkpoint holds (a bf16 checkpoint's
        "auto" dtype arrives here as bf16): the activations between layers stay float32 on every CPU."""
        return torch.float32

    def param_needs_quantization(self, model, param_name: str, **kwargs) -> bool:
        module, tensor_name = get_module_from_name(model, param_name)
        return isinstance(module, CpuInt8Linear) and tensor_name == "weight" and not self.pre_quantized

    def _process_model_before_weight_loading(self, model, **kwargs):
        if not replace_linear_layers(model, self.quantization_config):
            raise ValueError("cpu_int8 found no Linear layer to quantize; check modules_to_not_convert.")

    def _process_model_after_weight_loading(self, model, **kwargs):
        align_weights(model)
        warm_up(model)
        return model

    def get_quantize_ops(self):
        return QuantizeOnLoad(self)

    def is_serializable(self):
        return True

    @property
    def is_trainable(self) -> bool:
        return False


# The package and the remote-code copy of this file can both be imported in one process; the first registration
# serves both (their layers behave the same).
AUTO_QUANTIZATION_CONFIG_MAPPING.setdefault(CPU_INT8_METHOD, TinyGPTVCpuInt8Config)
AUTO_QUANTIZER_MAPPING.setdefault(CPU_INT8_METHOD, TinyGPTVCpuInt8Quantizer)

__all__ = [
    "CpuFloat32Linear",
    "CpuInt8Linear",
    "TinyGPTVCpuInt8Config",
    "TinyGPTVCpuInt8Quantizer",
    "cpu_int8_config",
    "to_float32_in_place",
    "use_cpu_gemm_choice",
]

"""The layers of the CPU quantizations (`quantizer_tinygptv.py`): int8 per output channel, int4 per group.

A CPU decode step reads every weight once per token, so its speed is the bytes it reads. Few rows (decoding: one
per sequence) go through torch's weight-only kernels, `aten._weight_int8pack_mm` and
`aten._weight_int4pack_mm_for_cpu`, on activations in the plan's `kernel_dtype` (`cpu_plan_tinygptv.py`). Many
rows (prompts, the vision tower's 257 patches, the Q-Former) are bound by arithmetic, not bytes: an int8 weight is
converted, at most 32 MiB of it at a time, into the plan's `many_rows_dtype` for a plain GEMM (int8 values convert
to bfloat16 exactly); the int4 kernel serves every row count. Everything that is not a Linear layer stays
float32, and so do the activations between layers.

This file ships as remote code: it may import only pip packages and siblings in its own folder.
"""

import threading

import torch
import torch.nn.functional as F
from torch import nn
from transformers.quantizers.quantizers_utils import should_convert_module

from .cpu_plan_tinygptv import cpu_kernel_plan, float32_linear

# Bytes of weight dequantized at once on the int8 many-rows path (32 MiB): every layer of the vision tower and
# Q-Former in one piece in bfloat16 and Phi-2's MLP in two; a negligible transient next to the model.
DEQUANTIZED_SLICE_BYTES = 1 << 25
# `_weight_int8pack_mm`'s x86 kernels step through the input features a vector at a time with aligned loads and
# no remainder loop. Measured with torch 2.13 (AMD EPYC, AVX-512 and AVX2 dispatch): wrong numbers or a crash for
# widths that are not a multiple of 16, activations not aligned to 32 bytes, weights not aligned to 16 bytes
# once 4 or more rows come. A memory-mapped safetensors file aligns its tensors to 8 bytes only: such weights
# are copied once at load (`prepare_for_kernels`).
KERNEL_K_MULTIPLE = 16
KERNEL_WEIGHT_ALIGNMENT = 16
KERNEL_ACTIVATION_ALIGNMENT = 64
INT4_LEVELS = 15  # codes 0..15; the kernel computes weight = (code - 8) * scale + zero
INT4_REFITS = 2  # least-squares refits of each group's scale and zero after the first min/max rounding


def off_cpu_error(device) -> RuntimeError:
    return RuntimeError(
        f"The CPU-quantized model runs on the CPU only, but got inputs on {device}; on a GPU, load the checkpoint "
        "without quantization_config (bf16), or with bitsandbytes for 8 or 4 bits."
    )


def row_slices(weight: torch.Tensor, itemsize: int = 4):
    """Slices of `weight`'s rows whose float32 copy stays under `DEQUANTIZED_SLICE_BYTES`."""
    step = max(1, DEQUANTIZED_SLICE_BYTES // itemsize // weight.shape[1])
    return [slice(start, start + step) for start in range(0, weight.shape[0], step)]


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel: values in [-127, 127] and the float32 scale of each row."""
    weight = weight.detach()
    scale = torch.maximum(weight.amax(dim=1), -weight.amin(dim=1)).float()
    scale = scale.clamp_(min=torch.finfo(torch.float32).tiny) / 127
    quantized = torch.empty(weight.shape, dtype=torch.int8)
    for rows in row_slices(weight):
        quantized[rows] = (weight[rows].float() / scale[rows, None]).round_().clamp_(-127, 127)
    return quantized, scale


def fit_int4_groups(groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes (0..15), scale and zero of each row of `groups` (float32, one group a row) such that
    `(code - 8) * scale + zero` approximates it; scale and zero are rounded to bfloat16, the kernel's dtype.
    Starts from the group's min/max, then refits scale and offset by least squares on the codes (the codes are
    then rounded again), as llama.cpp's k-quants fit a scale and a minimum per sub-block."""
    low, high = groups.amin(dim=1), groups.amax(dim=1)
    scale = ((high - low) / INT4_LEVELS).clamp_(min=torch.finfo(torch.bfloat16).tiny)
    offset = low

    def codes_for(scale, offset):
        return ((groups - offset[:, None]) / scale[:, None]).round_().clamp_(0, INT4_LEVELS)

    codes = codes_for(scale, offset)
    for _ in range(INT4_REFITS):
        centred = codes - codes.mean(dim=1, keepdim=True)
        spread = (centred * centred).sum(dim=1)
        fitted = (centred * groups).sum(dim=1) / spread.clamp(min=1e-12)
        usable = (spread > 0) & (fitted > 0)
        scale = torch.where(usable, fitted, scale).clamp_(min=torch.finfo(torch.bfloat16).tiny)
        offset = torch.where(usable, groups.mean(dim=1) - scale * codes.mean(dim=1), offset)
        codes = codes_for(scale, offset)
    scale = scale.bfloat16().float().clamp_(min=torch.finfo(torch.bfloat16).tiny)
    zero = (offset + 8 * scale).bfloat16().float()
    codes = ((groups - zero[:, None]) / scale[:, None] + 8).round_().clamp_(0, INT4_LEVELS)
    return codes, scale, zero


def quantize_int4(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-wise asymmetric int4: `codes` uint8 (out, in / 2), column 2j in the low nibble of byte j and 2j + 1
    in the high one, and `scale_zero` bfloat16 (in / group_size, out, 2), the layout the kernel reads."""
    weight = weight.detach()
    out_features, in_features = weight.shape
    groups = in_features // group_size
    codes = torch.empty(out_features, in_features // 2, dtype=torch.uint8)
    scale_zero = torch.empty(groups, out_features, 2, dtype=torch.bfloat16)
    for rows in row_slices(weight):
        block = weight[rows].float()
        count = block.shape[0]
        fitted, scale, zero = fit_int4_groups(block.reshape(-1, group_size))
        fitted = fitted.to(torch.uint8).view(count, in_features)
        codes[rows] = fitted[:, 0::2] | (fitted[:, 1::2] << 4)
        scale_zero[:, rows] = torch.stack([scale, zero], dim=1).view(count, groups, 2).transpose(0, 1)
    return codes, scale_zero


def kernel_rows(rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`rows` in `dtype`, contiguous and aligned as the weight-only kernels read them."""
    rows = rows.to(dtype).contiguous()
    return rows.clone() if rows.data_ptr() % KERNEL_ACTIVATION_ALIGNMENT else rows


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

    def prepare_for_kernels(self) -> None:
        """After loading: a weight the kernel cannot read in place (memory-mapped at 8 bytes) is copied into
        torch's own 64-byte aligned memory."""
        if self.weight.data_ptr() % KERNEL_WEIGHT_ALIGNMENT:
            self.weight.data = self.weight.data.clone()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if hidden_states.device.type != "cpu":
            raise off_cpu_error(hidden_states.device)
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
        dtype = cpu_kernel_plan().kernel_dtype
        product = torch.ops.aten._weight_int8pack_mm(
            kernel_rows(rows, dtype), self.weight, self.weight_scale.to(dtype)
        )
        return product.float() if self.bias is None else torch.add(self.bias, product)  # float32 either way

    def _dequantized(self, rows: torch.Tensor) -> torch.Tensor:
        """GEMM in the plan's `many_rows_dtype` on the int8 weight converted into this thread's scratch buffer, in
        as few equal slices of output channels as keep each under `DEQUANTIZED_SLICE_BYTES`; the scales multiply
        the float32 output, so the conversion is a plain copy."""
        dtype = cpu_kernel_plan().many_rows_dtype
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


class CpuInt4Linear(nn.Module):
    """`nn.Linear` with int4 weights in groups of `group_size` input features, each group with a bfloat16 scale
    and zero: `weight` uint8 (out, in / 2, two codes a byte, see `quantize_int4`), `weight_scale_zero` bfloat16
    (groups, out, 2); bias float32. After loading, `prepare_for_kernels` rewrites `weight` in place into the
    kernel's layout for this CPU (the same size, but it differs between AVX2 and AVX-512); the state dict always
    holds the portable layout."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, group_size: int = 32):
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.packed = False
        self.weight = nn.Parameter(
            torch.empty(out_features, in_features // 2, dtype=torch.uint8), requires_grad=False
        )
        self.register_buffer(
            "weight_scale_zero", torch.empty(in_features // group_size, out_features, 2, dtype=torch.bfloat16)
        )
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"group_size={self.group_size}"
        )

    def prepare_for_kernels(self) -> None:
        if not self.packed:
            codes = torch.stack([self.weight & 15, self.weight >> 4], dim=-1).view(self.out_features, -1)
            self.weight.data = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.int(), 1)
            self.packed = True

    def codes(self) -> torch.Tensor:
        """The portable `weight` (see `quantize_int4`), read back from the kernel's layout if packed: the kernel
        applied to identity rows with scale 1 and zero 8 returns each code exactly (integers below 16 are exact
        in bfloat16)."""
        if not self.packed:
            return self.weight.data
        unit = torch.tensor([1.0, 8.0], dtype=torch.bfloat16).expand(
            self.in_features // self.group_size, self.out_features, 2
        )
        columns = []
        for start in range(0, self.in_features, 256):
            identity = torch.eye(self.in_features, dtype=torch.bfloat16)[start : start + 256]
            product = torch.ops.aten._weight_int4pack_mm_for_cpu(
                identity, self.weight, self.group_size, unit.contiguous()
            )
            columns.append(product.t().to(torch.uint8))
        codes = torch.cat(columns, dim=1)
        return codes[:, 0::2] | (codes[:, 1::2] << 4)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "weight"] = self.codes()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if hidden_states.device.type != "cpu":
            raise off_cpu_error(hidden_states.device)
        if not self.packed:
            self.prepare_for_kernels()
        dtype = cpu_kernel_plan().kernel_dtype
        rows = kernel_rows(hidden_states.reshape(-1, self.in_features), dtype)
        scale_zero = self.weight_scale_zero if dtype == torch.bfloat16 else self.weight_scale_zero.to(dtype)
        product = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, self.weight, self.group_size, scale_zero)
        output = product.float() if self.bias is None else torch.add(self.bias, product)
        return output.view(*hidden_states.shape[:-1], self.out_features).to(hidden_states.dtype)


_thread_state = threading.local()


def _scratch(elements: int, dtype: torch.dtype) -> torch.Tensor:
    """A buffer of at least `elements` of `dtype` for the calling thread, kept for its next call (one per thread,
    so that two generations in two threads never share it)."""
    buffer = getattr(_thread_state, "scratch", None)
    if buffer is None or buffer.dtype != dtype or buffer.numel() < elements:
        buffer = _thread_state.scratch = torch.empty(elements, dtype=dtype)
    return buffer


def quantized_layer(module: nn.Linear, config) -> nn.Module | None:
    """The empty quantized layer (on the meta device: the loader fills it) that replaces `module` under `config`,
    or None where the layer cannot take that format (int4: input width not a multiple of the group size)."""
    with torch.device("meta"):
        if config.bits == 8:
            return CpuInt8Linear(
                module.in_features, module.out_features, module.bias is not None, config.max_decode_rows
            )
        if module.in_features % config.group_size:
            return None
        return CpuInt4Linear(
            module.in_features, module.out_features, module.bias is not None, config.group_size
        )


def replace_linear_layers(model: nn.Module, config) -> list[str]:
    """Swap every `nn.Linear` not excluded by `config.modules_to_not_convert` for its empty quantized layer;
    returns the names replaced."""
    replaced = []
    for name, module in list(model.named_modules()):
        if type(module) is nn.Linear and should_convert_module(name, config.modules_to_not_convert):
            layer = quantized_layer(module, config)
            if layer is not None:
                model.set_submodule(name, layer)
                replaced.append(name)
    return replaced


def prepare_for_kernels(model: nn.Module) -> int:
    """After loading, every quantized layer made ready for its kernel (`prepare_for_kernels`); returns how many."""
    layers = [module for module in model.modules() if isinstance(module, (CpuInt8Linear, CpuInt4Linear))]
    for layer in layers:
        layer.prepare_for_kernels()
    return len(layers)

"""The CPU kernel plan: which dtype and which GEMM the quantized layers use on this CPU, decided once per process.

Numerics follow from the CPU's capabilities alone, so two runs on one machine give the same answers however busy
it is:
- `kernel_dtype`, the activations given to torch's weight-only kernels (`_weight_int8pack_mm`,
  `_weight_int4pack_mm_for_cpu`) for few rows: bfloat16 where ATen dispatches to AVX2 or AVX-512 (their only
  vectorised path there; float32 runs a scalar loop 10-20x slower), else float32;
- `many_rows_dtype`, the GEMM on dequantized weights for prompts and images: bfloat16 where the CPU multiplies it
  natively (AVX512-BF16 or AMX, with ATen and oneDNN allowed AVX-512), else float32.
Timing only chooses between paths of the same dtype (`float32_paths`, timed at the first float32 product, which
int8 and int4 on a CPU with native bfloat16 never make): oneDNN or MKL for float32 products, and whether float32
weights are held in oneDNN's packed layout; an alternative is taken when it needs under `MARGIN` of the default's
time. Each part is logged once at INFO. `TINYGPTV_CPU_KERNEL_PLAN` (JSON, any of the fields of both) replaces what
it names, e.g. `{"kernel_dtype": "float32", "many_rows_dtype": "float32", "onednn_rows": [], "packed": false}`;
fields it names are neither derived nor timed.

This file ships as remote code: it may import only pip packages and siblings in its own folder.
"""

import dataclasses
import functools
import json
import os
import time

import torch
import torch.nn.functional as F
from transformers.utils import logging

logger = logging.get_logger(__name__)

PLAN_VARIABLE = "TINYGPTV_CPU_KERNEL_PLAN"
# A timed alternative must take less than this fraction of the default path's time to be chosen.
MARGIN = 0.8
# Row counts at which float32 GEMMs are timed: one decoding sequence, a batch of them, a prompt.
CALIBRATION_ROWS = (1, 8, 64)
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclasses.dataclass(frozen=True)
class CpuKernelPlan:
    """The numerics: decided by the CPU's capabilities, never timed."""

    kernel_dtype: torch.dtype
    many_rows_dtype: torch.dtype


@dataclasses.dataclass(frozen=True)
class Float32Paths:
    """Paths of one dtype for float32 products, timed with one margin: `onednn_rows`, the `CALIBRATION_ROWS` at
    which they go through oneDNN rather than MKL; `packed`, frozen float32 weights held in oneDNN's blocked layout
    (the package's float32 mode)."""

    onednn_rows: tuple[int, ...]
    packed: bool


def capability_dtypes(isa: str, capabilities: dict, onednn_isa: str = "") -> dict:
    """The plan's dtypes for ATen's dispatch level `isa` ("AVX512", "AVX2", "DEFAULT", ...), the CPU's
    `torch.cpu.get_capabilities()` and oneDNN's `ONEDNN_MAX_CPU_ISA` limit ("" for none)."""
    vectorised = isa in ("AVX2", "AVX512")
    onednn_allows = not onednn_isa or "AVX512" in onednn_isa.upper() or "AMX" in onednn_isa.upper()
    native_bf16 = bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))
    many_rows_bf16 = isa == "AVX512" and native_bf16 and onednn_allows
    return {
        "kernel_dtype": torch.bfloat16 if vectorised else torch.float32,
        "many_rows_dtype": torch.bfloat16 if many_rows_bf16 else torch.float32,
    }


def this_cpu_dtypes() -> dict:
    """`capability_dtypes` of this process: its ATen dispatch level, its CPU and its oneDNN limit."""
    return capability_dtypes(
        torch.backends.cpu.get_cpu_capability(),
        torch.cpu.get_capabilities(),
        os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
    )


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_linear(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """oneDNN's float32 inner product, on a plain weight or one packed by `onednn_packed`."""
    return torch.ops.mkldnn._linear_pointwise(rows, weight, bias, "none", [], "")


def onednn_packed(weight: torch.Tensor) -> torch.Tensor:
    """`weight` (out, in) reordered into oneDNN's blocked layout (`to_dense()` gives it back, bit for bit)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach())


def best_times(calls: dict, rounds: int = 3) -> dict:
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


def timed_float32_paths() -> dict:
    """`onednn_rows` and `packed`, timed on one Phi-2 MLP weight (10240 x 2560): oneDNN against MKL (stock
    `F.linear`) at each of `CALIBRATION_ROWS`, then oneDNN on the packed weight against the chosen plain path."""
    if not onednn_available():
        return {"onednn_rows": (), "packed": False}
    weight = torch.randn(10240, 2560) / 50
    packed = onednn_packed(weight)
    onednn_rows, ratios = [], []
    for count in CALIBRATION_ROWS:
        rows = torch.randn(count, 2560)
        best = best_times(
            {
                "mkl": lambda rows=rows: F.linear(rows, weight),
                "onednn": lambda rows=rows: onednn_linear(rows, weight, None),
                "packed": lambda rows=rows: onednn_linear(rows, packed, None),
            }
        )
        if best["onednn"] < MARGIN * best["mkl"]:
            onednn_rows.append(count)
        ratios.append(best["packed"] / min(best["mkl"], best["onednn"]))
    return {"onednn_rows": tuple(onednn_rows), "packed": sum(ratios) / len(ratios) < MARGIN}


def parse_plan_variable(text: str) -> dict:
    """The fields `TINYGPTV_CPU_KERNEL_PLAN` names, checked."""
    fields = {field.name for plan in (CpuKernelPlan, Float32Paths) for field in dataclasses.fields(plan)}
    try:
        given = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{PLAN_VARIABLE} must be a JSON object, got {text!r} ({error}).") from error
    if not isinstance(given, dict) or not set(given) <= fields:
        raise ValueError(
            f"{PLAN_VARIABLE} must be a JSON object with some of {sorted(fields)}, got {text!r}."
        )
    for name in ("kernel_dtype", "many_rows_dtype"):
        if name in given:
            if given[name] not in DTYPES:
                raise ValueError(
                    f"{PLAN_VARIABLE}: {name} must be one of {sorted(DTYPES)}, got {given[name]!r}."
                )
            given[name] = DTYPES[given[name]]
    if "onednn_rows" in given:
        rows = given["onednn_rows"]
        if not isinstance(rows, list) or not set(rows) <= set(CALIBRATION_ROWS):
            raise ValueError(
                f"{PLAN_VARIABLE}: onednn_rows must be a list of {list(CALIBRATION_ROWS)}, got {rows!r}."
            )
        given["onednn_rows"] = tuple(rows)
    if "packed" in given and not isinstance(given["packed"], bool):
        raise ValueError(f"{PLAN_VARIABLE}: packed must be true or false, got {given['packed']!r}.")
    return given


def given_fields(plan_class) -> dict:
    """The fields of `plan_class` that `TINYGPTV_CPU_KERNEL_PLAN` sets."""
    text = os.environ.get(PLAN_VARIABLE)
    names = {field.name for field in dataclasses.fields(plan_class)}
    return {key: value for key, value in parse_plan_variable(text).items() if key in names} if text else {}


@functools.cache
def cpu_kernel_plan() -> CpuKernelPlan:
    """This process's numerics (see the module's docstring), made at their first use and logged once."""
    given = given_fields(CpuKernelPlan)
    isa = torch.backends.cpu.get_cpu_capability()
    plan = CpuKernelPlan(**{**this_cpu_dtypes(), **given})
    logger.info(
        f"CPU kernel plan (ATen {isa}{f', {PLAN_VARIABLE} sets {sorted(given)}' if given else ''}): weight-only "
        f"kernels on {str(plan.kernel_dtype)[6:]} activations, prompts and images in {str(plan.many_rows_dtype)[6:]}"
    )
    return plan


@functools.cache
def float32_paths() -> Float32Paths:
    """This process's float32 GEMM paths, timed at their first use (unless set) and logged once."""
    given = given_fields(Float32Paths)
    paths = Float32Paths(**{**(timed_float32_paths() if len(given) < 2 else {}), **given})
    logger.info(
        f"CPU float32 products through oneDNN at rows {list(paths.onednn_rows)} (else MKL), weights "
        f"{'packed' if paths.packed else 'plain'}{f' ({PLAN_VARIABLE} sets {sorted(given)})' if given else ''}"
    )
    return paths


def float32_linear(
    rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """`F.linear` on 2-D float32 `rows` through the plan's GEMM for about that many rows. oneDNN's op has no
    gradient, so whenever autograd would record the product it is stock `F.linear`."""
    nearest = min(CALIBRATION_ROWS, key=lambda count: abs(count - rows.shape[0]))
    if nearest in float32_paths().onednn_rows and not autograd_records(rows, weight, bias):
        return onednn_linear(rows, weight, bias)
    return F.linear(rows, weight, bias)


def autograd_records(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd would record a product of `tensors` (oneDNN's ops have no gradient)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)

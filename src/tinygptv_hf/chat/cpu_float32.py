"""Full-precision CPU inference for the chat and the web demo: a checkpoint converted to float32 one tensor at a
time, and every Linear layer through the float32 GEMM the CPU kernel plan chose (`modeling/cpu_plan_tinygptv.py`),
on weights packed in oneDNN's layout where the plan says so.

Memory is managed here, in the package, not in the remote code a checkpoint ships: the pages of a memory-mapped
original are handed back (`MADV_PAGEOUT`) as soon as its copy exists, and glibc's heap is trimmed after packing, so
the peak stays the loaded model's. Those pages are clean file pages, which the kernel may drop anyway under
memory pressure (a cgroup limit): the release makes the resident size honest, it does not change what fits.
"""

import bisect
import collections
import ctypes
import functools
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.cpu_plan_tinygptv import (
    autograd_records,
    float32_linear,
    float32_paths,
    onednn_linear,
    onednn_packed,
)

MADV_PAGEOUT = 21  # Linux >= 5.4


class CpuFloat32Linear(nn.Linear):
    """`nn.Linear` whose float32 CPU inference goes through the plan's GEMM: `float32_linear` on the plain weight,
    or, once `pack()`ed, oneDNN on a frozen weight held in oneDNN's blocked layout (in place of the plain one).
    Anything else (other devices or dtypes, a product autograd records) is stock `nn.Linear`, on the plain weight
    rebuilt for the call if packed. The state dict always holds the plain weight."""

    @property
    def packed(self) -> bool:
        return self.weight.is_mkldnn

    def pack(self) -> None:
        if not self.packed:
            self.weight = nn.Parameter(onednn_packed(self.weight), requires_grad=False)

    def unpack(self) -> None:
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
        """`.to()`, `.bfloat16()` and the like convert the plain weight; one still float32 on the CPU is packed
        again."""
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
    """Make every plain `nn.Linear` of `model` a `CpuFloat32Linear` in place (same parameters, same state dict).
    Where the float32 paths say packed weights are faster, each frozen float32 CPU weight is packed in place (freeze the model
    first, `model.requires_grad_(False)`); trainable weights stay plain, since oneDNN's product has no gradient,
    and so do weights shared with another module (tied embeddings), for their other user. Returns how many layers.
    The float32 paths are timed here, not in the first request."""
    layers = [module for module in model.modules() if type(module) is nn.Linear]
    for layer in layers:
        layer.__class__ = CpuFloat32Linear
    if layers and float32_paths().packed:
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
    file: clean file pages, read from the file again if ever touched. Other memory is left alone: it is freed when
    dropped, and `MADV_PAGEOUT` would first write it to swap. `spans` (`mapped_file_spans()`) lets a caller
    releasing many tensors read the process's mappings once."""
    if tensor.is_mkldnn or not tensor.numel():
        return
    spans = mapped_file_spans() if spans is None else spans
    start = tensor.data_ptr()
    index = bisect.bisect_right(spans, (start, float("inf"))) - 1
    if index >= 0 and start < spans[index][1]:
        _advise(tensor.detach(), MADV_PAGEOUT)

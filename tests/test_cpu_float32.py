"""Full-precision CPU inference for the chat (`tinygptv_hf.chat.cpu_float32`): the float32 GEMM of the kernel
plan, oneDNN-packed weights, and the pages of memory-mapped originals handed back. Where a test needs the plan to
pack, it sets the plan (`TINYGPTV_CPU_KERNEL_PLAN`) rather than rely on this machine's timing."""

import copy
import json
import weakref

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForImageTextToText

from tinygptv_hf.chat import cpu_float32
from tinygptv_hf.chat.cpu_float32 import CpuFloat32Linear, to_float32_in_place, use_cpu_gemm_choice
from tinygptv_hf.modeling import cpu_plan_tinygptv


@pytest.fixture(params=[[], [1, 8, 64]], ids=["mkl", "onednn"])
def float32_plan(request, monkeypatch):
    """Both float32 GEMMs the plan can choose, each in turn; weights packed."""
    plan = {"onednn_rows": request.param, "packed": True}
    monkeypatch.setenv(cpu_plan_tinygptv.PLAN_VARIABLE, json.dumps(plan))
    cpu_plan_tinygptv.float32_paths.cache_clear()
    yield
    cpu_plan_tinygptv.float32_paths.cache_clear()


def resident_file_mb() -> float:
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(status["RssFile"].split()[0]) / 1024


@pytest.fixture
def advised(monkeypatch):
    """The byte ranges `madvise` is asked to act on, recorded instead of acted on: what is released is decided
    here, what Linux then does with the pages is its business (one test below checks that once)."""
    ranges = []

    def record(tensor, advice):
        ranges.append((tensor.data_ptr(), tensor.data_ptr() + tensor.numel() * tensor.element_size()))

    monkeypatch.setattr(cpu_float32, "_advise", record)
    return ranges


def test_released_pages_of_a_mapped_file_leave_resident_memory(tmp_path):
    """The one check of what Linux does with `MADV_PAGEOUT` (Linux >= 5.4, as CI runs): the pages leave this
    process's resident memory and are read from the file again when touched."""
    path = tmp_path / "weights.safetensors"
    save_file({"weight": torch.arange(64 << 20, dtype=torch.int32).to(torch.int8)}, path)
    with safe_open(path, framework="pt") as weights:
        mapped = weights.get_slice("weight")[...]
    total = mapped.sum(dtype=torch.int64).item()  # every page read: resident
    before = resident_file_mb()
    cpu_float32.release_pages(mapped)
    assert resident_file_mb() < before - 48
    assert mapped.sum(dtype=torch.int64).item() == total  # read again from the file


def test_page_advice_stays_inside_each_tensor_of_a_shared_mapping(tmp_path, advised):
    """Regression: a memory-mapped checkpoint's tensors can be views of one storage, the whole file. Releasing
    the pages of one layer released the whole file, whose pages the first request then faulted back in."""
    path = tmp_path / "checkpoint.bin"
    path.write_bytes(bytes(128 << 20))
    whole = torch.from_file(str(path), shared=True, size=128 << 20, dtype=torch.int8)
    first = whole[: 64 << 20]
    cpu_float32.release_pages(first)
    assert advised == [(first.data_ptr(), first.data_ptr() + (64 << 20))]
    cpu_float32.release_pages(torch.zeros(1 << 20, dtype=torch.int8))  # the process's own memory: left alone
    assert len(advised) == 1


def mapped_checkpoint(path, dtype: torch.dtype, elements: int) -> torch.Tensor:
    """A file of `elements` random values mapped as one tensor: what transformers' loader leaves, each weight a
    view of the one mapping of its file."""
    generator = torch.Generator().manual_seed(0)
    path.write_bytes(torch.randn(elements, generator=generator).to(dtype).view(torch.uint8).numpy().tobytes())
    return torch.from_file(str(path), shared=False, size=elements, dtype=dtype)


def test_float32_conversion_hands_back_the_mapped_originals(tmp_path, advised):
    """`to_float32_in_place` on a memory-mapped bf16 checkpoint: float32 copies of the same values, and the pages
    of each mapped original (only its own bytes) handed back as it goes (`model.float()` kept them: a full-size
    bf16 checkpoint peaked 7 GB higher). Integer tensors (positions, masks) are left as they are."""
    whole = mapped_checkpoint(tmp_path / "weights.bin", torch.bfloat16, 2 * (512 * 1024))
    layer = torch.nn.Linear(1024, 512, bias=False)
    layer.weight = torch.nn.Parameter(whole[: 512 * 1024].view(512, 1024), requires_grad=False)
    layer.register_buffer("positions", torch.arange(16))
    expected, start = layer.weight.float(), layer.weight.data_ptr()
    assert to_float32_in_place(layer) is layer
    assert advised == [(start, start + 512 * 1024 * 2)]
    assert layer.weight.dtype == torch.float32 and not layer.weight.requires_grad
    assert torch.equal(layer.weight, expected) and layer.positions.dtype == torch.int64


def test_only_mapped_originals_are_released_and_tied_tensors_stay_tied(tmp_path, advised):
    """Memory of the process's own (anonymous) is freed by dropping it; advising it out would write it to swap
    where there is some. A tensor two modules share is converted once and stays shared."""
    path = tmp_path / "weights.safetensors"
    save_file({"mapped": torch.randn(64, 64).bfloat16()}, path)
    with safe_open(path, framework="pt") as weights:
        mapped = weights.get_tensor("mapped")
    embedding, head = torch.nn.Embedding(64, 64).bfloat16(), torch.nn.Linear(64, 64).bfloat16()
    head.weight = embedding.weight
    model = torch.nn.ModuleDict({"embedding": embedding, "head": head, "mapped": torch.nn.Linear(64, 64)})
    model.mapped.weight = torch.nn.Parameter(mapped)
    to_float32_in_place(model)
    assert [start for start, _ in advised] == [mapped.data_ptr()]
    assert model.head.weight is model.embedding.weight and model.head.weight.dtype == torch.float32


@pytest.mark.parametrize("rows", [1, 8, 64, 257])
def test_float32_gemm_choice_computes_the_same_linear(rows, float32_plan):
    generator = torch.Generator().manual_seed(rows)
    stock = torch.nn.Linear(96, 80)
    inputs = torch.randn(2, rows, 96, generator=generator)
    with torch.no_grad():
        expected = stock(inputs)
    layer = copy.deepcopy(stock)
    assert use_cpu_gemm_choice(torch.nn.Sequential(layer)) == 1 and isinstance(layer, CpuFloat32Linear)
    with torch.no_grad():
        torch.testing.assert_close(layer(inputs), expected, rtol=1e-5, atol=1e-5)
    # training goes through stock nn.Linear, which has gradients: for the weight of a layer whose input needs
    # none (the first trained layer after frozen ones; oneDNN's op silently gave it no gradient), and for the input
    layer(inputs).sum().backward()
    stock(inputs).sum().backward()
    torch.testing.assert_close(layer.weight.grad, stock.weight.grad)
    layer(inputs.requires_grad_()).sum().backward()
    assert inputs.grad is not None
    # other dtypes too
    half = inputs.detach().bfloat16()
    assert torch.equal(copy.deepcopy(layer).bfloat16()(half), copy.deepcopy(stock).bfloat16()(half))


@pytest.mark.parametrize("rows", [1, 8, 64, 257])
def test_frozen_weights_are_packed_in_place_and_compute_the_same_linear(rows, float32_plan):
    generator = torch.Generator().manual_seed(rows)
    stock = torch.nn.Sequential(torch.nn.Linear(96, 80), torch.nn.GELU(), torch.nn.Linear(80, 40))
    inputs = torch.randn(2, rows, 96, generator=generator)
    with torch.no_grad():
        expected = stock(inputs)
    model = copy.deepcopy(stock).requires_grad_(False)
    plain = weakref.ref(model[0].weight)
    assert use_cpu_gemm_choice(model) == 2 and model[0].packed and model[2].packed
    assert plain() is None  # the plain weight is gone: one copy of each weight
    torch.testing.assert_close(model(inputs), expected, rtol=1e-5, atol=1e-5)  # grad mode on, nothing trains
    # the state dict holds the plain weights, bit for bit, and loading one keeps the weights packed
    assert all(torch.equal(model.state_dict()[name], value) for name, value in stock.state_dict().items())
    doubled = {name: 2 * value for name, value in stock.state_dict().items()}
    model.load_state_dict(doubled)
    assert model[0].packed and torch.equal(model.state_dict()["0.weight"], doubled["0.weight"])
    # a product autograd records (an input that needs a gradient) goes through the plain weight
    model.load_state_dict(stock.state_dict())
    leaf, stock_leaf = inputs.clone().requires_grad_(), inputs.clone().requires_grad_()
    model(leaf).sum().backward()
    stock(stock_leaf).sum().backward()
    torch.testing.assert_close(leaf.grad, stock_leaf.grad)
    # converting the model converts the plain weights; float32 on the CPU stays packed
    model.to("cpu")
    assert model[0].packed
    half = inputs.bfloat16()
    assert torch.equal(model.bfloat16()(half), copy.deepcopy(stock).bfloat16()(half))
    assert not model[0].packed and model[0].weight.dtype == torch.bfloat16


def test_trainable_and_shared_weights_stay_plain(float32_plan):
    """oneDNN's product has no gradient, so a trainable weight is not packed (it must learn); a weight another
    module also uses (a tied LM head) is not either, since the embedding reads it plain."""
    embedding, head, trainable = (
        torch.nn.Embedding(50, 16),
        torch.nn.Linear(16, 50, bias=False),
        torch.nn.Linear(16, 16),
    )
    head.weight = embedding.weight
    model = torch.nn.ModuleDict({"embedding": embedding, "head": head, "trainable": trainable})
    for layer in (head, embedding):
        layer.weight.requires_grad_(False)
    use_cpu_gemm_choice(model)
    assert not head.packed and not trainable.packed
    assert model.head.weight is model.embedding.weight


def test_packing_hands_back_the_pages_of_a_mapped_checkpoint(tmp_path, float32_plan, advised):
    whole = mapped_checkpoint(tmp_path / "weights.bin", torch.float32, 2 * 512 * 1024)
    layer = torch.nn.Linear(1024, 512, bias=False)
    layer.weight = torch.nn.Parameter(whole[: 512 * 1024].view(512, 1024), requires_grad=False)
    inputs = torch.randn(3, 1024)
    expected, start = F.linear(inputs, layer.weight), layer.weight.data_ptr()
    use_cpu_gemm_choice(layer)
    assert layer.packed and advised == [(start, start + 512 * 1024 * 4)]  # the weight's bytes, not the file's
    torch.testing.assert_close(layer(inputs), expected, rtol=1e-5, atol=1e-5 * expected.abs().max())


def test_a_model_with_packed_weights_saves_and_reloads_as_plain_weights(
    tiny_checkpoint, image_prompt, float32_plan, tmp_path
):
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint).eval().requires_grad_(False)
    with torch.no_grad():
        expected = model(**image_prompt).logits
    use_cpu_gemm_choice(model)
    assert model.lm_head.packed and model.model.language_model.layers[0].mlp.fc1.packed
    with torch.no_grad():
        torch.testing.assert_close(model(**image_prompt).logits, expected, rtol=1e-4, atol=1e-5)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).state_dict()
    for name, value in AutoModelForImageTextToText.from_pretrained(tiny_checkpoint).state_dict().items():
        assert torch.equal(reloaded[name], value), name

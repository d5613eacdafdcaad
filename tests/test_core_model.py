"""Model behaviour on the tiny checkpoint: generation with and without cache, left-padded batches, save/load,
bitsandbytes loading, gradient checkpointing, 224 and 448 inputs, and clear errors for inputs that cannot work."""

import shutil

import pytest
import torch
from core_support import random_image
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoModelForImageTextToText, BitsAndBytesConfig

from tinygptv_hf import TinyGPTVConfig, TinyGPTVForConditionalGeneration
from tinygptv_hf.checkpoint import build_processor, resize_for_stage
from tinygptv_hf.presets import preset_config
from tinygptv_hf.tokenization import build_tiny_tokenizer

PROMPTS = [
    "###Human: <Img><ImageHere></Img> hi###Assistant: ",
    "###Human: <Img><ImageHere></Img> Describe this image in detail, please.###Assistant: ",
    "[INST] <Img><ImageHere></Img> [vqa] What colour is the thing on the left?  [/INST]",
]
GREEDY = dict(
    do_sample=False, max_new_tokens=6, stop_strings=None, output_scores=True, return_dict_in_generate=True
)


def single_inputs(processor, index):
    return processor(
        images=[random_image(index, 40 + 13 * index, 50)], text=[PROMPTS[index]], return_tensors="pt"
    )


@torch.no_grad()
def test_generation_with_cache_equals_without(tiny_model, tiny_processor):
    for index in range(len(PROMPTS)):
        inputs = single_inputs(tiny_processor, index)
        cached = tiny_model.generate(**inputs, **GREEDY)
        uncached = tiny_model.generate(**inputs, use_cache=False, **GREEDY)
        assert torch.equal(cached.sequences, uncached.sequences)
        torch.testing.assert_close(
            torch.stack(cached.scores), torch.stack(uncached.scores), rtol=0, atol=1e-4
        )


@torch.no_grad()
def test_left_padded_batch_equals_each_prompt_alone(tiny_model, tiny_processor):
    images = [random_image(index, 40 + 13 * index, 50) for index in range(len(PROMPTS))]
    batch = tiny_processor(images=images, text=PROMPTS, padding=True, return_tensors="pt")
    lengths = batch["attention_mask"].sum(dim=1)
    assert len(set(lengths.tolist())) == len(PROMPTS), "the prompts must differ in length to test padding"
    assert (batch["attention_mask"][:, -1] == 1).all(), "generation needs left padding"
    batched = tiny_model.generate(**batch, **GREEDY)
    new_in_batch = batched.sequences[:, batch["input_ids"].shape[1] :]
    answers = set()
    for index in range(len(PROMPTS)):
        inputs = single_inputs(tiny_processor, index)
        alone = tiny_model.generate(**inputs, **GREEDY)
        assert torch.equal(alone.sequences[0, inputs["input_ids"].shape[1] :], new_in_batch[index])
        batch_scores = torch.stack([step[index] for step in batched.scores])
        torch.testing.assert_close(torch.stack(alone.scores)[:, 0], batch_scores, rtol=0, atol=1e-4)
        answers.add(tuple(new_in_batch[index].tolist()))
    assert len(answers) > 1, "different prompts and images should not all give the same tokens"


@torch.no_grad()
def test_lm_head_gets_contiguous_rows_when_logits_are_kept(tiny_model, tiny_processor):
    # A strided slice of the last hidden states makes torch's CPU bf16 linear copy the head's weight once per
    # sequence (2 GB at batch 8 for the paper-size head); the rows kept must reach the head as their own tensor.
    images = [random_image(index, 40 + 13 * index, 50) for index in range(len(PROMPTS))]
    batch = tiny_processor(images=images, text=PROMPTS, padding=True, return_tensors="pt")
    seen = []
    hook = tiny_model.lm_head.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].is_contiguous())
    )
    try:
        full = tiny_model(**batch).logits
        last = tiny_model(**batch, logits_to_keep=1).logits
        chosen = tiny_model(**batch, logits_to_keep=torch.tensor([0, 3])).logits
    finally:
        hook.remove()
    assert seen == [True, True, True]
    torch.testing.assert_close(last, full[:, -1:], rtol=0, atol=1e-5)
    torch.testing.assert_close(chosen, full[:, [0, 3]], rtol=0, atol=1e-5)


@torch.no_grad()
def test_save_load_round_trip_is_bit_exact(tiny_model, tiny_processor, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    original_state, reloaded_state = tiny_model.state_dict(), reloaded.state_dict()
    assert original_state.keys() == reloaded_state.keys()
    for key, value in original_state.items():
        assert value.dtype == reloaded_state[key].dtype, key
        assert torch.equal(value, reloaded_state[key]), key
    inputs = single_inputs(tiny_processor, 1)
    assert torch.equal(tiny_model(**inputs).logits, reloaded(**inputs).logits)


QUANTIZATIONS = {
    "8bit": BitsAndBytesConfig(load_in_8bit=True),
    "nf4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
    "fp4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4"),
    "nf4-double": BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    ),
}


@pytest.mark.parametrize("mode", list(QUANTIZATIONS))
@torch.no_grad()
def test_bitsandbytes_loads_generate_with_image_path_in_full_precision(tiny_checkpoint, tiny_processor, mode):
    import bitsandbytes as bnb

    model = AutoModelForImageTextToText.from_pretrained(
        tiny_checkpoint, quantization_config=QUANTIZATIONS[mode]
    )
    quantized_class = bnb.nn.Linear8bitLt if mode == "8bit" else bnb.nn.Linear4bit
    linears = {name: module for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    language = {name: module for name, module in linears.items() if name.startswith("model.language_model.")}
    assert language and all(isinstance(module, quantized_class) for module in language.values())
    kept = {name: module for name, module in linears.items() if name not in language}
    prefixes = ("model.vision_model.", "model.qformer.", "model.multi_modal_projector.", "lm_head")
    assert {name.split(".")[1] if name.startswith("model.") else name for name in kept} == {
        "vision_model",
        "qformer",
        "multi_modal_projector",
        "lm_head",
    }
    for name, module in kept.items():
        assert name.startswith(prefixes)
        assert type(module) is nn.Linear, f"{name} was quantized to {type(module).__name__}"
        assert module.weight.dtype == torch.float32, name
    assert model.model.query_tokens.dtype == torch.float32
    if mode != "8bit":
        quant_state = next(iter(language.values())).weight.quant_state
        assert quant_state.quant_type == QUANTIZATIONS[mode].bnb_4bit_quant_type
        assert (quant_state.state2 is not None) == QUANTIZATIONS[mode].bnb_4bit_use_double_quant

    inputs = single_inputs(tiny_processor, 0)
    output = model.generate(**inputs, do_sample=False, max_new_tokens=4, stop_strings=None)
    assert output.shape == (1, inputs["input_ids"].shape[1] + 4)
    assert torch.isfinite(model(**inputs).logits).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@torch.no_grad()
def test_half_precision_keeps_the_qformer_in_float32(tiny_checkpoint, tiny_processor, dtype):
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint, dtype=dtype)
    assert model.model.language_model.embed_tokens.weight.dtype == dtype
    assert model.model.vision_model.embeddings.patch_embedding.weight.dtype == dtype
    assert model.model.query_tokens.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.model.qformer.parameters())
    inputs = single_inputs(tiny_processor, 0)
    output = model.generate(**inputs, do_sample=False, max_new_tokens=3, stop_strings=None)
    assert output.shape[1] == inputs["input_ids"].shape[1] + 3


def record_calls(modules):
    calls = []
    for module in modules:
        module.register_forward_pre_hook(lambda module, args: calls.append(module))
    return calls


def test_gradient_checkpointing_gives_the_same_gradients(tiny_checkpoint, tiny_processor):
    inputs = single_inputs(tiny_processor, 1)
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == tiny_processor.image_token_id, -100)
    gradients = []
    for checkpointing in (False, True):
        model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # The inside of a checkpointed layer runs a second time during backward (up to its last saved tensor).
        inner = [model.model.language_model.layers[0].mlp, model.model.vision_model.encoder.layers[0].mlp]
        calls = record_calls(inner)
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        assert len(calls) == len(inner) * (2 if checkpointing else 1)
        gradients.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    plain, checkpointed = gradients
    assert plain.keys() == checkpointed.keys()
    assert any(name.startswith("model.qformer.") for name in plain)
    assert any(name.startswith("model.vision_model.") for name in plain)
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("stage", [0, 4])
@torch.no_grad()
def test_224_and_448_give_32_image_tokens(stage):
    torch.manual_seed(0)
    tokenizer = build_tiny_tokenizer()
    config = resize_for_stage(
        preset_config("tiny", image_token_id=tokenizer.convert_tokens_to_ids("<ImageHere>")), stage
    )
    size = 448 if stage == 4 else 224
    model = TinyGPTVForConditionalGeneration(config).eval()
    patches = (size // config.vision_config.patch_size) ** 2
    assert model.model.vision_model.embeddings.position_embedding.shape[1] == patches + 1
    if stage == 4:
        assert patches + 1 == 1025
    processor = build_processor(tokenizer, config)
    inputs = processor(
        images=[random_image(0, 90, 60)], text=["<Img><ImageHere></Img> hi"], return_tensors="pt"
    )
    assert inputs["pixel_values"].shape == (1, 3, size, size)
    assert int((inputs["input_ids"] == config.image_token_id).sum()) == 32
    features = model.get_image_features(inputs["pixel_values"]).pooler_output
    assert features.shape == (1, 32, config.text_config.hidden_size)
    assert model(**inputs).logits.shape[1] == inputs["input_ids"].shape[1]


@torch.no_grad()
def test_image_count_must_match_placeholders(tiny_model, tiny_processor):
    inputs = single_inputs(tiny_processor, 0)
    two_images = torch.cat([inputs["pixel_values"]] * 2)
    with pytest.raises(ValueError, match="number of images must match the number of <ImageHere>"):
        tiny_model(input_ids=inputs["input_ids"], pixel_values=two_images)
    with pytest.raises(ValueError, match="224x224"):
        tiny_model(input_ids=inputs["input_ids"], pixel_values=torch.zeros(1, 3, 448, 448))


@pytest.mark.parametrize(
    ("overrides", "fields"),
    [
        (
            dict(qformer_config=dict(encoder_hidden_size=96)),
            ["qformer_config.encoder_hidden_size", "vision_config.hidden_size"],
        ),
        (dict(vision_config=dict(image_size=230)), ["vision_config.image_size", "patch_size"]),
        (dict(qformer_config=dict(hidden_size=66)), ["qformer_config.hidden_size", "num_attention_heads"]),
        (dict(num_query_tokens=600), ["num_query_tokens", "512 positions"]),
        (dict(text_config=dict(hidden_size=130)), ["hidden_size (130)", "num_attention_heads"]),
    ],
)
def test_config_sizes_that_do_not_fit_are_named(overrides, fields):
    with pytest.raises(ValueError) as error:
        preset_config("tiny", **overrides)
    for field in fields:
        assert field in str(error.value)


def test_config_round_trips(tmp_path):
    config = preset_config("tiny", num_query_tokens=16)
    config.save_pretrained(tmp_path)
    assert TinyGPTVConfig.from_pretrained(tmp_path).to_dict() == config.to_dict()


@pytest.mark.parametrize("change", ["missing", "unexpected"])
def test_checkpoint_with_wrong_weights_is_refused(tiny_checkpoint, tmp_path, change):
    folder = tmp_path / "edited"
    shutil.copytree(tiny_checkpoint, folder)
    state = load_file(folder / "model.safetensors")
    if change == "missing":
        key = "model.multi_modal_projector.linear_2.weight"
        del state[key]
    else:
        key = "model.qformer.stray.weight"
        state[key] = torch.zeros(3)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    for auto_class in (AutoModelForImageTextToText, AutoModel):
        with pytest.raises(ValueError, match=f"{change} weights .*{key.removeprefix('model.')}"):
            auto_class.from_pretrained(folder)
    model, info = AutoModelForImageTextToText.from_pretrained(folder, output_loading_info=True)
    assert key in info[f"{change}_keys"]


@pytest.mark.parametrize("preset, std", [("tiny", 0.02), ("tiny-demo", 0.3)])
def test_random_presets_start_with_a_trainable_vision_tower(preset, std):
    """BLIP-2's vision default (std 1e-10) is for loading pretrained weights; a tower trained from random needs more."""
    torch.manual_seed(0)
    vision = TinyGPTVForConditionalGeneration(preset_config(preset)).model.vision_model
    for weight in (vision.embeddings.patch_embedding.weight, vision.encoder.layers[0].self_attn.qkv.weight):
        assert weight.std().item() == pytest.approx(std, rel=0.1)


def test_sincos_position_table_is_as_visible_as_the_patch_embeddings():
    torch.manual_seed(0)
    model = TinyGPTVForConditionalGeneration(preset_config("tiny-demo")).model
    table = model.vision_model.embeddings.position_embedding[0].detach()
    grid = model.config.vision_config.image_size // model.config.vision_config.patch_size
    assert table.shape == (1 + grid * grid, model.config.vision_config.hidden_size)
    assert torch.equal(table[0], torch.zeros_like(table[0]))
    patches = table[1:].reshape(grid, grid, -1)
    # Neighbours are closer than far-apart patches, along both axes: the table says where a patch is.
    for near, far in ((patches[0, 1], patches[0, -1]), (patches[1, 0], patches[-1, 0])):
        assert (patches[0, 0] - near).norm() < (patches[0, 0] - far).norm()
    assert len({tuple(row.tolist()) for row in table[1:]}) == grid * grid
    pixels = torch.randn(4, 3, 224, 224)
    patch_spread = model.vision_model.embeddings.patch_embedding(pixels).std().item()
    assert 0.3 * patch_spread < table[1:].std().item() < 3 * patch_spread
    # BLIP-2's random table, for contrast, is ~1% of the patch embeddings.
    plain = TinyGPTVForConditionalGeneration(preset_config("tiny-demo", vision_position_init="normal")).model
    assert plain.vision_model.embeddings.position_embedding.std().item() < 0.05 * patch_spread


def test_sincos_init_does_not_overwrite_loaded_weights(tmp_path):
    model = TinyGPTVForConditionalGeneration(preset_config("tiny-demo"))
    with torch.no_grad():
        model.model.vision_model.embeddings.position_embedding.mul_(-2)
    model.save_pretrained(tmp_path)
    loaded = TinyGPTVForConditionalGeneration.from_pretrained(tmp_path)
    assert torch.equal(
        loaded.model.vision_model.embeddings.position_embedding,
        model.model.vision_model.embeddings.position_embedding,
    )


def test_config_names_an_unknown_position_init():
    with pytest.raises(ValueError, match="vision_position_init must be one of .*'learned'"):
        preset_config("tiny", vision_position_init="learned")


def test_tiny_tokenizer_has_one_token_per_box_coordinate():
    tokenizer = build_tiny_tokenizer()
    for number in range(101):
        pieces = tokenizer.convert_ids_to_tokens(
            tokenizer(f"<{number}>", add_special_tokens=False)["input_ids"]
        )
        assert pieces == ["<", str(number), ">"], number

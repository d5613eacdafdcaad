"""What transformers' vision-language models (LLaVA, BLIP-2) promise and TinyGPT-V keeps: tuples on request, BLIP-2's
image features and LLaVA's `image_outputs`, embeddings as input, the loss's label options, float32 Q-Former with a
half-precision model, torch.compile, and generation within the context. Each test guards one of issue 16's fixes."""

import copy
import json
import typing

import pytest
import torch
import torch.nn.functional as F
from core_support import DISTINCT_WIDTHS
from safetensors import safe_open
from transformers import AutoModel, AutoModelForImageTextToText, GenerationConfig
from transformers.utils import TransformersKwargs, logging

from tinygptv_hf import TinyGPTVConfig, TinyGPTVForConditionalGeneration, TinyGPTVModel

MODEL_CLASSES = [TinyGPTVModel, TinyGPTVForConditionalGeneration]
VISION, QFORMER, TEXT = (DISTINCT_WIDTHS[key] for key in ("vision_config", "qformer_config", "text_config"))
IMAGE_TOKEN = DISTINCT_WIDTHS["image_token_id"]
QUERIES = DISTINCT_WIDTHS["num_query_tokens"]
VISION_TOKENS = (VISION["image_size"] // VISION["patch_size"]) ** 2 + 1

pytestmark = pytest.mark.usefixtures("one_thread")


def distinct_config(**overrides) -> TinyGPTVConfig:
    settings = copy.deepcopy(DISTINCT_WIDTHS)
    for key, value in overrides.items():
        settings[key] = {**settings[key], **value} if isinstance(value, dict) else value
    return TinyGPTVConfig(**settings)


def distinct_model(model_class=TinyGPTVForConditionalGeneration, **overrides):
    torch.manual_seed(0)
    return model_class(distinct_config(**overrides)).eval()


def image_inputs(batch=2, text_length=5):
    """Each row: a token, one image's placeholders, then text (ids above the image token's)."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(
        IMAGE_TOKEN + 1, TEXT["vocab_size"], (batch, 1 + QUERIES + text_length), generator=generator
    )
    input_ids[:, 1 : 1 + QUERIES] = IMAGE_TOKEN
    size = VISION["image_size"]
    pixel_values = torch.randn(batch, 3, size, size, generator=generator)
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": pixel_values,
    }


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
@torch.no_grad()
def test_return_dict_false_gives_tuples(model_class):
    model, inputs = distinct_model(model_class), image_inputs()
    as_dict = model(**inputs)
    as_tuple = model(**inputs, return_dict=False)
    assert isinstance(as_tuple, tuple)
    assert torch.equal(as_tuple[0], as_dict[0])
    features = model.get_image_features(inputs["pixel_values"])
    features_tuple = model.get_image_features(inputs["pixel_values"], return_dict=False)
    assert isinstance(features_tuple, tuple)
    assert torch.equal(features_tuple[0], features.last_hidden_state)
    assert torch.equal(features_tuple[1], features.pooler_output)
    model.config.return_dict = False
    assert isinstance(model(**inputs), tuple)


@torch.no_grad()
def test_image_features_follow_blip2():
    model, pixels = distinct_model(TinyGPTVModel), image_inputs()["pixel_values"]
    model.set_attn_implementation("eager")
    features = model.get_image_features(pixels, output_hidden_states=True, output_attentions=True)
    vision = model.vision_model(pixel_values=pixels)
    assert features.last_hidden_state.shape == (2, VISION_TOKENS, VISION["hidden_size"])
    assert torch.equal(features.last_hidden_state, vision.last_hidden_state)
    assert len(features.hidden_states) == VISION["num_hidden_layers"] + 1
    assert len(features.attentions) == VISION["num_hidden_layers"]
    assert features.attentions[0].shape == (2, VISION["num_attention_heads"], VISION_TOKENS, VISION_TOKENS)
    query_output = features.qformer_outputs.last_hidden_state
    assert query_output.shape == (2, QUERIES, QFORMER["hidden_size"])
    assert features.pooler_output.shape == (2, QUERIES, TEXT["hidden_size"])
    torch.testing.assert_close(
        features.pooler_output, model.multi_modal_projector(query_output), rtol=0, atol=0
    )
    plain = model.get_image_features(pixels)
    assert plain.hidden_states is None and plain.attentions is None
    assert torch.equal(plain.pooler_output, features.pooler_output)


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
@torch.no_grad()
def test_outputs_carry_image_outputs(model_class):
    model, inputs = distinct_model(model_class), image_inputs()
    model.set_attn_implementation("eager")
    outputs = model(**inputs, output_hidden_states=True, output_attentions=True)
    image_outputs = outputs.image_outputs
    assert len(image_outputs.hidden_states) == VISION["num_hidden_layers"] + 1
    assert len(image_outputs.attentions) == VISION["num_hidden_layers"]
    assert len(outputs.hidden_states) == TEXT["num_hidden_layers"] + 1
    expected = model.get_image_features(inputs["pixel_values"]).pooler_output
    assert torch.equal(image_outputs.pooler_output, expected)
    text_only = inputs["input_ids"][:, 1 + QUERIES :]
    assert model(input_ids=text_only).image_outputs is None


@torch.no_grad()
def test_inputs_embeds_with_images_match_input_ids():
    model, inputs = distinct_model(), image_inputs()
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    from_embeds = dict(
        inputs_embeds=embeds, pixel_values=inputs["pixel_values"], attention_mask=inputs["attention_mask"]
    )
    torch.testing.assert_close(model(**from_embeds).logits, model(**inputs).logits, rtol=0, atol=1e-6)
    greedy = dict(max_new_tokens=4, do_sample=False, pad_token_id=TEXT["pad_token_id"])
    from_ids = model.generate(**inputs, **greedy)[:, inputs["input_ids"].shape[1] :]
    assert torch.equal(model.generate(**from_embeds, **greedy), from_ids)

    placeholder_outside_vocabulary = distinct_model(image_token_id=TEXT["vocab_size"])
    with pytest.raises(ValueError, match="pass input_ids instead"):
        placeholder_outside_vocabulary(**from_embeds)


@torch.no_grad()
def test_loss_uses_shift_labels():
    model, inputs = distinct_model(), image_inputs()
    logits = model(**inputs).logits
    generator = torch.Generator().manual_seed(2)
    labels = torch.randint(
        IMAGE_TOKEN + 1, TEXT["vocab_size"], inputs["input_ids"].shape, generator=generator
    )
    shift_labels = torch.randint(IMAGE_TOKEN + 1, TEXT["vocab_size"], labels.shape, generator=generator)
    shift_labels[:, -1] = -100
    expected = F.cross_entropy(logits.flatten(0, 1), shift_labels.flatten(), ignore_index=-100)
    for given in (dict(shift_labels=shift_labels), dict(labels=labels, shift_labels=shift_labels)):
        torch.testing.assert_close(model(**inputs, **given).loss, expected)
    shifted = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
    torch.testing.assert_close(model(**inputs, labels=labels).loss, shifted)


@torch.no_grad()
def test_labels_on_image_placeholders_are_ignored():
    model, inputs = distinct_model(), image_inputs()
    labels = inputs["input_ids"].clone()
    loss = model(**inputs, labels=labels).loss
    expected = model(**inputs, labels=labels.masked_fill(labels == IMAGE_TOKEN, -100)).loss
    assert torch.equal(loss, expected)
    shift_labels = torch.roll(labels, -1, dims=1)
    shift_labels[:, -1] = -100
    assert torch.equal(model(**inputs, shift_labels=shift_labels).loss, expected)


@pytest.mark.parametrize(
    "build",
    [
        lambda config: TinyGPTVForConditionalGeneration._from_config(config, dtype=torch.bfloat16),
        lambda config: AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16),
        lambda config: AutoModel.from_config(config, dtype=torch.bfloat16),
    ],
    ids=["_from_config", "AutoModelForImageTextToText", "AutoModel"],
)
@torch.no_grad()
def test_from_config_keeps_the_qformer_in_float32(build):
    model = build(distinct_config())
    backbone = getattr(model, "model", model)
    assert backbone.query_tokens.dtype == torch.float32
    assert {parameter.dtype for parameter in backbone.qformer.parameters()} == {torch.float32}
    assert {parameter.dtype for parameter in backbone.language_model.parameters()} == {torch.bfloat16}
    assert {parameter.dtype for parameter in backbone.vision_model.parameters()} == {torch.bfloat16}
    assert model.dtype == torch.bfloat16
    assert torch.isfinite(model(**image_inputs())[0]).all()


def test_save_pretrained_after_a_bf16_load_keeps_bf16(tiny_checkpoint, tmp_path):
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(tmp_path / "model.safetensors", "pt") as saved:
        dtypes = {key: saved.get_slice(key).get_dtype() for key in saved.keys()}
    for key, dtype in dtypes.items():
        kept_float32 = key.startswith(("model.qformer.", "model.query_tokens"))
        assert dtype == ("F32" if kept_float32 else "BF16"), key
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert reloaded.dtype == torch.bfloat16
    assert reloaded.lm_head.weight.dtype == torch.bfloat16
    assert reloaded.model.query_tokens.dtype == torch.float32


def test_query_tokens_start_with_the_qformer_initializer_range():
    model = distinct_model(
        TinyGPTVModel,
        num_query_tokens=32,
        qformer_config=dict(initializer_range=0.3),
        text_config=dict(initializer_range=0.01),
    )
    assert model.query_tokens.std().item() == pytest.approx(0.3, rel=0.1)


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_keyword_arguments_are_typed_as_transformers_kwargs(model_class):
    # transformers reads these annotations, e.g. to know that a model accepts `output_attentions`.
    for method in (model_class.forward, model_class.get_image_features):
        annotation = typing.get_type_hints(method)["kwargs"]
        assert typing.get_args(annotation) == (TransformersKwargs,), method.__qualname__


def test_placeholder_mask_compiles_without_graph_breaks():
    model, inputs = distinct_model(TinyGPTVModel), image_inputs()
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    features = torch.zeros(2, QUERIES, TEXT["hidden_size"])
    eager = model.get_placeholder_mask(inputs["input_ids"], embeds, features)
    torch.compiler.reset()
    try:
        compiled = torch.compile(model.get_placeholder_mask, fullgraph=True, backend="eager")
        assert torch.equal(compiled(inputs["input_ids"], embeds, features), eager)
    finally:
        torch.compiler.reset()
    assert model._can_compile_fullgraph
    with pytest.raises(ValueError, match="number of images must match"):
        model.get_placeholder_mask(inputs["input_ids"], embeds, features[:1])


@torch.no_grad()
def test_forward_is_not_limited_to_max_position_embeddings():
    """RoPE scaling in the config extends the context; forward must not refuse the longer sequence."""
    context = TEXT["max_position_embeddings"]
    rope = dict(rope_type="dynamic", factor=4.0, rope_theta=10000.0, partial_rotary_factor=0.5)
    model = distinct_model(text_config=dict(rope_parameters=rope))
    input_ids = torch.randint(IMAGE_TOKEN + 1, TEXT["vocab_size"], (1, context + context // 2))
    logits = model(input_ids=input_ids).logits
    assert logits.shape == (1, context + context // 2, TEXT["vocab_size"])
    assert torch.isfinite(logits).all()


@torch.no_grad()
def test_generate_keeps_within_the_context(tiny_model, caplog):
    context = tiny_model.config.text_config.max_position_embeddings
    near_the_end = torch.full((1, context - 2), 5, dtype=torch.long)
    greedy = dict(do_sample=False, stop_strings=None, min_new_tokens=2)
    logging.warning_once.cache_clear()  # as transformers' own tests do, so an earlier identical warning cannot hide it
    with caplog.at_level("WARNING"):
        output = tiny_model.generate(input_ids=near_the_end, max_new_tokens=4096, **greedy)
    assert output.shape == (1, context)
    assert "max_new_tokens=4096" in caplog.text
    # A model whose generation config sets no max_new_tokens is bounded by max_length instead.
    model, context = distinct_model(), TEXT["max_position_embeddings"]
    near_the_end = torch.randint(IMAGE_TOKEN + 1, TEXT["vocab_size"], (1, context - 2))
    assert model.generate(input_ids=near_the_end, max_length=context + 50, **greedy).shape == (1, context)
    with pytest.raises(ValueError, match=f"context holds {context}, which leaves no room"):
        model.generate(input_ids=torch.full((1, context), 5), max_new_tokens=1)


@torch.no_grad()
def test_generate_with_a_generation_config_keeps_the_model_stop_strings(tiny_checkpoint, tiny_processor):
    """transformers fills a caller's GenerationConfig from the model's, stop strings included (TRL's GRPOTrainer
    passes one); they act with the caller's tokenizer."""
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint).eval()
    stop = model.generation_config.stop_strings[0]
    # A head that always answers the first token of the stop string, so generation must stop on it.
    first_piece = tiny_processor.tokenizer(stop, add_special_tokens=False)["input_ids"][0]
    model.lm_head.weight.data.zero_()
    model.lm_head.bias.data.fill_(-10.0)
    model.lm_head.bias.data[first_piece] = 10.0
    pieces_to_stop = -(-len(stop) // len(tiny_processor.tokenizer.decode([first_piece])))
    prompt = torch.full((1, 6), 5, dtype=torch.long)
    output = model.generate(
        input_ids=prompt,
        generation_config=GenerationConfig(max_new_tokens=8, do_sample=False),
        tokenizer=tiny_processor.tokenizer,
    )
    assert output.shape[1] - prompt.shape[1] == pieces_to_stop < 8

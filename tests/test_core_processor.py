"""Processor on real files: image modes, EXIF, resize and normalisation, unreadable images, the tokenizer's image
token, the chat templates character for character and their training renders, stopping on `###`, clean answers and
decoding, the token counts serving engines ask for, the pipeline."""

import inspect
import itertools
import typing

import numpy as np
import pytest
import torch
from core_support import ScriptedAnswer, random_image
from PIL import Image
from transformers import AutoTokenizer, LogitsProcessorList, pipeline
from transformers.processing_utils import MultiModalData

from tinygptv_hf.processors import ImageLoadError, TinyGPTVImageProcessor, TinyGPTVProcessor
from tinygptv_hf.processors.templates import CONVERSATION_SYSTEM

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])


def unnormalise(pixel_values: np.ndarray) -> np.ndarray:
    """(3, H, W) CLIP-normalised -> (H, W, 3) in [0, 1]."""
    return pixel_values.transpose(1, 2, 0) * CLIP_STD + CLIP_MEAN


def process(image, size=224) -> np.ndarray:
    processor = TinyGPTVImageProcessor(size={"height": size, "width": size})
    return processor(image, return_tensors="np")["pixel_values"][0]


def reference(image: Image.Image, size: int = 224) -> np.ndarray:
    """The original's transform: PIL bicubic resize to a square, ToTensor, CLIP Normalize."""
    pixels = np.asarray(image.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64) / 255.0
    return ((pixels - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)


def test_bicubic_square_resize_without_crop_and_clip_normalisation():
    image = random_image(3, width=53, height=37)
    np.testing.assert_allclose(process(image), reference(image), atol=1e-5)
    np.testing.assert_allclose(process(image, size=448), reference(image, size=448), atol=1e-5)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "RGB"])
def test_modes_convert_to_rgb(mode):
    colour = (200, 40, 90)
    image = Image.new("RGB", (20, 12), colour).convert(mode)
    np.testing.assert_allclose(process(image), reference(image.convert("RGB")), atol=1e-5)
    if mode in ("RGBA", "CMYK", "RGB"):
        pixels = unnormalise(process(image))
        np.testing.assert_allclose(pixels, np.broadcast_to(np.array(colour) / 255.0, pixels.shape), atol=1e-5)


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_grey_and_rgba_arrays_and_tensors_convert_as_pil_images_do(mode):
    rgba = np.asarray(random_image(5, width=30, height=20).convert("RGBA")).copy()
    rgba[..., 3] = np.arange(30, dtype=np.uint8)[None] * 8  # an alpha that changes across the image
    image = Image.fromarray(rgba).convert(mode)
    pixels = np.asarray(image)
    channels_last = pixels if pixels.ndim == 3 else pixels[..., None]
    channels_first = np.ascontiguousarray(channels_last.transpose(2, 0, 1))
    variants = [
        channels_last,
        channels_first,
        torch.from_numpy(channels_last),
        torch.from_numpy(channels_first),
    ]
    expected = process(image)
    for variant in variants:
        np.testing.assert_array_equal(process(variant), expected)


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    levels = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0).repeat(4, axis=1)
    path = tmp_path / "grey16.png"
    Image.fromarray(levels).save(path)
    with Image.open(path) as image:
        assert image.mode.startswith("I")
        pixels = unnormalise(
            TinyGPTVImageProcessor(size={"height": 16, "width": 16})(image, return_tensors="np")[
                "pixel_values"
            ][0]
        )
    column_values = pixels[8, [1, 5, 10, 14], 0]  # centres of the four 4-pixel-wide bands
    np.testing.assert_allclose(column_values, [0.0, 4 / 255, 128 / 255, 1.0], atol=1.5 / 255)
    np.testing.assert_allclose(pixels[..., 0], pixels[..., 2], atol=1e-6, err_msg="grey stays grey")


def test_exif_orientation_is_applied(tmp_path):
    # Stored 40 wide x 20 high: left half red, right half blue. Orientation 6 means "rotate 90 degrees clockwise to
    # display", so the displayed image is 20 wide x 40 high with red on top and blue at the bottom.
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    pixels = unnormalise(process(Image.open(path)))
    top, bottom = pixels[:80].mean(axis=(0, 1)), pixels[-80:].mean(axis=(0, 1))
    assert top[0] > 0.9 and top[2] < 0.1, top
    assert bottom[2] > 0.9 and bottom[0] < 0.1, bottom
    left, right = pixels[:, :100].mean(axis=(0, 1)), pixels[:, -100:].mean(axis=(0, 1))
    np.testing.assert_allclose(left, right, atol=0.05)


def write_broken(tmp_path, kind):
    source = random_image(0, 64, 64)
    if kind == "truncated-png":
        path = tmp_path / "cut.png"
        source.save(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "truncated-jpeg":
        path = tmp_path / "cut.jpg"
        source.save(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "corrupt-jpeg":
        path = tmp_path / "corrupt.jpg"
        source.save(path)
        data = bytearray(path.read_bytes())
        data[2:60] = b"\x00" * 58
        path.write_bytes(bytes(data))
    elif kind == "not-an-image":
        path = tmp_path / "notes.png"
        path.write_text("this is text, not a picture")
    else:
        path = tmp_path / "missing.png"
    return path


@pytest.mark.parametrize(
    "kind", ["truncated-png", "truncated-jpeg", "corrupt-jpeg", "not-an-image", "missing"]
)
def test_unreadable_image_files_are_named(tiny_processor, tmp_path, kind):
    path = write_broken(tmp_path, kind)
    with pytest.raises(ImageLoadError, match=path.name):
        tiny_processor(images=[str(path)], text=["<Img><ImageHere></Img> hi"], return_tensors="pt")
    messages = [
        {"role": "user", "content": [{"type": "image", "path": str(path)}, {"type": "text", "text": "hi"}]}
    ]
    with pytest.raises(ImageLoadError, match=path.name):
        tiny_processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True
        )


def test_zero_size_images_are_refused(tiny_processor):
    with pytest.raises(ImageLoadError, match="zero size"):
        tiny_processor(images=[Image.new("RGB", (0, 10))], text=["<ImageHere>"], return_tensors="pt")
    with pytest.raises(ImageLoadError, match="zero size"):
        tiny_processor(
            images=[np.zeros((0, 5, 3), dtype=np.uint8)], text=["<ImageHere>"], return_tensors="pt"
        )


@pytest.mark.parametrize("count", [0, 2])
def test_image_count_must_match_placeholders(tiny_processor, count):
    images = [random_image(seed) for seed in range(count)] or None
    with pytest.raises(ValueError, match="<ImageHere>"):
        tiny_processor(images=images, text=["<Img><ImageHere></Img> hi"], return_tensors="pt")


def test_prompt_longer_than_context_is_refused(tiny_processor):
    with pytest.raises(ValueError, match=r"context holds 512 tokens"):
        tiny_processor(
            images=[random_image(0)], text=["<Img><ImageHere></Img>" + " word" * 600], return_tensors="pt"
        )


def test_image_token_is_one_special_token_and_segments_tokenize_separately(tiny_processor):
    tokenizer = tiny_processor.tokenizer
    image_id = tokenizer.convert_tokens_to_ids("<ImageHere>")
    assert image_id == tiny_processor.image_token_id
    assert tokenizer.tokenize("<ImageHere>") == ["<ImageHere>"]
    assert "<ImageHere>" in tokenizer.all_special_tokens
    for before, after in [
        ("###Human: <Img>", "</Img> What is it?###Assistant: "),
        ("[INST] <Img>", "</Img> [vqa] a  [/INST]"),
    ]:
        ids = tokenizer(before + "<ImageHere>" + after).input_ids
        segments = (
            tokenizer(before, add_special_tokens=False).input_ids,
            tokenizer(after, add_special_tokens=False).input_ids,
        )
        assert ids == segments[0] + [image_id] + segments[1]
    processed = tiny_processor(
        images=[random_image(0)], text=["###Human: <Img><ImageHere></Img> hi"]
    ).input_ids[0]
    expected = tokenizer("###Human: <Img>").input_ids + [image_id] * 32 + tokenizer("</Img> hi").input_ids
    assert processed == expected


def test_no_bos_at_inference(tiny_processor):
    tokenizer = tiny_processor.tokenizer
    text = "###Human: <Img><ImageHere></Img> hi###Assistant: "
    ids = tiny_processor(images=[random_image(0)], text=[text]).input_ids[0]
    assert ids[0] != tokenizer.bos_token_id
    assert ids[:3] == tokenizer("###Human: <Img>", add_special_tokens=False).input_ids[:3]


def user(text, image=True):
    content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]
    return {"role": "user", "content": content}


QUESTION = "What is unusual about this image?"


@pytest.mark.parametrize(
    ("template", "messages", "expected"),
    [
        ("benchmark", [user(QUESTION)], f"###Human: <Img><ImageHere></Img> {QUESTION}###Assistant: "),
        ("instruction", [user(QUESTION)], f"###Human: <Img><ImageHere></Img> {QUESTION} ###Assistant: "),
        (
            "multitask",
            [user("[vqa] Based on the image, respond to this question with a short answer: what is it?")],
            "[INST] <Img><ImageHere></Img> [vqa] Based on the image, respond to this question with a short answer: "
            "what is it?  [/INST]",
        ),
        (
            "multitask",
            [user("[refer] the red car")],
            "[INST] <Img><ImageHere></Img> [refer] the red car  [/INST]",
        ),
        (
            "conversation",
            [user(QUESTION)],
            f"{CONVERSATION_SYSTEM}###Human: <Img><ImageHere></Img> {QUESTION}###Assistant: ",
        ),
        (
            "conversation",
            [user(QUESTION), {"role": "assistant", "content": "A cat."}, user("Why?", image=False)],
            f"{CONVERSATION_SYSTEM}###Human: <Img><ImageHere></Img> {QUESTION}###Assistant: A cat.###Human: Why?"
            "###Assistant: ",
        ),
    ],
)
def test_chat_templates_render_the_original_strings(tiny_processor, template, messages, expected):
    rendered = tiny_processor.apply_chat_template(
        messages, chat_template=template, add_generation_prompt=True
    )
    assert rendered == expected


def test_stage_zero_default_template_is_the_demo_conversation(tiny_processor):
    rendered = tiny_processor.apply_chat_template([user(QUESTION)], add_generation_prompt=True)
    assert rendered == f"{CONVERSATION_SYSTEM}###Human: <Img><ImageHere></Img> {QUESTION}###Assistant: "


@pytest.mark.parametrize("pass_tokenizer", [True, False])
def test_generation_stops_at_the_end_symbol_and_answers_are_clean(
    tiny_model, tiny_processor, pass_tokenizer, caplog
):
    """With the caller's tokenizer generation stops at the end symbol; without one it runs on with a warning (the
    model never loads a tokenizer behind the caller's back), and the processor still cuts the answer there."""
    tokenizer = tiny_processor.tokenizer
    script = tokenizer(" A red square.###Human: and then more text", add_special_tokens=False).input_ids
    assert "###" not in [tokenizer.decode([token]) for token in script], "the end symbol should span tokens"
    inputs = tiny_processor.apply_chat_template(
        [user(QUESTION)], chat_template="benchmark", add_generation_prompt=True, tokenize=False
    )
    inputs = tiny_processor(images=[random_image(1)], text=[inputs], return_tensors="pt")
    prompt_length = inputs["input_ids"].shape[1]
    assert tiny_model.generation_config.stop_strings == ["###"]
    extra = {"tokenizer": tokenizer} if pass_tokenizer else {}
    output = tiny_model.generate(
        **inputs,
        logits_processor=LogitsProcessorList([ScriptedAnswer(script, prompt_length)]),
        max_new_tokens=len(script),
        **extra,
    )
    new_tokens = output[:, prompt_length:]
    if pass_tokenizer:
        assert tokenizer.decode(new_tokens[0]).endswith("###")
        assert new_tokens.shape[1] < len(script)
    else:
        assert new_tokens[0].tolist() == script
        assert "Pass tokenizer=processor.tokenizer" in caplog.text
    assert tiny_processor.post_process_image_text_to_text(new_tokens) == ["A red square."]
    full = tiny_processor.post_process_image_text_to_text(output)[0]
    prompt = tiny_processor.post_process_image_text_to_text(inputs["input_ids"])[0]
    assert full == prompt + "A red square."


def test_apply_chat_template_loads_image_files_and_generates(tiny_model, tiny_processor, image_files):
    messages = [
        {
            "role": "user",
            "content": [{"type": "image", "path": str(image_files[1])}, {"type": "text", "text": QUESTION}],
        }
    ]
    inputs = tiny_processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert inputs["pixel_values"].shape == (1, 3, 224, 224)
    assert int((inputs["input_ids"] == tiny_processor.image_token_id).sum()) == 32
    direct = tiny_processor(
        images=[Image.open(image_files[1])],
        text=[tiny_processor.apply_chat_template(messages, add_generation_prompt=True)],
        return_tensors="pt",
    )
    assert torch.equal(inputs["input_ids"], direct["input_ids"])
    torch.testing.assert_close(inputs["pixel_values"], direct["pixel_values"])
    output = tiny_model.generate(**inputs, max_new_tokens=3, stop_strings=None)
    assert output.shape[1] == inputs["input_ids"].shape[1] + 3


def test_pipeline_on_a_saved_folder(tiny_checkpoint, tiny_model, tiny_processor, image_files):
    pipe = pipeline("image-text-to-text", model=str(tiny_checkpoint))
    messages = [
        {
            "role": "user",
            "content": [{"type": "image", "path": str(image_files[0])}, {"type": "text", "text": QUESTION}],
        }
    ]
    reply = pipe(text=messages, max_new_tokens=5)[0]["generated_text"][-1]
    assert reply["role"] == "assistant"
    inputs = tiny_processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    output = tiny_model.generate(**inputs, max_new_tokens=5)
    expected = tiny_processor.post_process_image_text_to_text(output[:, inputs["input_ids"].shape[1] :])[0]
    assert expected and reply["content"] == expected

    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    raw = pipe(images=Image.open(image_files[0]), text="<Img><ImageHere></Img> hi", max_new_tokens=3)
    assert raw[0]["generated_text"].startswith("<Img><ImageHere></Img> hi")
    assert tokenizer.padding_side == "left"


def test_call_is_typed_as_transformers_processors_are():
    # transformers reads these annotations to know which inputs a processor takes (its common processor tests do).
    parameters = inspect.signature(TinyGPTVProcessor.__call__).parameters
    assert {
        name for name, parameter in parameters.items() if parameter.annotation is not parameter.empty
    } == {
        "images",
        "text",
        "kwargs",
    }
    assert typing.get_origin(parameters["kwargs"].annotation) is typing.Unpack


def test_decode_skipping_special_tokens_stops_at_the_end_symbol(tiny_processor):
    """lmms-eval decodes new tokens with `batch_decode(..., skip_special_tokens=True)`; `###` is plain text to the
    tokenizer, so it came back in the answer (an immediate stop answered '###')."""
    tokenizer = tiny_processor.tokenizer
    answer = tokenizer(" A red square.###Human: and then", add_special_tokens=False).input_ids
    stop_only = tokenizer("###", add_special_tokens=False).input_ids
    new_tokens = torch.tensor([answer, stop_only + [tokenizer.pad_token_id] * (len(answer) - len(stop_only))])
    assert tiny_processor.batch_decode(new_tokens, skip_special_tokens=True) == [" A red square.", ""]
    assert tiny_processor.decode(new_tokens[0], skip_special_tokens=True) == " A red square."
    assert tiny_processor.batch_decode(new_tokens) == tokenizer.batch_decode(new_tokens)
    assert tiny_processor.decode(answer) == " A red square.###Human: and then"

    prompt_text = tiny_processor.apply_chat_template([user(QUESTION)], add_generation_prompt=True)
    prompt = tiny_processor(images=[random_image(0)], text=[prompt_text]).input_ids[0]
    assert tiny_processor.decode(prompt + answer, skip_special_tokens=True) == (
        tokenizer.decode(prompt, skip_special_tokens=True) + " A red square."
    ), "a sequence that still holds its prompt keeps the prompt's own '###' separators"


@pytest.mark.parametrize("template", ["benchmark", "conversation", "instruction", "multitask"])
def test_training_renders_close_the_answer_with_the_end_symbol(tiny_processor, template):
    """SFT on a rendered conversation must teach the model to stop: the final answer ends with `###`, and the
    inference prompt is a prefix of the training render."""
    question = [user(QUESTION)]
    prompt = tiny_processor.apply_chat_template(question, chat_template=template, add_generation_prompt=True)
    answered = question + [{"role": "assistant", "content": "A cat."}]
    assert tiny_processor.apply_chat_template(answered, chat_template=template) == prompt + "A cat.###"


@pytest.mark.parametrize(
    ("template", "answers"),
    [
        ("conversation", [" A cat.###", " Because.###"]),
        ("benchmark", [" A cat.###", " Because.###"]),
        ("multitask", ["A cat.###", "Because.###"]),
        ("instruction", [" A cat.###"]),
    ],
)
def test_assistant_tokens_mask_is_the_answers_and_their_end_symbols(tiny_processor, template, answers):
    """`{% generation %}` marks what TRL's `assistant_only_loss` trains: each answer with the `###` that ends it,
    nothing of the prompts or the 32 image tokens."""
    messages = [
        {
            "role": "user",
            "content": [{"type": "image", "image": random_image(0)}, {"type": "text", "text": QUESTION}],
        },
        {"role": "assistant", "content": "A cat."},
        user("Why?", image=False),
        {"role": "assistant", "content": [{"type": "text", "text": "Because."}]},
    ][: 2 * len(answers)]
    output = tiny_processor.apply_chat_template(
        messages, chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = output["input_ids"][0], output["assistant_masks"][0]
    assert ids.count(tiny_processor.image_token_id) == 32
    runs = [
        tiny_processor.tokenizer.decode([token for token, _ in run])
        for masked, run in itertools.groupby(zip(ids, mask, strict=True), key=lambda pair: pair[1])
        if masked
    ]
    assert runs == answers


def test_num_multimodal_tokens_for_serving_engines(tiny_processor):
    """vLLM asks the processor how many placeholder tokens each image takes before it runs the processor."""
    sizes = [(48, 64), (1000, 20)]
    data = tiny_processor._get_num_multimodal_tokens(image_sizes=sizes)
    assert isinstance(data, MultiModalData)
    assert data.num_image_tokens == [32, 32] and data.num_image_patches == [1, 1]
    images = [random_image(seed, width=w, height=h) for seed, (h, w) in enumerate(sizes)]
    processed = tiny_processor(images=images, text=["<ImageHere> a", "b <ImageHere>"])
    assert [ids.count(tiny_processor.image_token_id) for ids in processed.input_ids] == data.num_image_tokens
    assert "num_image_tokens" not in tiny_processor._get_num_multimodal_tokens()
    with pytest.raises(ValueError, match=r"\(height, width\)"):
        tiny_processor._get_num_multimodal_tokens(image_sizes=[(0, 10)])


def test_normalisation_is_the_backends_bit_for_bit():
    """The contiguous normalisation (a training-speed fix) must give exactly transformers' own numbers."""
    from transformers.image_processing_backends import PilBackend

    class BackendNormalize(TinyGPTVImageProcessor):
        normalize = PilBackend.normalize

    images = [random_image(seed, width=40 + seed, height=30) for seed in range(3)]
    ours = TinyGPTVImageProcessor(size={"height": 56, "width": 56})(images, return_tensors="np")[
        "pixel_values"
    ]
    theirs = BackendNormalize(size={"height": 56, "width": 56})(images, return_tensors="np")["pixel_values"]
    assert ours.dtype == theirs.dtype == np.float32
    np.testing.assert_array_equal(ours, theirs)

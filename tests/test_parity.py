"""The converted model reproduces the original code's recorded activations, logits, losses and greedy tokens."""

import functools

import pytest
import torch
from parity_support import ParityCase, case_dirs
from safetensors import safe_open

from tinygptv_hf.conversion import convert_original, convert_to_model, finalize, read_original_sources
from tinygptv_hf.trainers.collator import compose_sequence, pad_sequences
from tinygptv_hf.weights import read_state_dict

CASES = case_dirs()
GENERATION_CASES = [
    folder for folder in CASES if "gen.images" in safe_open(folder / "inputs.safetensors", "pt").keys()
]


@functools.cache
def convert_case(folder):
    case = ParityCase(folder)
    config = case.config()
    heads = config.text_config.num_attention_heads
    weights = read_original_sources(
        num_heads=heads, vision_depth=0, full_state_dict=folder / "model.safetensors"
    )
    return case, convert_to_model(weights, config, case.lora_scaling)


@pytest.fixture(params=CASES, ids=[case.name for case in CASES])
def converted(request):
    return convert_case(request.param)


@pytest.fixture(params=GENERATION_CASES, ids=[case.name for case in GENERATION_CASES])
def converted_with_generation(request):
    return convert_case(request.param)


def close(actual, expected, atol):
    assert actual.shape == expected.shape
    difference = (actual.float() - expected.float()).abs().max().item()
    assert difference <= atol, f"max |diff| {difference:.3g} > {atol}"


@torch.no_grad()
def test_image_path_matches_original(converted):
    case, model = converted
    pixels, recorded = case.inputs["train.images"], case.outputs
    vision = model.model.vision_model(pixel_values=pixels, output_hidden_states=True, return_dict=True)
    close(vision.hidden_states[-1], recorded["encode.vit_features"], 1e-5)
    close(vision.last_hidden_state, recorded["encode.ln_vision"], 1e-5)
    features = model.model.get_image_features(pixels)
    close(features.last_hidden_state, recorded["encode.ln_vision"], 1e-5)
    query_output = features.qformer_outputs.last_hidden_state
    close(query_output, recorded["encode.qformer_last_hidden_state"], 1e-5)
    close(model.model.multi_modal_projector.linear_1(query_output), recorded["encode.llama_proj"], 1e-5)
    close(features.pooler_output, recorded["encode.img_embeds"], 1e-5)
    close(
        model.model.vision_model.embeddings.position_embedding.detach(),
        recorded["vit.pos_embed_post_interpolation"],
        1e-6,
    )


def training_batch(case, model):
    """Our own composition of the training sequence from the stored token-id segments."""
    config, tokens = model.config, case.tokens
    sequences = []
    for index in range(case.inputs["train.images"].shape[0]):
        before = case.inputs.get(f"train.sample{index}.prompt_seg_before_image")
        after = case.inputs.get(f"train.sample{index}.prompt_seg_after_image")
        pieces = [before.tolist(), after.tolist()] if before is not None else [[], []]
        sequences.append(
            compose_sequence(
                pieces,
                case.inputs[f"train.sample{index}.answer_ids"].tolist(),
                bos_id=tokens["bos_token_id"],
                image_token_id=config.image_token_id,
                num_image_tokens=config.num_query_tokens,
            )
        )
    return pad_sequences(sequences, tokens["pad_token_id"])


@torch.no_grad()
def test_training_forward_matches_original(converted):
    case, model = converted
    batch = training_batch(case, model)
    token_map = case.inputs["train.token_map"]
    assert torch.equal(batch["labels"], case.inputs["train.labels"])
    assert torch.equal(batch["attention_mask"], case.inputs["train.attention_mask"])
    assert torch.equal(batch["input_ids"] == model.config.image_token_id, token_map < 0)
    assert torch.equal(batch["input_ids"][token_map >= 0], token_map[token_map >= 0])

    captured = {}
    hook = model.model.language_model.register_forward_hook(
        lambda module, args, kwargs, output: captured.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True
    )
    output = model(**batch, pixel_values=case.inputs["train.images"])
    hook.remove()
    close(captured["embeds"], case.outputs["train.inputs_embeds"], 1e-4)
    close(output.logits, case.outputs["train.logits"], 1e-4)
    close(output.loss, case.outputs["train.loss"], 1e-4)


@torch.no_grad()
def test_left_padded_generation_matches_original(converted_with_generation):
    case, model = converted_with_generation
    config, tokens = model.config, case.tokens
    prompts = []
    index = 0
    while f"gen.prompt{index}.seg_before_image" in case.inputs:
        before = case.inputs[f"gen.prompt{index}.seg_before_image"].tolist()
        after = case.inputs[f"gen.prompt{index}.seg_after_image"].tolist()
        prompts.append(before + [config.image_token_id] * config.num_query_tokens + after)
        index += 1
    length = max(map(len, prompts))
    input_ids = torch.full((len(prompts), length), tokens["pad_token_id"])
    attention_mask = torch.zeros_like(input_ids)
    for row, prompt in enumerate(prompts):
        input_ids[row, length - len(prompt) :] = torch.tensor(prompt)
        attention_mask[row, length - len(prompt) :] = 1
    assert torch.equal(attention_mask, case.inputs["gen.attention_mask"])
    expected = case.outputs["gen.new_tokens"]
    output = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        pixel_values=case.inputs["gen.images"],
        max_new_tokens=expected.shape[1],
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=tokens["pad_token_id"],
        eos_token_id=tokens["eos_token_id"],
    )
    assert torch.equal(output.sequences[:, length:], expected)
    close(torch.stack(output.logits, dim=1), case.outputs["gen.nocache_step_logits"], 1e-4)


@pytest.mark.parametrize("suffix", ["pth", "safetensors"])
def test_stage_checkpoint_converts_to_full_weights(converted, suffix):
    """Frozen parts from elsewhere + the trainer's stage file == the full state dict, tensor for tensor."""
    case, model = converted
    config = model.config
    heads = config.text_config.num_attention_heads
    full = read_state_dict(case.folder / "model.safetensors")
    stage_file = case.folder / f"stage_checkpoint.{suffix}"
    trainable = read_state_dict(stage_file)
    trainable = trainable.get("model", trainable)
    base = {key: value for key, value in full.items() if key not in trainable}
    from_stage = convert_original(base, heads).update(
        read_original_sources(num_heads=heads, vision_depth=0, stage_checkpoint=stage_file)
    )
    expected = finalize(convert_original(full, heads), config, case.lora_scaling)
    actual = finalize(from_stage, config, case.lora_scaling)
    assert actual.keys() == expected.keys()
    for key in expected:
        assert torch.equal(actual[key], expected[key]), key

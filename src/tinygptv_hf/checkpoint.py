"""Building and writing complete checkpoint folders (weights, config, processor, tokenizer, templates, code)."""

import os
import re
from pathlib import Path

import torch
from transformers import GenerationConfig

from .modeling import TinyGPTVConfig, TinyGPTVForConditionalGeneration
from .presets import preset_config
from .processors import TinyGPTVImageProcessor, TinyGPTVProcessor
from .processors.templates import MAX_NEW_TOKENS, chat_templates
from .stages import ADDED_NORM_PARAMETERS, PROJECTOR_PARAMETERS, STAGES
from .tokenization import build_tiny_tokenizer, load_llm_tokenizer
from .weights import load_blip2_vision_side, load_phi_language_model

# Built from pretrained Phi-2 and BLIP-2, a stage-0 model starts only the projector and the added norms fresh.
FRESH_AT_STAGE_0 = re.compile(rf"^model\.({PROJECTOR_PARAMETERS}|{ADDED_NORM_PARAMETERS})")


def build_processor(tokenizer, config: TinyGPTVConfig, stage: int | None = None) -> TinyGPTVProcessor:
    stage = config.stage if stage is None else stage
    size = config.vision_config.image_size
    image_processor = TinyGPTVImageProcessor(size={"height": size, "width": size})
    return TinyGPTVProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=chat_templates(STAGES[stage].chat_template),
        num_query_tokens=config.num_query_tokens,
        end_symbol=STAGES[stage].end_symbol,
        context_length=config.text_config.max_position_embeddings,
    )


def set_processor_stage(processor: TinyGPTVProcessor, stage: int, end_symbol: str | None = None):
    """The stage's default chat template and end symbol, so a folder saved after a stage answers in its format."""
    processor.chat_template = chat_templates(STAGES[stage].chat_template)
    processor.end_symbol = STAGES[stage].end_symbol if end_symbol is None else end_symbol


def generation_config_for(tokenizer, end_symbol: str) -> GenerationConfig:
    """Greedy by default, no BOS (as the original at inference), stop on the stage's end symbol."""
    return GenerationConfig(
        do_sample=False,
        max_new_tokens=MAX_NEW_TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        stop_strings=[end_symbol] if end_symbol.strip() else None,
    )


def fit_tokenizer(config: TinyGPTVConfig, tokenizer) -> TinyGPTVConfig:
    """Point the config at the tokenizer's `<ImageHere>` id and make sure the vocabulary fits the embeddings."""
    if len(tokenizer) > config.text_config.vocab_size:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the embedding table only {config.text_config.vocab_size}."
        )
    config.image_token_id = tokenizer.convert_tokens_to_ids("<ImageHere>")
    config.text_config.bos_token_id = tokenizer.bos_token_id
    config.text_config.eos_token_id = tokenizer.eos_token_id
    config.text_config.pad_token_id = tokenizer.pad_token_id
    return config


def check_processor_fits(config: TinyGPTVConfig, processor: TinyGPTVProcessor) -> None:
    """Raise unless the processor writes the placeholders the model fills: the same image token id (SGLang takes the
    token from the processor and its id from the config) and `num_query_tokens` of them per image."""
    problems = [
        f"{name} is {ours} in the processor but {theirs} in the config"
        for name, ours, theirs in (
            ("image_token_id", processor.image_token_id, config.image_token_id),
            ("num_query_tokens", processor.num_query_tokens, config.num_query_tokens),
        )
        if ours != theirs
    ]
    if problems:
        raise ValueError(
            "The processor does not fit the model: " + "; ".join(problems) + ". Build the processor from the "
            "model's config (checkpoint.build_processor) after fit_tokenizer."
        )


def save_checkpoint(
    model: TinyGPTVForConditionalGeneration, processor: TinyGPTVProcessor, output_dir
) -> Path:
    """Write a folder that loads with the Auto classes, with or without this package (remote code included)."""
    check_processor_fits(model.config, processor)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config = generation_config_for(processor.tokenizer, processor.end_symbol)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return output_dir


def resize_for_stage(config: TinyGPTVConfig, stage: int) -> TinyGPTVConfig:
    config.stage = stage
    config.vision_config.image_size = STAGES[stage].image_size
    return config


def init_checkpoint(
    preset: str,
    output_dir,
    llm_path: str | os.PathLike | None = None,
    vision_path: str | os.PathLike | None = None,
    seed: int = 0,
) -> Path:
    """A stage-0 checkpoint: random weights for a preset, or Phi + BLIP-2 pretrained parts with fresh projections."""
    if (llm_path is None) != (vision_path is None):
        raise ValueError("--llm and --vision go together: the stage-0 model needs both pretrained parts.")
    torch.manual_seed(seed)
    if llm_path is not None:
        tokenizer = load_llm_tokenizer(str(llm_path))
        language_model, text_config = load_phi_language_model(llm_path)
        vision_state, vision_config, qformer_config = load_blip2_vision_side(vision_path)
        config = TinyGPTVConfig(
            vision_config=vision_config,
            qformer_config=qformer_config,
            text_config=text_config,
            num_query_tokens=vision_state["model.query_tokens"].shape[1],
            projection_hidden_size=preset_config(preset).projection_hidden_size,
        )
        config = fit_tokenizer(config, tokenizer)
        model = TinyGPTVForConditionalGeneration(config)
        missing, unexpected = model.load_state_dict({**language_model, **vision_state}, strict=False)
        # Anything missing beyond what starts fresh is an error.
        not_fresh = [key for key in missing if not FRESH_AT_STAGE_0.search(key)]
        if not_fresh or unexpected:
            raise ValueError(
                f"Pretrained parts do not fit the model: missing {not_fresh}, unexpected {unexpected}."
            )
    else:
        # No Phi-2 tokenizer exists offline: random presets carry the tiny byte-level BPE (same class).
        tokenizer = build_tiny_tokenizer()
        config = fit_tokenizer(preset_config(preset), tokenizer)
        model = TinyGPTVForConditionalGeneration(config)
    model.eval()
    return save_checkpoint(model, build_processor(tokenizer, model.config), output_dir)

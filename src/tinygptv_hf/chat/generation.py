"""The model behind a chat: loading a checkpoint (CPU int8 or int4, as saved, 8-bit or 4-bit) and streaming its
answers."""

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    BitsAndBytesConfig,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from ..modeling import TinyGPTVCpuInt4Config, TinyGPTVCpuInt8Config
from ..processors.templates import MAX_NEW_TOKENS
from .cpu_float32 import to_float32_in_place, use_cpu_gemm_choice


@dataclass
class GenerationSettings:
    """Sampling as the original's chat: nucleus sampling, temperature 1, top-p 0.9, repetition penalty 1.05,
    at most `MAX_NEW_TOKENS` new tokens (docs/original-differences.md#chat-sampling). `greedy` gives
    reproducible answers, which grounding prefers."""

    max_new_tokens: int = MAX_NEW_TOKENS
    temperature: float = 1.0
    top_p: float = 0.9
    repetition_penalty: float = 1.05
    greedy: bool = False

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}.")
        if self.temperature <= 0:
            raise ValueError(
                f"temperature must be positive, got {self.temperature}; use greedy decoding instead."
            )
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")

    def generate_kwargs(self, room: int) -> dict:
        """Arguments for `generate`, with no more new tokens than the context has `room` for."""
        kwargs = {
            "max_new_tokens": min(self.max_new_tokens, room),
            "repetition_penalty": self.repetition_penalty,
        }
        if self.greedy:
            return {**kwargs, "do_sample": False}
        return {**kwargs, "do_sample": True, "temperature": self.temperature, "top_p": self.top_p}


QUANTIZATIONS = ("int8", "int4", "none", "8bit", "4bit")
CPU_QUANTIZATIONS = {"int8": TinyGPTVCpuInt8Config, "int4": TinyGPTVCpuInt4Config}


def load_chat_model(path: str, quantization: str | None = None):
    """Model and processor from a checkpoint folder or Hub id. `quantization`: "int8" (int8 weights per channel,
    docs/cpu-inference.md), "int4" (int4 weights in groups of 32: half int8's memory, more drift), "none" (unquantized: on a CPU in float32 through the faster float32 GEMM of the machine,
    since bf16 has no fast kernel on AVX2-only CPUs; on a GPU in the checkpoint's dtype), "8bit"/"4bit"
    (bitsandbytes); by default "int8" on a CPU and "none" on a GPU or for a checkpoint saved already quantized."""
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}; got {quantization!r}.")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        saved_quantized = getattr(AutoConfig.from_pretrained(path), "quantization_config", None) is not None
        if quantization is None:
            quantization = "int8" if device == "cpu" and not saved_quantized else "none"
        kwargs = {"device_map": device}
        if quantization in CPU_QUANTIZATIONS:
            if device != "cpu":
                raise ValueError(
                    f"{quantization} is a CPU mode; on a GPU use the default weights, 8bit or 4bit."
                )
            kwargs["quantization_config"] = CPU_QUANTIZATIONS[quantization]()
        elif quantization in ("8bit", "4bit"):
            kwargs["quantization_config"] = BitsAndBytesConfig(**{f"load_in_{quantization}": True})
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs).eval()
        if quantization == "none" and device == "cpu" and not saved_quantized:
            # a chat trains nothing, and frozen float32 weights may be packed
            use_cpu_gemm_choice(to_float32_in_place(model.requires_grad_(False)))
        return model, AutoProcessor.from_pretrained(path)
    except OSError as error:  # transformers' word for "no such folder or Hub repository"
        raise FileNotFoundError(f"Cannot load a checkpoint from {path}: {error}") from error


class _Cancelled(StoppingCriteria):
    """Ends generation once the reader has gone (end symbol seen, Ctrl-C, browser closed)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )


class ModelStream:
    """A `ChatSession` stream function backed by a checkpoint: its own chat template, tokens as they come.

    `generate` runs in a thread feeding a `TextIteratorStreamer`; closing the returned generator stops it.
    """

    def __init__(self, model, processor):
        self.model = model
        self.processor = processor

    @property
    def end_symbol(self) -> str:
        return self.processor.end_symbol

    def __call__(self, messages: list[dict], images: list, settings: GenerationSettings) -> Iterator[str]:
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = self.processor(images=images or None, text=[prompt], return_tensors="pt").to(
            self.model.device
        )
        room = self.processor.context_length - inputs["input_ids"].shape[1]
        if room < 1:
            raise ValueError(
                f"The conversation fills the model's whole context ({self.processor.context_length} tokens); "
                "start a new one."
            )
        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        cancelled = threading.Event()
        failures = []

        def generate():
            try:
                self.model.generate(
                    **inputs,
                    **settings.generate_kwargs(room),
                    streamer=streamer,
                    tokenizer=self.processor.tokenizer,
                    stopping_criteria=StoppingCriteriaList([_Cancelled(cancelled)]),
                )
            except Exception as error:  # handed to the reader, whose loop would otherwise wait forever
                failures.append(error)
                streamer.end()

        thread = threading.Thread(target=generate, daemon=True)
        thread.start()
        try:
            yield from streamer
        finally:
            cancelled.set()
            thread.join()
        if failures:
            raise failures[0]

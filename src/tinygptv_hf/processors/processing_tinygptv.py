"""TinyGPT-V processor: image processor + Phi-2 (CodeGen byte-level BPE) tokenizer + the stage's chat templates.

Every `<ImageHere>` in the text becomes `num_query_tokens` image tokens. `<ImageHere>` is a special token, so the
text on either side of it is tokenized separately, exactly as the original tokenized prompt segments. No BOS is
added (as the original at inference). This file ships as remote code: same-folder imports only.
"""

from transformers.feature_extraction_utils import BatchFeature
from transformers.image_utils import ImageInput
from transformers.processing_utils import MultiModalData, ProcessingKwargs, ProcessorMixin, Unpack
from transformers.tokenization_utils_base import PreTokenizedInput, TextInput

# Where a prompt hands over to the answer, in the `###Human:`/`###Assistant:` and `[INST]`/`[/INST]` families.
ASSISTANT_MARKERS = ("###Assistant: ", "[/INST]")


class TinyGPTVProcessor(ProcessorMixin):
    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template=None,
        image_token: str = "<ImageHere>",
        num_query_tokens: int = 32,
        end_symbol: str = "###",
        context_length: int = 2048,
        **kwargs,
    ):
        self.image_token = image_token
        self.num_query_tokens = num_query_tokens
        self.end_symbol = end_symbol
        self.context_length = context_length
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"The tokenizer has no {image_token!r} token; add it as a special token first.")
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        return self.image_token * self.num_query_tokens

    def __call__(
        self,
        images: ImageInput | None = None,
        text: TextInput | PreTokenizedInput | list[TextInput] | list[PreTokenizedInput] | None = None,
        **kwargs: Unpack[ProcessingKwargs],
    ) -> BatchFeature:
        outputs = super().__call__(images=images, text=text, **kwargs)
        input_ids = outputs.get("input_ids")
        if input_ids is not None:
            lengths = [len(ids) for ids in input_ids]
            longest = max(lengths, default=0)
            if longest > self.context_length:
                raise ValueError(
                    f"A prompt is {longest} tokens long (each image counts {self.num_query_tokens}) but the model's "
                    f"context holds {self.context_length} tokens; shorten the text or pass fewer images."
                )
        return outputs

    def clean_answer(self, text: str) -> str:
        """The answer before this checkpoint's end symbol, stripped (the chat's rule; the evaluation harness scores
        with the original benchmark scripts' own cut, `evaluation.answers.harness_answer`)."""
        return self._before_end_symbol(text).strip()

    def _before_end_symbol(self, text: str) -> str:
        return text.split(self.end_symbol, 1)[0] if self.end_symbol else text

    def decode(self, token_ids, skip_special_tokens: bool = False, **kwargs) -> str:
        """The tokenizer's decode. With `skip_special_tokens=True` the end symbol counts as the end-of-sequence token
        it is for this model (to the tokenizer it is plain text): the answer stops before it, as `generate` does."""
        if not skip_special_tokens:
            return self.tokenizer.decode(token_ids, **kwargs)
        return self._decode_answer(token_ids, self._before_end_symbol, skip_special_tokens=True, **kwargs)

    def batch_decode(self, sequences, skip_special_tokens: bool = False, **kwargs) -> list[str]:
        """`decode` of each sequence (each stops at the end symbol with `skip_special_tokens=True`)."""
        return [
            self.decode(ids, skip_special_tokens=skip_special_tokens, **kwargs) for ids in _as_list(sequences)
        ]

    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens=True, **kwargs):
        """Clean answers from generated token ids.

        Only new tokens (`outputs[:, prompt_length:]`) decode to the bare answer. A sequence that still holds its
        prompt (it contains image tokens, as `generate`'s full output that the pipeline passes) keeps the prompt
        text and only what follows the prompt's last assistant marker is cleaned, so the decoded prompt stays a
        prefix of the decoded sequence (the pipeline strips it that way).
        """
        generated_outputs = _as_list(generated_outputs)
        single = bool(generated_outputs) and isinstance(generated_outputs[0], int)
        texts = [
            self._decode_answer(ids, self.clean_answer, skip_special_tokens=skip_special_tokens, **kwargs)
            for ids in ([generated_outputs] if single else generated_outputs)
        ]
        return texts[0] if single else texts

    def _decode_answer(self, token_ids, finish, **kwargs) -> str:
        """Decode, then apply `finish` to the answer: all of it for new tokens alone, and only what follows the last
        assistant marker for a sequence that still holds its prompt (it contains image tokens)."""
        ids = _as_list(token_ids)
        text = self.tokenizer.decode(ids, **kwargs)
        start = 0
        if self.image_token_id in ids:
            ends = [text.rfind(marker) + len(marker) for marker in ASSISTANT_MARKERS if marker in text]
            start = max(ends, default=0)
        return text[:start] + finish(text[start:])

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs) -> MultiModalData:
        """Placeholder tokens per image, for serving engines such as vLLM: `num_query_tokens` (the Q-Former's output)
        and one patch for every image, whatever its size (each is resized to the model's square input).

        `image_sizes` is a list of `(height, width)`, as LLaVA's processor takes it.
        """
        if image_sizes is None:
            return MultiModalData()
        for size in image_sizes:
            if not isinstance(size, list | tuple) or len(size) != 2 or not all(side > 0 for side in size):
                raise ValueError(
                    f"image_sizes must hold (height, width) pairs of positive sizes; got {size!r}."
                )
        return MultiModalData(
            num_image_tokens=[self.num_query_tokens] * len(image_sizes),
            num_image_patches=[1] * len(image_sizes),
        )

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "pixel_values"]


def _as_list(ids) -> list:
    """Token ids (a list, tensor, array or single id) as a Python list."""
    ids = ids.tolist() if hasattr(ids, "tolist") else ids
    return [ids] if isinstance(ids, int) else list(ids)


__all__ = ["TinyGPTVProcessor"]

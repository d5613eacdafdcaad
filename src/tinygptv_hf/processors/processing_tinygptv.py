"""TinyGPT-V processor: image processor + Phi-2 (CodeGen byte-level BPE) tokenizer + the stage's chat templates.

Every `<ImageHere>` in the text becomes `num_query_tokens` image tokens. `<ImageHere>` is a special token, so the
text on either side of it is tokenized separately, exactly as the original tokenized prompt segments. No BOS is
added (as the original at inference). This file ships as remote code: same-folder imports only.
"""

from transformers.feature_extraction_utils import BatchFeature
from transformers.image_utils import ImageInput
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, Unpack
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
        """The answer before the end symbol, stripped (what the original's chat returned)."""
        if self.end_symbol:
            text = text.split(self.end_symbol, 1)[0]
        return text.strip()

    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens=True, **kwargs):
        """Clean answers from generated token ids.

        Only new tokens (`outputs[:, prompt_length:]`) decode to the bare answer. A sequence that still holds its
        prompt (it contains image tokens, as `generate`'s full output that the pipeline passes) keeps the prompt
        text and only what follows the prompt's last assistant marker is cleaned, so the decoded prompt stays a
        prefix of the decoded sequence (the pipeline strips it that way).
        """
        if hasattr(generated_outputs, "tolist"):
            generated_outputs = generated_outputs.tolist()
        single = bool(generated_outputs) and isinstance(generated_outputs[0], int)
        texts = []
        for ids in [generated_outputs] if single else generated_outputs:
            ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
            text = self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens, **kwargs)
            prompt_end = 0
            if self.image_token_id in ids:
                ends = [text.rfind(marker) + len(marker) for marker in ASSISTANT_MARKERS if marker in text]
                prompt_end = max(ends, default=0)
            texts.append(text[:prompt_end] + self.clean_answer(text[prompt_end:]))
        return texts[0] if single else texts

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "pixel_values"]


__all__ = ["TinyGPTVProcessor"]

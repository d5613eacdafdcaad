"""TinyGPT-V processor: image processor + Phi-2 (CodeGen byte-level BPE) tokenizer + the stage's chat templates.

Every `<ImageHere>` in the text becomes `num_query_tokens` image tokens. `<ImageHere>` is a special token, so the
text on either side of it is tokenized separately, exactly as the original tokenized prompt segments. No BOS is
added (as the original at inference). This file ships as remote code: same-folder imports only.
"""

from transformers.processing_utils import ProcessorMixin


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

    def __call__(self, images=None, text=None, **kwargs):
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
        texts = self.tokenizer.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)
        return [self.clean_answer(text) for text in texts]

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "pixel_values"]


__all__ = ["TinyGPTVProcessor"]

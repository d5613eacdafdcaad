"""The original's training sequence, rebuilt from samples: ids, labels and pixels for the model's forward.

Per sample (docs/original-differences.md#training-sequence): `[BOS] [prompt text] [image tokens] [prompt text]
[answer][end symbol]`, right padded with the pad id (attention 0, label -100). Prompt pieces around
`<ImageHere>` and the answer are tokenized separately without special tokens, as the original did. Labels are
the answer ids (truncated to the stage's maximum text length); everything else is -100. Later turns of a
conversation are `<|endoftext|>` + the templated question (unlabelled) followed by the labelled answer. Unlike
the original, those in-sequence BOS tokens keep attention 1 (the original's pad == bos masked them by
accident, docs/original-differences.md#conversation-separators).

A sequence never outgrows the model's context: the original cut the prompt at its `max_context_len` and the
answer at `max_txt_len`; here the prompt's text is cut from its end when it alone would fill the context (the
image tokens always stay), and the answer to what the context leaves, so one over-long sample trains, shortened,
instead of stopping the run.
"""

from dataclasses import dataclass

import torch

from ..processors.templates import IGNORE_INDEX, IMAGE_TOKEN


@dataclass
class SequenceParts:
    """One training sequence before padding."""

    input_ids: list[int]
    labels: list[int]
    prompt_length: int


def compose_sequence(
    prompt_pieces: list[list[int]],
    answer_ids: list[int],
    *,
    bos_id: int,
    image_token_id: int,
    num_image_tokens: int,
    later_turns: list[tuple[list[int], list[int]]] = (),
) -> SequenceParts:
    """`prompt_pieces` are the token ids between image placeholders (n images -> n + 1 pieces)."""
    input_ids = [bos_id]
    for index, piece in enumerate(prompt_pieces):
        if index:
            input_ids.extend([image_token_id] * num_image_tokens)
        input_ids.extend(piece)
    prompt_length = len(input_ids)
    labels = [IGNORE_INDEX] * prompt_length + list(answer_ids)
    input_ids.extend(answer_ids)
    for question_ids, turn_answer_ids in later_turns:
        input_ids.extend(question_ids)
        labels.extend([IGNORE_INDEX] * len(question_ids))
        input_ids.extend(turn_answer_ids)
        labels.extend(turn_answer_ids)
    return SequenceParts(input_ids=input_ids, labels=labels, prompt_length=prompt_length)


def pad_sequences(
    sequences: list[SequenceParts], pad_id: int, max_length: int | None = None
) -> dict[str, torch.Tensor]:
    """Right padding (pad id, attention 0, label -100) to the longest prompt plus the longest answer part, the
    original's batch length (it padded the prompt and the answer blocks separately), but to no more than
    `max_length` (the model's context; the sequences themselves are never longer)."""
    length = max(sequence.prompt_length for sequence in sequences) + max(
        len(sequence.input_ids) - sequence.prompt_length for sequence in sequences
    )
    if max_length is not None:
        length = max(min(length, max_length), max(len(sequence.input_ids) for sequence in sequences))
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    labels = torch.full((len(sequences), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        size = len(sequence.input_ids)
        input_ids[row, :size] = torch.tensor(sequence.input_ids)
        labels[row, :size] = torch.tensor(sequence.labels)
        attention_mask[row, :size] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class TinyGPTVCollator:
    """Turns samples `{"image", "turns": [{"instruction", "answer"}, ...], "source"}` into a training batch.

    `prompt_template` is a format string such as `###Human: {} ###Assistant: ` (stage 3) or `[INST] {} [/INST]`
    (stage 4); `None` leaves instructions as they are. An empty first instruction with an image means the image
    alone is the condition (stages 1-2). `max_text_length` caps each answer's tokens, as the original's max_txt_len,
    and the processor's `context_length` the whole sequence.
    """

    def __init__(self, processor, *, prompt_template: str | None, end_symbol: str, max_text_length: int):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.prompt_template = prompt_template
        self.end_symbol = end_symbol
        self.max_text_length = max_text_length
        self.context_length = processor.context_length
        self.image_token_id = processor.image_token_id
        self.num_image_tokens = processor.num_query_tokens

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _format(self, instruction: str) -> str:
        return self.prompt_template.format(instruction) if self.prompt_template else instruction

    def _prompt_pieces(self, instruction: str, has_image: bool, source: str) -> list[list[int]]:
        if not instruction:
            return [[], []] if has_image else [[]]
        pieces = self._format(instruction).split(IMAGE_TOKEN)
        if (len(pieces) - 1) != int(has_image):
            raise ValueError(
                f"Sample from {source}: {len(pieces) - 1} {IMAGE_TOKEN} placeholder(s) but "
                f"{int(has_image)} image(s)."
            )
        return [self._ids(piece) for piece in pieces]

    def _prompt_length(self, pieces: list[list[int]]) -> int:
        """BOS, the prompt's text and its image tokens."""
        return 1 + sum(map(len, pieces)) + (len(pieces) - 1) * self.num_image_tokens

    def _fit_context(self, pieces: list[list[int]], source: str) -> list[list[int]]:
        """Cut prompt text from the end until the prompt and one answer token fit the context."""
        excess = self._prompt_length(pieces) + 1 - self.context_length
        fitted = []
        for piece in reversed(pieces):
            cut = min(max(excess, 0), len(piece))
            fitted.insert(0, piece[: len(piece) - cut])
            excess -= cut
        if excess > 0:
            raise ValueError(
                f"Sample from {source}: {len(pieces) - 1} image(s) of {self.num_image_tokens} tokens do not fit "
                f"the model's context of {self.context_length} tokens."
            )
        return fitted

    def sequence(self, sample: dict) -> SequenceParts:
        turns = sample["turns"]
        source = sample.get("source", "?")
        if sample.get("skip"):
            raise ValueError(
                f"A skipped record from {source} reached the collator ({sample['skip']['reason']}); train on a "
                f"tinygptv_hf.data.TrainingStream, which counts and removes skipped records."
            )
        has_image = sample.get("image") is not None
        first, rest = turns[0], turns[1:]
        pieces = self._fit_context(self._prompt_pieces(first["instruction"], has_image, source), source)
        room = min(self.max_text_length, self.context_length - self._prompt_length(pieces))
        answer_ids = self._ids(first["answer"] + self.end_symbol)[:room]
        later = []
        budget = room - len(answer_ids)
        for turn in rest:
            question_ids = self._ids(self.tokenizer.bos_token + self._format(turn["instruction"]))
            turn_answer_ids = self._ids(turn["answer"] + self.end_symbol)
            if len(question_ids) + len(turn_answer_ids) > budget:
                break  # the original truncates the conversation text at max_txt_len
            budget -= len(question_ids) + len(turn_answer_ids)
            later.append((question_ids, turn_answer_ids))
        return compose_sequence(
            pieces,
            answer_ids,
            bos_id=self.tokenizer.bos_token_id,
            image_token_id=self.image_token_id,
            num_image_tokens=self.num_image_tokens,
            later_turns=later,
        )

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        batch = pad_sequences(
            [self.sequence(sample) for sample in samples], self.tokenizer.pad_token_id, self.context_length
        )
        images = [sample["image"] for sample in samples if sample.get("image") is not None]
        if images:
            batch["pixel_values"] = self.processor.image_processor(images, return_tensors="pt")[
                "pixel_values"
            ]
        return batch

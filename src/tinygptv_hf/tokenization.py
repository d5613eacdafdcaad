"""Tokenizers: the Phi-2 tokenizer with `<ImageHere>`, and a tiny offline byte-level BPE of the same class."""

import json
from importlib import resources

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, CodeGenTokenizer

from .processors.templates import IMAGE_TOKEN

END_OF_TEXT = "<|endoftext|>"


def add_image_token(tokenizer):
    """Make `<ImageHere>` one special token, so text on either side tokenizes as the original's separate segments."""
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False
    )
    # Batched generation pads on the left; the training collator pads on its own.
    tokenizer.padding_side = "left"
    tokenizer.init_kwargs["padding_side"] = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # the original sets pad = eos
    return tokenizer


def build_tiny_tokenizer(vocab_size: int = 1024) -> CodeGenTokenizer:
    """A deterministic byte-level BPE trained on text shipped with the package, wrapped in Phi-2's tokenizer class."""
    corpus = (
        resources.files("tinygptv_hf").joinpath("resources/tokenizer_corpus.txt").read_text(encoding="utf-8")
    )
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus.splitlines(), trainer)
    trained = json.loads(bpe.to_str())["model"]
    merges = [tuple(merge) for merge in trained["merges"]]
    tokenizer = CodeGenTokenizer(vocab=trained["vocab"], merges=merges, model_max_length=512)
    return add_image_token(tokenizer)


def load_llm_tokenizer(path: str):
    """The tokenizer of a Phi folder (transformers format), with `<ImageHere>` added."""
    return add_image_token(AutoTokenizer.from_pretrained(path))

"""The original harness's question texts and prompt templates, character for character
(docs/original-differences.md#benchmark-prompts).

Typos and odd punctuation ("writting", ". and reply") are part of what the released model was scored on.
"""

from ..processors.templates import BENCHMARK_TEMPLATE, IMAGE_PROMPT, INSTRUCTION_TEMPLATE

VQA_QUESTION = "[vqa] Based on the image, respond to this question with a short answer: {}"
VSR_QUESTION = "[vqa] Based on the image, is this statement true or false? {}"
VIZWIZ_QUESTION = (
    "[vqa] The question is '{}' Based on the image, answer the question with a single word or phrase. "
    "and reply 'unanswerable' when the provided information is insufficient"
)
HATEFUL_MEMES_QUESTION = "This is an image writting '{}'. Is this image hateful? Answer yes or no. Answer:"
REFER_QUESTION = "[refer] give me the location of {}"


def generation_prompt(question: str) -> str:
    """`###Human: <Img><ImageHere></Img> {question}###Assistant: ` (generated benchmarks)."""
    return BENCHMARK_TEMPLATE.format(f"{IMAGE_PROMPT} {question}")


def ranking_prompt(question: str) -> str:
    """`###Human: <Img><ImageHere></Img> {question} ###Assistant: ` (IconQA's ranking; note the extra space)."""
    return INSTRUCTION_TEMPLATE.format(f"{IMAGE_PROMPT} {question}")

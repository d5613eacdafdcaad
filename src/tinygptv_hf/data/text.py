"""Text side of the original's datasets: the ``blip_caption`` processor and the task prompt pools.

Everything here is data or a pure function, so the readers, the synthetic world and the evaluation harness
agree on every character: docs/original-differences.md#text-processor,
docs/original-differences.md#prompt-formats and docs/original-differences.md#task-identifiers-and-boxes.
"""

import re

_BLIP_PUNCTUATION = re.compile(r"[.!\"()*#:;~]")
_WHITESPACE_RUNS = re.compile(r"\s{2,}")


def blip_caption(text: str, max_words: int = 50) -> str:
    """LAVIS ``BlipCaptionProcessor`` as the original applies it.

    Lower-case, each of ``. ! " ( ) * # : ; ~`` becomes a space, runs of two or more whitespace characters become
    one space (a lone newline or tab survives, as in the original), then trailing newlines and surrounding spaces
    go and only the first ``max_words`` space-separated words stay.
    """
    text = _BLIP_PUNCTUATION.sub(" ", text.lower())
    text = _WHITESPACE_RUNS.sub(" ", text)
    text = text.rstrip("\n").strip(" ")
    words = text.split(" ")
    if len(words) > max_words:
        text = " ".join(words[:max_words])
    return text


# Stage 3: prompts/alignment.txt of the released model repo (identical to MiniGPT-4's file).
ALIGNMENT_PROMPTS = (
    "<Img><ImageHere></Img> Describe this image in detail.",
    "<Img><ImageHere></Img> Take a look at this image and describe what you notice.",
    "<Img><ImageHere></Img> Please provide a detailed description of the picture.",
    "<Img><ImageHere></Img> Could you describe the contents of this image for me?",
)

# Stage 4 pools (MiniGPT-v2 convention). ``{}`` is the question, phrase or box text.
VQA_TEMPLATES = (
    "[vqa] {}",
    "[vqa] Based on the image, respond to this question with a short answer: {}",
)

CAPTION_PROMPTS = (
    "Briefly describe this image.",
    "Provide a concise depiction of this image.",
    "Present a short description of this image.",
    "Summarize this image in a few words.",
    "A short image caption:",
    "A short image description:",
    "A photo of ",
    "An image that shows ",
    "Write a short description for the image. ",
    "Write a description for the photo.",
    "Provide a description of what is presented in the photo.",
    "Briefly describe the content of the image.",
    "Can you briefly explain what you see in the image?",
    "Could you use a few words to describe what you perceive in the photo?",
    "Please provide a short depiction of the picture.",
    "Using language, provide a short account of the image.",
    "Use a few words to illustrate what is happening in the picture.",
)
CAPTION_TEMPLATE = "[caption] {}"

REFER_TEMPLATES = (
    "[refer] {}",
    "[refer] give me the location of {}",
    "[refer] where is {} ?",
    "[refer] from this image, tell me the location of {}",
    "[refer] the location of {} is",
    "[refer] could you tell me the location for {} ?",
    "[refer] where can I locate the {} ?",
)

IDENTIFY_TEMPLATES = (
    "[identify] {}",
    "[identify] what object is in this location {}",
    "[identify] identify the object present at this location {}",
    "[identify] what is it in {}",
    "[identify] describe this object in {}",
    "[identify] this {} is",
    "[identify] the object in {} is",
)

GROUNDING_PROMPTS = (
    "[grounding] please describe this image in details",
    "[grounding] describe this image as detailed as possible",
    "[grounding] summarize this image in details",
    "[grounding] give a thorough description of what you see in this image",
)

DETECTION_TEMPLATE = "[detection] {}"

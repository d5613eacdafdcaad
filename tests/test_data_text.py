"""The text processor and prompt pools, character for character:
docs/original-differences.md#text-processor, docs/original-differences.md#prompt-formats and
docs/original-differences.md#task-identifiers-and-boxes."""

from tinygptv_hf.data import text


def test_blip_caption_lowercases_strips_punctuation_and_collapses_spaces():
    assert (
        text.blip_caption('A Photo: of (a) "Dog"!!  running~ #1; *wow*.\n')
        == "a photo of a dog running 1 wow"
    )


def test_blip_caption_keeps_other_punctuation_and_a_lone_newline():
    # Only . ! " ( ) * # : ; ~ are replaced; a single newline is not a run of whitespace in the original regex.
    assert text.blip_caption("Is it red? Yes, it's red-ish\nok") == "is it red? yes, it's red-ish\nok"


def test_blip_caption_keeps_at_most_max_words():
    assert text.blip_caption(" ".join(str(i) for i in range(60))) == " ".join(str(i) for i in range(50))
    assert text.blip_caption("one two three", max_words=2) == "one two"


def test_prompt_pools_match_the_original():
    assert len(text.ALIGNMENT_PROMPTS) == 4
    assert all(p.startswith("<Img><ImageHere></Img> ") for p in text.ALIGNMENT_PROMPTS)
    assert len(text.CAPTION_PROMPTS) == 17 and "A photo of " in text.CAPTION_PROMPTS
    assert len(text.REFER_TEMPLATES) == 7 and "[refer] where can I locate the {} ?" in text.REFER_TEMPLATES
    assert len(text.IDENTIFY_TEMPLATES) == 7 and "[identify] this {} is" in text.IDENTIFY_TEMPLATES
    assert len(text.GROUNDING_PROMPTS) == 4 and all(
        p.startswith("[grounding] ") for p in text.GROUNDING_PROMPTS
    )
    assert text.VQA_TEMPLATES[1].format("q?") == (
        "[vqa] Based on the image, respond to this question with a short answer: q?"
    )
    assert text.DETECTION_TEMPLATE.format("a dog") == "[detection] a dog"

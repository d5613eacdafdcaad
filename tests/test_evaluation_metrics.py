"""Both scoring modes of every shipped metric against hand-computed scores, quirks included in `paper` only."""

import evaluate
import pytest

from tinygptv_hf.evaluation import METRICS_DIR, harness_answer, load_metric, original_cleanup, roc_auc
from tinygptv_hf.evaluation.answers import box_iou
from tinygptv_hf.evaluation.vqa_normalization import (
    CONTRACTIONS,
    OFFICIAL_CONTRACTIONS,
    normalize_answer,
    vqa_accuracy,
)


def scores(name, predictions, references):
    """{mode: (accuracy, per-sample scores)} computed through `evaluate`."""
    results = {}
    for mode in ("paper", "standard"):
        result = load_metric(name, mode).compute(predictions=predictions, references=references)
        results[mode] = (result["accuracy"], result["scores"])
    return results


def test_gqa_paper_matches_substrings_of_the_untruncated_output():
    results = scores(
        "gqa",
        ["Not sure###Human: no", "No.", "Yes, it is", "the table###"],
        ["no", "no", "yes", "table"],
    )
    # "no" is found past the end symbol and inside "not"; standard needs the normalised answer to equal it.
    assert results["paper"] == (100.0, [1.0, 1.0, 1.0, 1.0])
    assert results["standard"] == (50.0, [0.0, 1.0, 0.0, 1.0])


def test_vsr_paper_double_counts_yes_and_no():
    results = scores("vsr", ["True, yes.", "no", "false", "I do not know###false"], [1, 0, 1, 0])
    # "true"+"yes" score 2; "false" after ### and "no" inside "not"/"know" score 2 for a non-answer.
    assert results["paper"] == (125.0, [2.0, 1.0, 0.0, 2.0])
    assert results["standard"] == (50.0, [1.0, 1.0, 0.0, 0.0])


def test_vizwiz_paper_counts_an_empty_answer_fully_correct():
    references = [
        ["unanswerable"] * 10,
        ["coca cola"] * 3 + ["coke"] * 7,
        ["dark red"] * 2 + ["blue"] * 8,
        ["x_y"] * 3 + ["z"] * 7,
    ]
    results = scores("vizwiz", ["", "Coca Cola###Human: hi", "red", "x y"], references)
    paper_accuracy, paper_scores = results["paper"]
    # Empty answer: substring of all 10 -> 1. "red" inside "dark red" twice -> 2/3. "x_y" split on "_" -> 6 hits.
    assert paper_scores == pytest.approx([1.0, 1.0, 2 / 3, 1.0])
    assert paper_accuracy == pytest.approx(100 * (3 + 2 / 3) / 4)
    standard_accuracy, standard_scores = results["standard"]
    # VQA accuracy: 3 of 10 agree -> (3 * 2/3 + 7 * 1) / 10 = 0.9; the reference "x_y" is never normalised.
    assert standard_scores == pytest.approx([0.0, 0.9, 0.0, 0.0])
    assert standard_accuracy == pytest.approx(22.5)


def test_vizwiz_standard_is_the_vizwiz_scripts_rule():
    """The VizWiz API's vqaEval normalises the answer only; references count exactly as the annotators wrote
    them, and its contraction table turns "dont" into "don’t"."""
    references = [
        ["Coca-Cola"] * 5 + ["coke"] * 5,
        ["coca cola"] * 5 + ["coke"] * 5,
        ["dont know"] * 10,
        ["don’t know"] * 10,
        ["2"] * 4 + ["two"] * 6,
    ]
    predictions = ["coca cola", "Coca-Cola.", "dont know", "Dont know", "Two"]
    _, standard_scores = scores("vizwiz", predictions, references)["standard"]
    # "coca cola" never equals "Coca-Cola"; "Coca-Cola." normalises to "coca cola" (5 of the others: 1);
    # "dont" becomes "don’t", which matches only a reference written so; "Two" becomes "2" (4 matches: 1).
    assert standard_scores == pytest.approx([0.0, 1.0, 0.0, 1.0, 1.0])


def test_hateful_memes_standard_reports_auroc_from_the_yes_probabilities():
    predictions, labels = ["yes", "no", "yes", "no", "no"], [1, 0, 0, 1, 0]
    probabilities = [0.9, 0.2, 0.6, 0.6, 0.1]
    result = load_metric("hateful_memes", "standard").compute(
        predictions=predictions, references=labels, yes_probabilities=probabilities
    )
    # Positives 0.9 and 0.6 against negatives 0.2, 0.6, 0.1: 5 wins and 1 tie of 6 pairs.
    assert result["roc_auc"] == pytest.approx(5.5 / 6)
    assert result["accuracy"] == pytest.approx(60.0)
    one_class = load_metric("hateful_memes", "standard").compute(
        predictions=["yes"], references=[1], yes_probabilities=[0.7]
    )
    assert one_class["roc_auc"] is None
    assert "roc_auc" not in load_metric("hateful_memes", "standard").compute(
        predictions=["no"], references=[0]
    )
    with pytest.raises(ValueError, match="standard mode only"):
        load_metric("hateful_memes", "paper").compute(
            predictions=["no"], references=[0], yes_probabilities=[0.1]
        )


def test_roc_auc_is_the_pairwise_ranking_probability():
    labels = [1, 0, 1, 1, 0, 0, 1, 0, 0, 1]
    scores_ = [0.3, 0.3, 0.8, 0.1, 0.5, 0.5, 0.5, 0.05, 0.9, 0.3]
    positives = [score for score, label in zip(scores_, labels, strict=True) if label]
    negatives = [score for score, label in zip(scores_, labels, strict=True) if not label]
    pairs = [(p, n) for p in positives for n in negatives]
    expected = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)
    assert roc_auc(labels, scores_) == pytest.approx(expected)
    assert roc_auc([0, 1], [0.2, 0.4]) == 1.0 and roc_auc([1, 0], [0.2, 0.4]) == 0.0
    with pytest.raises(ValueError, match="one positive and one negative"):
        roc_auc([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="Labels must be 0 or 1"):
        roc_auc([2, 0], [0.1, 0.2])


def test_hateful_memes_paper_reads_any_no_inside_a_word():
    results = scores(
        "hateful_memes",
        ["Yes###", "I do not know", "eyes closed", "maybe", "No, it is not."],
        [1, 0, 1, 0, 0],
    )
    # "not" reads as no, "eyes" as yes, "maybe" is neither (wrong).
    assert results["paper"] == (80.0, [1.0, 1.0, 1.0, 0.0, 1.0])
    assert results["standard"] == (40.0, [1.0, 0.0, 0.0, 0.0, 1.0])


def test_okvqa_paper_normalises_only_when_annotators_disagree():
    references = [["yes"] * 10, ["two"] * 4 + ["2"] * 6, ["dog"] * 2 + ["cat"] * 8]
    results = scores("okvqa", ["Yes.", "Two", "Assistant: dog"], references)
    # Unanimous "yes" is compared raw with "yes."; the lower-cased answer keeps "assistant: ".
    paper_accuracy, paper_scores = results["paper"]
    assert paper_scores == pytest.approx([0.0, 1.0, 0.0])
    standard_accuracy, standard_scores = results["standard"]
    # "dog" matches 2 of 10: (2 * 1/3 + 8 * 2/3) / 10 = 0.6.
    assert standard_scores == pytest.approx([1.0, 1.0, 0.6])
    assert (paper_accuracy, standard_accuracy) == pytest.approx((100 / 3, 260 / 3))


def test_refcoco_paper_uses_inclusive_pixels_and_exactly_four_numbers():
    reference = {"bbox": [10.0, 20.0, 40.0, 30.0], "width": 200, "height": 100}
    square = {"bbox": [0.0, 0.0, 10.0, 10.0], "width": 100, "height": 100}
    predictions = [
        "{<5><20><25><50>}",
        "{ <5> <20> <25> <50> }",
        "{<5><20><25><50>}<delim>{<1><1><2><2>}",
        "{<0><0><5><10>}",
        "Sorry, I cannot.",
    ]
    results = scores("refcoco", predictions, [reference, reference, reference, square, reference])
    # Half of the square: plain IoU is exactly 0.5 (a miss); with +1 pixels it is 66/121 (a hit).
    assert results["paper"] == (60.0, [1.0, 1.0, 0.0, 1.0, 0.0])
    assert results["standard"] == (60.0, [1.0, 1.0, 1.0, 0.0, 0.0])


def test_iconqa_is_exact_match_of_the_chosen_index():
    results = scores("iconqa", [2, 0, 1], [2, 1, 1])
    assert results["paper"] == results["standard"] == (pytest.approx(200 / 3), [1.0, 0.0, 1.0])


def test_a_metric_refuses_to_run_without_a_mode():
    with pytest.raises(ValueError, match="needs config_name 'paper' or 'standard'"):
        evaluate.load(str(METRICS_DIR / "gqa"))
    with pytest.raises(ValueError, match="Unknown scoring mode"):
        load_metric("gqa", "lenient")


def test_answer_cleanup():
    raw = "<s>[INST] ignored [/INST] Assistant: a red car###Human: what?</s>tail"
    assert original_cleanup(raw) == "Assistant: a red car###Human: what?"
    assert harness_answer(raw) == "a red car"


def test_vqa_normalisation():
    assert normalize_answer("Two dogs.") == "2 dogs"
    assert normalize_answer("The cat's toy!") == "cat's toy"
    assert normalize_answer("dont  know\n") == "don't know"
    assert normalize_answer("dont  know\n", OFFICIAL_CONTRACTIONS) == "don’t know"
    # MiniGPT-4's copy, which the original harness uses, is the official table with every ’ typed as '.
    assert CONTRACTIONS == {
        k.replace("’", "'"): v.replace("’", "'") for k, v in OFFICIAL_CONTRACTIONS.items()
    }
    assert OFFICIAL_CONTRACTIONS["couldnt’ve"] == "couldn’t’ve" and OFFICIAL_CONTRACTIONS["weve"] == "we've"
    assert normalize_answer("1,000") == "1000"
    assert normalize_answer("x-ray") == "x ray"
    assert vqa_accuracy("2", ["2"] * 2 + ["3"] * 8) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)


def test_box_iou_conventions():
    assert box_iou([0, 0, 10, 10], [0, 0, 5, 10]) == pytest.approx(0.5)
    assert box_iou([0, 0, 10, 10], [0, 0, 5, 10], inclusive=True) == pytest.approx(66 / 121)
    assert box_iou([0, 0, 1, 1], [5, 5, 6, 6]) == 0.0

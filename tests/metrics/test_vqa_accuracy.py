"""VQA answer normalisation and accuracy against hand-worked cases."""
import pytest

from albef_plugin.metrics.vqa_accuracy import normalize_answer, vqa_accuracy


@pytest.mark.parametrize("raw, normalized", [
    ("Yes", "yes"),
    ("  two\n", "2"),
    ("the red one", "red 1"),
    ("a dog", "dog"),
    ("an apple", "apple"),
    ("none", "0"),
    ("black/white", "black white"),
    ("black / white", "black white"),   # punctuation touching a space is deleted
    ("1,000", "1000"),                  # digit-comma-digit: commas deleted
    ("2.5", "2.5"),                     # a decimal point stays
    ("yes.", "yes"),
    ("dont know", "don't know"),
    ("t-shirt", "t shirt"),
    ("what?!", "what"),
])
def test_normalization_rules(raw, normalized):
    assert normalize_answer(raw) == normalized


def test_accuracy_is_min_of_matches_over_three_averaged_over_leave_one_out():
    assert vqa_accuracy("yes", ["yes"] * 10) == 1.0
    assert vqa_accuracy("no", ["yes"] * 10) == 0.0
    # 2 of 10 say "2": the 2 matching annotators see 1 other match (1/3), the 8 others see 2 (2/3)
    truth = ["2"] * 2 + ["3"] * 8
    assert vqa_accuracy("2", truth) == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)
    # 3 of 10: matching ones see 2 others (2/3), the rest see 3 (1)
    truth = ["red"] * 3 + ["blue"] * 7
    assert vqa_accuracy("red", truth) == pytest.approx((3 * (2 / 3) + 7 * 1.0) / 10)
    # 4 or more matches: every leave-one-out subset has >= 3
    assert vqa_accuracy("red", ["red"] * 4 + ["blue"] * 6) == 1.0


def test_both_sides_are_normalized_and_unknown_answers_are_scored_as_given():
    assert vqa_accuracy("Two", ["2"] * 10) == 1.0
    assert vqa_accuracy("the cat", ["cat"] * 10) == 1.0
    assert vqa_accuracy("an answer nobody gave", ["cat"] * 10) == 0.0


def test_a_single_annotation_is_an_exact_match_and_none_is_an_error():
    assert vqa_accuracy("circle", ["circle"]) == 1.0
    assert vqa_accuracy("square", ["circle"]) == 0.0
    with pytest.raises(ValueError):
        vqa_accuracy("x", [])

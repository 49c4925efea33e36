"""The one implementation of each score: edit distance, WER/CER, accuracy, macro-F1 and confusion."""

import pytest

from blsp_emo.emotion import EMOTIONS
from blsp_emo.metrics import edit_distance, error_rate, label_scores, plain_words


def test_edit_distance_and_error_rates():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance([], ["a"]) == 1 and edit_distance(["a"], []) == 1
    assert error_rate(["the cat sat"], ["the cat sat"]) == 0.0
    assert error_rate(["the cat sat"], ["the bat sat down"]) == pytest.approx(2 / 3)  # 1 sub + 1 ins
    assert error_rate(["a b", "c d e"], ["a b", ""]) == pytest.approx(3 / 5)  # corpus-level, not averaged
    assert error_rate(["ab c"], ["ab"], unit="char") == pytest.approx(2 / 4)  # the space counts
    with pytest.raises(ValueError, match="unit"):
        error_rate(["a"], ["a"], unit="phone")
    with pytest.raises(ValueError, match="empty"):
        error_rate([""], ["a"])


def test_plain_words_ignores_case_and_punctuation_only():
    assert plain_words("I got the letter.") == plain_words("i got  the letter") == "i got the letter"
    assert plain_words("It's nine-thirty!") == "it's nine thirty"
    assert error_rate([plain_words("I got the letter")], [plain_words("i got a letter today")]) == pytest.approx(2 / 4)


def test_label_scores_perfect_and_by_hand():
    perfect = label_scores(list(EMOTIONS), list(EMOTIONS), EMOTIONS)
    assert (perfect.accuracy, perfect.macro_f1, perfect.n, perfect.unparseable) == (1.0, 1.0, 5, 0)
    assert all(perfect.confusion[t][p] == (t == p) for t in EMOTIONS for p in EMOTIONS)
    mixed = label_scores(["happy", "happy", "sad", "sad"], ["happy", "sad", "sad", None], EMOTIONS)
    assert mixed.accuracy == 0.5 and mixed.unparseable == 1
    # happy: tp 1, fn 1 -> F1 2/3; sad: tp 1, fp 1, fn 1 -> F1 1/2
    assert mixed.macro_f1 == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert mixed.confusion["sad"]["sad"] == 1 and sum(mixed.confusion["sad"].values()) == 1  # None is no column


def test_label_scores_average_only_labels_that_occur():
    scores = label_scores(["a", "a", "b", "b"], ["a", "b", "b", "b"], ("a", "b", "c"))
    assert scores.accuracy == 0.75
    assert scores.macro_f1 == pytest.approx((2 / 3 + 0.8) / 2)  # "c" appears nowhere
    assert scores.confusion["a"] == {"a": 1, "b": 1, "c": 0}
    assert scores.recall() == {"a": 0.5, "b": 1.0, "c": None}


def test_label_scores_refuse_what_cannot_be_scored():
    with pytest.raises(ValueError, match="2 true labels but 1"):
        label_scores(["a", "b"], ["a"], ("a", "b"))
    with pytest.raises(ValueError, match="'x'"):
        label_scores(["a"], ["x"], ("a", "b"))

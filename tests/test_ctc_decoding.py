import math

import numpy as np
import pytest

import tiny
from blsp_emo.systems.asr import ALPHABET, LexiconRecognizer, with_word_lm
from blsp_emo.systems.ctc_decoding import END, WORD_LM_FILE, BeamOptions, LexiconDecoder, WordBigramLM

TEXTS = ["the meeting starts next week", "the letter came next week", "the meeting is over"]


def frames(text: str, confusions: dict[int, tuple[str, float]] | None = None) -> np.ndarray:
    """Log-probs a CTC model might emit for `text`: each character for one step then a blank, most
    mass on the right class. `confusions[i] = (char, p)` gives character i's step to `char` with p."""
    rows = []
    for i, c in enumerate(text):
        row = np.full(len(ALPHABET) + 1, 0.02 / len(ALPHABET))
        wrong, p = (confusions or {}).get(i, (None, 0.0))
        row[ALPHABET.index(c) + 1] = 0.98 - p
        if wrong is not None:
            row[ALPHABET.index(wrong) + 1] = p
        rows.append(row)
        blank = np.full(len(ALPHABET) + 1, 0.01 / len(ALPHABET))
        blank[0] = 0.99
        rows.append(blank)
    return np.log(np.array(rows) / np.array(rows).sum(1, keepdims=True))


def greedy(log_probs: np.ndarray) -> str:
    out, previous = [], 0
    for i in log_probs.argmax(1):
        if i != previous and i != 0:
            out.append(ALPHABET[i - 1])
        previous = i
    return "".join(out)


def test_bigram_probabilities_sum_to_one():
    lm = WordBigramLM.from_texts(TEXTS)
    for previous in ["<s>", "the", "next", "unseen"]:
        total = sum(math.exp(lm.log_prob(previous, w)) for w in lm.vocabulary | {END})
        assert total == pytest.approx(1.0, abs=1e-9)
    assert lm.log_prob("the", "meeting") > lm.log_prob("the", "week")  # seen beats unseen
    assert lm.log_prob("the", "banana") == float("-inf")


def test_decoder_spells_lexicon_words_where_greedy_misspells():
    decoder = LexiconDecoder(ALPHABET, WordBigramLM.from_texts(TEXTS))
    text = "the meeting starts next week"
    noisy = frames(text, {6: ("a", 0.6), 12: ("z", 0.55)})  # "meating", "ztarts"
    assert greedy(noisy) == "the meating ztarts next week"
    assert decoder.decode(noisy) == text
    assert decoder.decode(frames("the letter came next week")) == "the letter came next week"  # double letters


def test_decoder_handles_silence_and_empty_input():
    decoder = LexiconDecoder(ALPHABET, WordBigramLM.from_texts(TEXTS))
    silence = np.log(np.full((20, len(ALPHABET) + 1), 1e-6))
    silence[:, 0] = 0.0
    assert decoder.decode(silence) == ""
    assert decoder.decode(np.zeros((0, len(ALPHABET) + 1))) == ""


def test_lm_weight_moves_the_choice():
    """Acoustically "weak" is slightly ahead; the LM, which mostly saw "the week", overrules it."""
    lm = WordBigramLM.from_texts(["the week"] * 5 + ["a weak point"])
    ambiguous = frames("the week", {6: ("a", 0.55)})
    assert greedy(ambiguous) == "the weak"
    assert LexiconDecoder(ALPHABET, lm, BeamOptions(lm_weight=0.0, word_bonus=0.0)).decode(ambiguous) == "the weak"
    assert LexiconDecoder(ALPHABET, lm, BeamOptions(lm_weight=1.0)).decode(ambiguous) == "the week"


def test_saved_lm_loads_equal_and_a_folder_without_one_decodes_greedily(tmp_path):
    lm = WordBigramLM.from_texts(TEXTS)
    model = tiny.asr()
    assert with_word_lm(model, tmp_path) is model
    lm.save(tmp_path / WORD_LM_FILE)
    assert WordBigramLM.load(tmp_path / WORD_LM_FILE) == lm
    recognizer = with_word_lm(model, tmp_path)
    assert isinstance(recognizer, LexiconRecognizer)
    words = recognizer.transcribe(tiny.tone(1.0, 220)).split()
    assert set(words) <= lm.vocabulary  # whatever an untrained model hears, it is spelled in words


def test_empty_corpus_is_refused():
    with pytest.raises(ValueError, match="no transcripts"):
        WordBigramLM.from_texts([])

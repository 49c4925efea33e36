"""A reply ends before the first sentence it says again, or a phrase's third time in a row, and a
stream of it only grows."""

import random
from collections.abc import Iterator

import pytest

from blsp_emo.decoding.repeats import cut_repeats, phrase_loop
from blsp_emo.options import GenerationOptions
from blsp_emo.prompts import Turn
from blsp_emo.systems.base import Heard, LocalSystem

LOOP = "I'm sorry for your loss. I'm here for you. I'm sorry for your loss. I'm sorry for your loss."
TEXTS = [
    LOOP,
    "It costs 3.5 dollars. It costs 3.5 dollars!",
    "Hi. hi! There. Hi",
    "One. Two... One. Two.",
    "No repeats here. None at all.",
    "🌟🌟🌟🌟🌟🌟",
    "Great!!!! Really?",
    "Wait.... what ---- ok",
    "The receptionist said the receptionist said the receptionist said the receptionist said",
    "So so so so so much",
    "You can do it, you can. Thank you, thank you",
    "",
]


@pytest.mark.parametrize("text", TEXTS)
def test_the_cut_is_a_prefix_that_repeats_no_sentence(text):
    kept, _ = cut_repeats(text)
    assert text.startswith(kept) and cut_repeats(kept, final=True) == (kept, False)  # nothing left to cut
    sentences = [" ".join(s.lower().split()).rstrip(".!?…") for s in kept.replace("!", ".").split(". ")]
    assert len(sentences) == len(set(sentences))


@pytest.mark.parametrize("text", TEXTS)
def test_a_growing_reply_shows_a_growing_cut_and_ends_as_the_whole_is_cut(text):
    shown = [cut_repeats(text[:i])[0] for i in range(len(text) + 1)]
    assert all(later.startswith(earlier.rstrip()) for earlier, later in zip(shown, shown[1:]))  # spaces aside
    assert shown[-1] == cut_repeats(text)[0]


def test_what_is_cut_and_what_is_kept():
    assert cut_repeats(LOOP) == ("I'm sorry for your loss. I'm here for you.", True)
    assert cut_repeats("Yes. No. Yes.") == ("Yes. No.", False)  # the last sentence, not yet a whole repeat
    assert cut_repeats("I'm sorry for your loss. I")[0] == "I'm sorry for your loss."  # held back: it may repeat
    assert cut_repeats("I'm sorry for your loss. I'm glad")[0].endswith("I'm glad")  # it did not: shown
    assert cut_repeats("It costs 3.5 dollars. It is 3.5 dollars.")[1] is False  # a decimal point ends nothing
    assert cut_repeats("Happy birthday 🌟🌟🌟🌟🌟🌟") == ("Happy birthday 🌟🌟🌟", True)  # a symbol's loop
    assert cut_repeats("Wow!!! Wait.... what ---- ok") == ("Wow!!! Wait.... what ---- ok", False)


def test_a_phrase_loop_ends_after_its_first_time_and_a_phrase_said_twice_is_speech():
    loop = "The receptionist said the receptionist said the receptionist said the"
    assert cut_repeats(loop) == ("The receptionist said", True)
    assert cut_repeats("Thank you, thank you, thank you ") == ("Thank you", True)
    assert cut_repeats("so so so so ") == ("so", True)  # one word: four times in a row
    speech = "It was a long, long way. Ha ha ha. Thank you, thank you."
    assert cut_repeats(speech, final=True) == (speech, False)
    # Words that may yet become a loop wait while the reply goes on, and are shown once it ends.
    assert cut_repeats("You can do it, you can.") == ("You can do it,", False)
    assert cut_repeats("You can do it, you can.", final=True) == ("You can do it, you can.", False)
    assert cut_repeats("I said the rec")[0] == "I said the rec"  # "rec" may still become "recipe"
    assert cut_repeats("the receptionist said the recep")[0] == "the receptionist said"
    assert phrase_loop("no no no no and then it ended") == (len("no"), None)  # a hold only where the text ends


def _random_reply(rng: random.Random) -> str:
    """Short replies from a few words, with phrases and sentences said again at random."""
    words = ["the", "receptionist", "said", "you", "can", "do", "it", "so", "I'm", "sorry."]
    out: list[str] = []
    while len(out) < rng.randint(3, 30):
        if out and rng.random() < 0.3:  # say the last few words again
            n = rng.randint(1, min(4, len(out)))
            out += out[-n:] * rng.randint(1, 3)
        else:
            out.append(rng.choice(words))
    return " ".join(out)


@pytest.mark.parametrize("seed", range(40))
def test_random_replies_stream_as_a_growing_prefix_that_ends_in_no_loop(seed):
    text = _random_reply(random.Random(seed))
    shown = [cut_repeats(text[:i])[0] for i in range(len(text) + 1)]
    assert all(later.startswith(earlier.rstrip()) for earlier, later in zip(shown, shown[1:])), text
    end = cut_repeats(text, final=True)[0]
    assert end.startswith(shown[-1]) and text.startswith(end)  # the end shows what waited, never less
    keys = [w.strip(".,").lower() for w in end.split()]
    for n in range(1, len(keys)):  # no loop survives: a phrase twice and a word more, a word four times
        span = max(2 * n + 1, 4)
        assert not any(keys[i : i + span - n] == keys[i + n : i + span] for i in range(len(keys) - span + 1)), end


class LoopingSystem(LocalSystem):
    """Replies with LOOP's tokens over and over; counts what it decoded and whether it was stopped."""

    name, description, window_seconds = "looping", "a model stuck in a loop", 30.0

    def __init__(self, tokenizer, loop: str = LOOP):
        self.tokenizer, self.loop, self.decoded, self.closed = tokenizer, loop, 0, False

    def _answer(self, turn: Turn, history, options, seed) -> tuple[Heard, Iterator[int]]:
        ids = self.tokenizer.encode(" " + self.loop)

        def tokens():
            try:
                for i in range(options.max_new_tokens):
                    self.decoded += 1
                    yield ids[i % len(ids)]
            finally:
                self.closed = True

        return Heard(), tokens()


def test_a_looping_model_is_stopped_at_its_first_repeat(tokenizer):
    system = LoopingSystem(tokenizer)
    replies = list(system.stream(text="hello", options=GenerationOptions(max_new_tokens=200, greedy=True)))
    assert replies[-1].done and replies[-1].text == "I'm sorry for your loss. I'm here for you."
    upto_repeat = len(tokenizer.encode(" I'm sorry for your loss. I'm here for you. I'm sorry for your loss. I"))
    assert system.closed and system.decoded <= upto_repeat + 2  # the decoding underneath stopped there
    texts = [r.text for r in replies]
    assert all(later.strip().startswith(earlier.strip()) for earlier, later in zip(texts, texts[1:]))
    assert all("loss. I'm sorry" not in t for t in texts)  # the repeat was never shown


def test_a_model_looping_inside_a_sentence_is_stopped_after_the_phrase(tokenizer):
    system = LoopingSystem(tokenizer, "The receptionist said the receptionist said")
    replies = list(system.stream(text="hello", options=GenerationOptions(max_new_tokens=200, greedy=True)))
    assert replies[-1].done and replies[-1].text == "The receptionist said"
    third_begun = len(tokenizer.encode(" The receptionist said the receptionist said the "))
    assert system.closed and system.decoded <= third_begun + 2  # stopped there, not at 200 tokens
    texts = [r.text.strip() for r in replies]  # the stream keeps the first token's space; the end strips it
    assert all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:]))
    assert all("said the receptionist said" not in t for t in texts)  # the second time was never shown


def test_stop_repeats_off_decodes_to_max_new_tokens(tokenizer):
    system = LoopingSystem(tokenizer)
    options = GenerationOptions(max_new_tokens=60, greedy=True, stop_repeats=False)
    reply = list(system.stream(text="hello", options=options))[-1]
    assert system.decoded == 60 and reply.text.count("I'm sorry for your loss.") >= 2


def test_the_command_line_keeps_repeats_only_when_asked():
    from blsp_emo.__main__ import _options, build_parser

    parse = build_parser().parse_args
    assert _options(parse(["respond", "clip.wav"])).stop_repeats
    assert not _options(parse(["respond", "clip.wav", "--keep-repeats"])).stop_repeats
    assert not _options(parse(["chat", "--keep-repeats"])).stop_repeats

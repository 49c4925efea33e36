"""The ChatML layout and prompt strings of the reference, and how pieces become ids."""

import pytest

from blsp_emo.model.tokenizer import IGNORE_INDEX
from blsp_emo.prompts import (
    END_OF_TEXT,
    IM_END,
    SER_INSTRUCTION,
    STAGE2_TEACHER_INSTRUCTION,
    SYSTEM_EMPATHETIC,
    SYSTEM_PLAIN,
    Speech,
    Turn,
    chat_pieces,
    instruction_pieces,
    render,
    response_pieces,
)


def test_reference_strings():
    assert SYSTEM_PLAIN == "You are a helpful assistant."
    assert SYSTEM_EMPATHETIC.endswith("Your response should fulfill requests with empathy toward user's emotion tone.")
    assert SER_INSTRUCTION.endswith("happy, or surprise.\n\nSpeech: ")
    assert STAGE2_TEACHER_INSTRUCTION.format(emotion="angry").startswith(
        "Continue the following sentence that reflects a 'angry' emotion tone"
    )


def test_chat_layout_with_speech_turn_and_history():
    turns = [
        Turn("user", "hi", audio=None),
        Turn("assistant", "hello"),
        Turn("user", audio=__import__("numpy").ones(10)),
    ]
    text = render(chat_pieces(SYSTEM_PLAIN, turns))
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
        "<|im_start|>user\n<speech:0><|im_end|>\n<|im_start|>assistant\n"
    )


def test_training_layout():
    text = render(instruction_pieces(SYSTEM_PLAIN, "Continue: ", Speech(0)) + response_pieces("ok.", False))
    assert text.endswith(
        "<|im_start|>user\nContinue: <speech:0><|im_end|>\n<|im_start|>assistant\nok.<|im_end|>\n<|endoftext|>"
    )
    assert render(response_pieces("cut", early_stop=True)) == "cut"


def test_special_strings_in_user_text_stay_text(tokenizer):
    ids = tokenizer.encode("say <|im_end|> please")
    assert tokenizer.special_ids[IM_END] not in ids
    assert tokenizer.decode(ids) == "say <|im_end|> please"


def test_pieces_expand_speech_and_label_only_the_target(tokenizer):
    pieces = instruction_pieces(SYSTEM_PLAIN, "", Speech(0))
    enc = tokenizer.encode_pieces(pieces, [7], target=response_pieces("I see.", False))
    assert sum(enc.speech_mask) == 7
    n_target = len(tokenizer.encode("I see.")) + 3
    assert [lab for lab in enc.labels if lab != IGNORE_INDEX] == enc.input_ids[-n_target:]
    assert enc.input_ids[-1] == tokenizer.special_ids[END_OF_TEXT]
    with pytest.raises(ValueError, match="speech slot 0 but only 0 clip"):
        tokenizer.encode_pieces(pieces, [])


def test_turn_roles_are_checked():
    with pytest.raises(ValueError, match="'user' or 'assistant'"):
        Turn("system", "x")


def test_a_character_cut_between_tokens_is_held_back_until_it_is_whole(tokenizer):
    ids = tokenizer.encode("a 🌟 b")
    texts = [tokenizer.decode(ids[:i]) for i in range(len(ids) + 1)]
    assert "\ufffd" not in "".join(texts) and texts[-1] == "a 🌟 b"
    assert all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:]))  # a stream only grows

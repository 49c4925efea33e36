"""Every system answers through one interface; history is an argument, never shared state."""

import threading

import pytest

import tiny
from blsp_emo import EMOTIONS, GenerationOptions, Reply, available_systems, load_system
from blsp_emo.audio import SilentAudioError
from blsp_emo.model.checkpoint import ModelNotFoundError
from blsp_emo.prompts import SYSTEM_EMPATHETIC
from blsp_emo.systems import BlspSystem

GREEDY = GenerationOptions(greedy=True, max_new_tokens=12)


def test_registry_names_and_unknown_name_error():
    assert available_systems() == ["blsp-emo", "blsp", "cascade", "cascade-ser"]
    with pytest.raises(ValueError, match=r"unknown system 'gpt'; available: \['blsp-emo'"):
        load_system("gpt")


@pytest.mark.parametrize("name", ["blsp-emo", "blsp", "cascade", "cascade-ser"])
def test_every_system_returns_a_complete_reply(bundle_dir, name):
    system = load_system(name, model=bundle_dir)
    reply = system.respond(tiny.tone(3.0), options=GREEDY)
    assert isinstance(reply, Reply) and reply.done and reply.system == name
    assert 0 < len(reply.token_ids) <= 12 and reply.timings.total_s >= reply.timings.first_token_s > 0
    hears_emotion = name in ("blsp-emo", "cascade-ser")
    if hears_emotion:
        assert list(reply.emotion_scores) == list(EMOTIONS)
        assert sum(reply.emotion_scores.values()) == pytest.approx(1.0, abs=1e-5)
        assert reply.emotion == max(reply.emotion_scores, key=reply.emotion_scores.get)
    else:
        assert reply.emotion is None and reply.emotion_scores == {}
    assert (reply.transcript is None) == name.startswith("blsp")
    assert set(reply.to_json()) == {"system", "emotion", "emotion_scores", "reply", "transcript", "timings"}


def test_components_are_loaded_once_and_shared(bundle_dir):
    a, b = load_system("blsp-emo", model=bundle_dir), load_system("cascade", model=bundle_dir)
    assert a.model.llm is b.llm


def test_cascade_ser_tells_the_llm_the_answered_turns_emotion_in_the_system_prompt(bundle_dir):
    from blsp_emo.prompts import Turn, render, told_emotion

    plain, told = load_system("cascade", model=bundle_dir), load_system("cascade-ser", model=bundle_dir)
    turns = (
        Turn("user", "It broke.", emotion="sad"),
        Turn("assistant", "Oh no."),
        Turn("user", "Hi!", emotion="happy"),
    )
    text = render(told.prompt_pieces(turns))
    assert told_emotion(told.system_prompt, "happy") in text and "sad" not in text  # the answered turn's only
    assert text.replace(told_emotion(told.system_prompt, "happy"), told.system_prompt) == render(
        plain.prompt_pieces(turns)
    )  # the transcripts go in unchanged: the emotion is the only difference


def test_missing_parts_say_what_to_pass(model_dir, tmp_path):
    with pytest.raises(ModelNotFoundError, match="needs an ASR model: pass --asr DIR"):
        load_system("cascade", model=model_dir)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_system("blsp-emo", model=tmp_path / "nope")


def test_hub_id_offline_fails_at_once_naming_the_id():
    with pytest.raises(ModelNotFoundError, match="cannot fetch 'cwang621/blsp-emo'.*HF_HUB_OFFLINE.*--model DIR"):
        load_system("blsp-emo", model="cwang621/blsp-emo")


def test_stream_grows_then_completes(model_and_tokenizer):
    model, tok = model_and_tokenizer
    system = BlspSystem("blsp-emo", "", model, tok, SYSTEM_EMPATHETIC, True)
    snapshots = list(system.stream(tiny.tone(2.0), options=GREEDY))
    assert [s.done for s in snapshots] == [False] * (len(snapshots) - 1) + [True]
    ids = [s.token_ids for s in snapshots[:-1]]
    assert all(later[: len(earlier)] == earlier for earlier, later in zip(ids, ids[1:]))
    assert snapshots[0].emotion == snapshots[-1].emotion  # emotion is known before the first token


def test_greedy_is_deterministic_and_sampling_follows_the_seed(model_and_tokenizer):
    model, tok = model_and_tokenizer
    system = BlspSystem("blsp-emo", "", model, tok, SYSTEM_EMPATHETIC, True)
    clip = tiny.tone(2.0)
    assert system.respond(clip, options=GREEDY).token_ids == system.respond(clip, options=GREEDY).token_ids
    sample = GenerationOptions(temperature=1.5, top_p=1.0, max_new_tokens=12, seed=7)
    first = system.respond(clip, options=sample)
    assert first.seed == 7 and system.respond(clip, options=sample).token_ids == first.token_ids
    other = [
        system.respond(clip, options=GenerationOptions(temperature=1.5, top_p=1.0, max_new_tokens=12, seed=s)).token_ids
        for s in range(5)
    ]
    assert len(set(other)) > 1


def test_history_changes_the_answer_and_is_not_kept(model_and_tokenizer):
    model, tok = model_and_tokenizer
    system = BlspSystem("blsp-emo", "", model, tok, SYSTEM_EMPATHETIC, True)
    clip = tiny.tone(2.0, 150.0)
    fresh = system.respond(clip, options=GREEDY)
    history = system.respond(tiny.tone(1.0, 400.0), options=GREEDY).turns(tiny.tone(1.0, 400.0))
    with_history = system.respond(clip, history, GREEDY)
    assert system.respond(clip, options=GREEDY).token_ids == fresh.token_ids  # nothing leaked into the system
    assert with_history.emotion_scores == pytest.approx(fresh.emotion_scores, abs=1e-5)  # emotion of *this* clip
    typed = system.respond(text="hello there", history=history, options=GREEDY)
    assert typed.emotion is None and typed.done


def test_concurrent_sessions_do_not_cross_talk(model_and_tokenizer):
    """Threads answering different conversations at once get what each gets alone."""
    model, tok = model_and_tokenizer
    system = BlspSystem("blsp-emo", "", model, tok, SYSTEM_EMPATHETIC, True)
    clips = [tiny.tone(1.0 + 0.5 * i, 150.0 + 60 * i) for i in range(4)]
    alone = [system.respond(c, options=GREEDY).token_ids for c in clips]
    together = [None] * 4

    def run(i):
        together[i] = system.respond(clips[i], options=GREEDY).token_ids

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert together == alone


def test_bad_audio_and_empty_text_are_refused(model_and_tokenizer):
    model, tok = model_and_tokenizer
    system = BlspSystem("blsp-emo", "", model, tok, SYSTEM_EMPATHETIC, True)
    with pytest.raises(SilentAudioError):
        system.respond(tiny.tone(2.0) * 0)
    with pytest.raises(ValueError, match="empty"):
        system.respond(text="   ")
    with pytest.raises(ValueError, match="exactly one"):
        system.respond()


def test_min_new_tokens_keeps_a_reply_from_being_empty():
    """When the stop token is the model's favourite at every step, min_new_tokens=0 gives an empty
    reply and the released default of 1 gives exactly one token."""
    from types import SimpleNamespace

    import torch

    from blsp_emo.decoding.generation import decode

    stop = 3
    logits = torch.tensor([[0.0, 1.0, 2.0, 9.0]])  # stop (3) first, then token 2

    def llm(**kwargs):
        return SimpleNamespace(logits=logits[:, None, :])

    def run(**kw):
        return list(
            decode(llm, logits, None, GenerationOptions(greedy=True, max_new_tokens=5, **kw), frozenset({stop}), 0)
        )

    assert run(min_new_tokens=0) == []
    assert run() == [2]
    assert run(min_new_tokens=3) == [2, 2, 2]


def test_semantic_only_system_refuses_a_stage2_model(model_dir, bundle_dir):
    with pytest.raises(ValueError, match="'blsp' is the stage-1 model.*stage-2 LoRA"):
        load_system("blsp", model=model_dir)
    assert load_system("blsp", model=bundle_dir).model.lora is None

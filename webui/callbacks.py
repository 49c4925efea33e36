"""The page's event handlers (`Callbacks`) and a visitor's conversation (`Exchange`), kept in `gr.State`.

Models are shared read-only by every visitor; a handler gets the visitor's state in and gives it back
out. `webui.demo_tabs` lays out the components these handlers write to (`Callbacks.ui`).
"""

from __future__ import annotations

import html
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np

from blsp_emo import GenerationOptions, Reply, SpokenDialogueSystem, load_audio
from blsp_emo.audio import AudioError, to_pcm16
from blsp_emo.serving.protocol import WorkerError
from blsp_emo.systems import paced
from blsp_emo.systems.base import PromptTooLongError, TextTooLongError, text_problem
from blsp_emo.tts import NullSynthesizer
from blsp_emo.voice_style import DEFAULT_POLICY, POLICIES, style_for
from webui import evidence_view, storage
from webui.live_speech import LIVE, TurnSpeech, VoiceChoice, prune_streams, style_note, voice_last

try:  # ZeroGPU Spaces lend a GPU per call to functions marked with spaces.GPU; elsewhere a no-op
    from spaces import GPU as _gpu
except ImportError:

    def _gpu(fn):
        return fn


HEARD_EXCHANGES = 4  # earlier turns stay on screen; every heard clip is encoded again each turn
# Gradio runs an event's validator when the request arrives, outside the queue and its concurrency
# limit (in the server's thread pool, 40 threads): decoding is limited here instead. A clip decodes
# to at most 27 MB at its peak (8 channels at 192 kHz, 29 s; blsp_emo.audio.MAX_SAMPLE_RATE), so this
# bounds decoding at about 110 MB.
DECODES_AT_ONCE = 4
# Clips the validator decoded, kept for the handler that runs next, so an upload is decoded once.
# Each is at most 30 s of 16 kHz float32 (1.9 MB).
DECODED_KEPT = 16
EMOJI = {"neutral": "😐", "happy": "😊", "angry": "😠", "sad": "😢", "surprise": "😮"}
NO_MODEL = (
    "No model is loaded, so nothing can answer yet. Build the demo-scale models with `python -m train demo` "
    "(they land in `assets/models/`), or start with `python app.py --model DIR` (a trained BLSP-Emo folder or "
    "bundle) — `--model cwang621/blsp-emo` where the hub and a GPU are available."
)
NO_AUDIO = "No audio: record (allow the microphone; it needs https or localhost) or upload a clip."
NO_INPUT = "Nothing to send: record (allow the microphone; it needs https or localhost), upload a clip, or type."


@dataclass(frozen=True)
class Exchange:
    """One user turn and its reply: what the chat shows, and what the system hears again next turn."""

    shown: object  # the user's bubble: a file dict for speech, the text when typed
    audio: np.ndarray | None  # (T,) 16 kHz, a spoken turn
    text: str | None  # a typed turn
    reply: Reply | None  # None until answered
    card: str = ""  # the turn's card as the page showed it (put back when a later turn fails)
    interrupted: bool = False  # the reply so far, of a turn still going or stopped by the visitor's speech
    evidence: str = ""  # the evidence behind its emotion as the page showed it (webui/evidence_view.py)


Chat = tuple  # of Exchange: a visitor's conversation, immutable, kept in gr.State


def _fail(message: str) -> gr.Error:
    return gr.Error(html.escape(message, quote=False), title="Please check your input", print_exception=False)


def _stopped(error: WorkerError) -> gr.Error:
    """A model worker's end, as the visitor reads it: Gradio shows the message of a gr.Error only (any
    other error reaches the page as a bare "Error"), and the pool's line says what to do."""
    return gr.Error(html.escape(str(error), quote=False), title="The model stopped", print_exception=False)


def _options(temperature, top_p, max_tokens, greedy, seed) -> GenerationOptions:
    try:
        return GenerationOptions(
            max_new_tokens=int(max_tokens),
            greedy=bool(greedy),
            temperature=float(temperature),
            top_p=float(top_p),
            seed=None if seed in (None, "") else int(seed),
        )
    except ValueError as e:
        raise _fail(str(e)) from e


def _emotion(reply: Reply | None, typed: bool = False) -> dict | str | None:
    """The emotion label's value: the scores heard, or why there are none (None: nothing said yet).

    Always a value, never a component: a component in an update makes Gradio rebuild its config and
    API schema, which costs the server more than a demo-scale reply (docs/serving.md).
    """
    if reply is None:
        return None
    if reply.emotion_scores:
        return {f"{EMOJI.get(k, '')} {k}": v for k, v in reply.emotion_scores.items()}
    return "⌨️ typed: no tone to hear" if typed else "🔇 this system hears no tone"


def _transcript(reply: Reply) -> gr.Textbox:
    return gr.Textbox(reply.transcript, visible=reply.transcript is not None)


def _heard_outputs(ui: SimpleNamespace, reply: Reply, typed: bool, before: Exchange | None) -> dict:
    """The emotion and transcript outputs of a turn, where the page shows `before`'s (None: a new chat).

    The transcript box is a component only when it must appear or hide (a cascade's turn after
    another system's); otherwise both are plain values, which Gradio sends without rebuilding.
    """
    shown_visible = before is not None and before.reply.transcript is not None
    same_visibility = (reply.transcript is not None) == shown_visible
    transcript = reply.transcript if same_visibility else _transcript(reply)
    return {ui.emotion: _emotion(reply, typed), ui.transcript: transcript}


def _heard_values(ui: SimpleNamespace, reply: Reply, typed: bool) -> dict:
    """The emotion and transcript as plain values, for the updates after a turn's first."""
    return {ui.emotion: _emotion(reply, typed), ui.transcript: reply.transcript}


def _shown_outputs(ui: SimpleNamespace, shown: Exchange | None) -> dict:
    """The emotion, transcript and card outputs as `shown` left them (None: as a new chat shows them)."""
    if shown is None:
        return {ui.emotion: None, ui.transcript: gr.Textbox(None, visible=False), ui.card: "", ui.evidence: ""}
    return {
        ui.emotion: _emotion(shown.reply, shown.audio is None),
        ui.transcript: _transcript(shown.reply),
        ui.card: shown.card,
        ui.evidence: shown.evidence,
    }


def _timings(reply: Reply, first_audio_s: float | None = None) -> str:
    first = "" if reply.timings.first_token_s is None else f"first token {reply.timings.first_token_s:.2f} s · "
    audio = "" if first_audio_s is None else f"first audio {first_audio_s:.2f} s · "
    return f"{first}{audio}total {reply.timings.total_s:.2f} s · {len(reply.token_ids)} tokens"


def _card(
    system: SpokenDialogueSystem,
    reply: Reply,
    options: GenerationOptions,
    model_label: str,
    first_audio_s: float | None = None,
    heard: str = "",
) -> str:
    """The turn's card; `first_audio_s` counts from the end of the visitor's speech (hands-free) or from
    Send, `heard` says how a hands-free turn was sent."""
    decoding = "greedy" if options.greedy else f"sampling T={options.temperature:g} top-p={options.top_p:g}"
    return (
        f"**{system.name}** — {system.description}  \nmodel `{model_label}` · seed `{reply.seed}` · "
        f"{decoding} · ≤{options.max_new_tokens} tokens  \n{_timings(reply, first_audio_s)}{heard}"
    )


def _heard(reply: Reply) -> str:
    parts = [f"{EMOJI.get(reply.emotion, '')} heard as *{reply.emotion}*"] if reply.emotion else []
    if reply.transcript is not None:
        parts.append(f"“{reply.transcript}”")
    return " · ".join(parts)


def _validation(first_input_problem: str | None, n_inputs: int) -> list[dict]:
    """A validator's answer: the problem (if any) is shown on the event's first input, an audio input."""
    ok = first_input_problem is None
    return [gr.validate(ok, first_input_problem or ""), *[gr.validate(True, "")] * (n_inputs - 1)]


def _messages(chat: Chat, pending: tuple[object, Reply] | None = None) -> list[dict]:
    exchanges = [(ex.shown, ex.reply, ex.interrupted) for ex in chat] + ([(*pending, False)] if pending else [])
    out = []
    for shown, reply, interrupted in exchanges:
        heard = _heard(reply) if isinstance(shown, dict) else ""
        out.append({"role": "user", "content": [shown, heard] if heard else shown})
        text = reply.text if reply.done or reply.text else "…"
        out.append({"role": "assistant", "content": f"{text} — *(interrupted)*" if interrupted else text})
    return out


def _history(chat: Chat) -> list:
    """The turns the system hears again: the latest few, as the released demo drops the oldest to fit."""
    return [turn for ex in chat[-HEARD_EXCHANGES:] for turn in ex.reply.turns(ex.audio, ex.text)]


class Callbacks:
    """Every event handler: models are read, never written; per-visitor state comes in and goes out."""

    def __init__(
        self, systems, synthesizer, model_label: str, options: GenerationOptions, stream_interval=0.0, evidence=None
    ):
        self.systems, self.synthesizer, self.model_label, self.options = systems, synthesizer, model_label, options
        self.stream_interval, self.evidence = stream_interval, evidence  # evidence: an `evidence_view.Read`
        self.ui = SimpleNamespace()  # the components handlers write to, filled in while the page is built
        self._decoded: OrderedDict[tuple, np.ndarray] = OrderedDict()  # (path, size, mtime, window) -> clip
        self._decoded_lock = threading.Lock()
        self._decoding = threading.BoundedSemaphore(DECODES_AT_ONCE)
        self.files = storage.FILES  # uploads used and replies made, deleted when their session ends
        self.demo = None  # the page, once built: its streamed replies are pruned per session

    def system(self, name: str | None) -> SpokenDialogueSystem:
        if not self.systems:
            raise gr.Error(NO_MODEL, title="No model loaded", print_exception=False)
        if name not in (None, "", *self.systems):
            raise _fail(f"unknown system {name!r}; available: {list(self.systems)}")
        return self.systems[name] if name else next(iter(self.systems.values()))

    def load(self, path: str | None, system: SpokenDialogueSystem) -> np.ndarray:
        """The clip at `path` for `system`, decoded once per request: the validator decodes it and the
        handler after it gets the same waveform (the clip is keyed by path, size, mtime and window)."""
        if path is None:
            raise _fail(NO_AUDIO)
        self.files.claim(path)
        try:
            stat = os.stat(path)
            key = (path, stat.st_size, stat.st_mtime_ns, system.window_seconds)
        except OSError:
            key = None  # load_audio names the problem
        with self._decoded_lock:
            if key in self._decoded:
                self._decoded.move_to_end(key)
                return self._decoded[key]
        try:
            with self._decoding:
                wave = load_audio(path, max_seconds=system.window_seconds, name=Path(path).name)
        except AudioError as e:
            raise _fail(str(e)) from e
        if key is not None:
            with self._decoded_lock:
                self._decoded[key] = wave
                while len(self._decoded) > DECODED_KEPT:
                    self._decoded.popitem(last=False)
        return wave

    def audio_problem(self, audio, system_names: Sequence[str | None]) -> str | None:
        """What is wrong with a clip for these systems, or None; validators show it on the audio input."""
        try:
            for name in system_names or [None]:
                self.load(audio, self.system(name))
        except gr.Error as e:
            return e.message
        return None

    def check_turn(self, audio, text, chat, system_name, *settings) -> list[dict]:
        n_inputs = 4 + len(settings)
        if audio is None:  # typed (a clip beside text is what is sent); nothing at all is a notice from `talk`
            problem = text_problem(text)
            return [
                gr.validate(True, ""),
                gr.validate(problem is None, problem or ""),
                *_validation(None, n_inputs - 2),
            ]
        return _validation(self.audio_problem(audio, [system_name]), n_inputs)

    def check_respond(self, audio, system_name=None) -> list[dict]:
        return _validation(self.audio_problem(audio, [system_name]), 2)

    @_gpu
    def talk(self, audio, text, chat: Chat, system_name, *settings: object, voice: VoiceChoice | None = None):
        """A turn sent with Send (or Enter): the clip, else the typed text. `settings` are the generation
        settings (`_options`), then the page's choice of spoken reply (`VoiceChoice`; none for an API
        caller, whose turn is not spoken)."""
        settings, voice = voice_last(settings, voice)
        started = time.monotonic()
        text = (text or "").strip()
        if not self.systems or (audio is None and not text):  # a notice; the page stays as it was
            gr.Warning(NO_INPUT if self.systems else NO_MODEL)
            yield gr.skip()
            return
        system, options = self.system(system_name), _options(*settings)
        if audio is not None:
            wave, typed, shown = self.load(audio, system), None, {"path": audio}
        elif problem := text_problem(text):
            raise _fail(problem)
        else:
            wave, typed, shown = None, text, text
        user = Exchange(shown, wave, typed, None)
        yield from self._turn(system, chat, user, options, chat[-1] if chat else None, voice, started)

    @_gpu
    def regenerate(self, chat: Chat, system_name, *settings: object, voice: VoiceChoice | None = None):
        settings, voice = voice_last(settings, voice)
        if not chat:
            gr.Warning("Nothing to regenerate yet: say something first.")
            yield gr.skip()
            return
        yield from self._turn(self.system(system_name), chat[:-1], chat[-1], _options(*settings), chat[-1], voice)

    def _turn(
        self,
        system,
        chat: Chat,
        user: Exchange,
        options: GenerationOptions,
        shown: Exchange | None,
        voice: VoiceChoice | None = None,
        started: float | None = None,
        heard_note: str = "",
    ):
        """Answer `user` after `chat`; `shown` is the exchange whose emotion, transcript and card the page shows.

        Every update gives every output a value: Gradio turns an output left out of an update into an
        empty component update, which rebuilds that component and its API schema (more than a
        demo-scale token costs; docs/serving.md). The card shows the reply's timings as it grows. Each
        sentence is spoken as soon as it is complete (`voice`), its audio sent to the live player; the
        state holds the reply so far, marked interrupted until it is done, so that a turn stopped by
        the visitor's speech (barge-in) stays in the conversation as far as it went.
        """
        ui, reply, sent, typed = self.ui, None, False, user.audio is None
        before = (*chat, user) if user is shown else chat  # the state as it stood (a regenerated turn is in it)
        started = time.monotonic() if started is None else started
        # only a page's turn can be spoken over (an API caller's turns keep running side by side, as before)
        speech = TurnSpeech(self.synthesizer, self.files, voice, started, LIVE if voice is not None else None)
        prune_streams(self.demo, speech.session)
        replies = paced(
            system.stream(audio=user.audio, history=_history(chat), options=options, text=user.text),
            self.stream_interval,
        )
        try:
            for i, reply in enumerate(replies):
                # what was heard is known before the first token: only the first update may change the boxes
                heard = _heard_outputs(ui, reply, typed, shown) if i == 0 else _heard_values(ui, reply, typed)
                chunk = speech.feed(reply.text, reply.done, reply.emotion)
                card = _card(system, reply, options, self.model_label, speech.first_audio_s, heard_note)
                update = {
                    ui.chatbot: _messages(chat, (user.shown, reply)),
                    ui.chat: (*chat, replace(user, reply=reply, card=card, interrupted=True)),
                    **heard,
                    ui.card: card,
                    ui.evidence: evidence_view.pending(self.evidence, system, user.audio, reply),
                    ui.reply_stream: chunk,
                    ui.reply_audio: None,
                    ui.style: "",
                }
                if speech.cancelled:  # the visitor spoke over it (or a new turn began): stop here
                    return
                if not reply.done:  # the end goes out below, with the answered turn in the state
                    sent = True
                    yield update
        except Exception as e:
            if sent:  # the page shows the failed turn: put back what it showed before (as the next turn assumes)
                yield {ui.chatbot: _messages(before), ui.chat: before, **_shown_outputs(ui, shown)}
            if isinstance(e, (TextTooLongError, PromptTooLongError)):
                raise _fail(str(e)) from e
            if isinstance(e, WorkerError):
                raise _stopped(e) from e
            raise
        finally:
            replies.close()  # a stopped turn stops its decoding now, not when collected
            speech.close()
        if reply is None:
            raise RuntimeError(f"{system.name} streamed no reply")
        answered = replace(user, reply=reply, card=update[ui.card])
        spoken, note = speech.finish()
        done = {ui.chatbot: _messages((*chat, answered)), ui.chat: (*chat, answered), ui.reply_audio: spoken}
        yield (update := {**update, **done, ui.style: note})
        if update[ui.evidence]:  # read after the reply and its voice, never before them
            answered = replace(answered, evidence=evidence_view.fetch(self.evidence, system, user.audio, reply))
            if not speech.cancelled:  # a newer turn of the visitor's owns the page by now
                yield {**update, ui.chat: (*chat, answered), ui.evidence: answered.evidence, ui.reply_stream: None}

    def open_session(self) -> VoiceChoice:
        """The page's load event: the request itself has Gradio build the session (see `build_demo`); the
        page's visitor hears replies spoken, in the settings' default voice."""
        return VoiceChoice()

    def voice_choice(self, enabled: bool, policy: str) -> VoiceChoice:
        return VoiceChoice(bool(enabled), policy if policy in POLICIES else DEFAULT_POLICY)

    def clear_sent(self, chat: Chat):
        """After a turn: empty the input it used, keep the other (a clip beside typed text was not sent)."""
        spoken = bool(chat) and chat[-1].audio is not None
        return (None, gr.skip()) if spoken else (gr.skip(), "")

    def clear(self):
        ui = self.ui
        cleared = {ui.chatbot: [], ui.chat: (), ui.reply_audio: None, ui.reply_stream: None, ui.style: "", ui.vad: None}
        return {**cleared, **_shown_outputs(ui, None)}

    def start_compare(self, audio, seed):
        """Fix one seed for every column, so the columns differ only by system (the clip is validated)."""
        try:
            return GenerationOptions(seed=None if seed in (None, "") else int(seed)).resolved_seed()
        except ValueError as e:
            raise _fail(str(e)) from e

    @_gpu
    def answer(self, name: str, audio, seed: int, *settings: object, voice: VoiceChoice | None = None):
        """One callback for every Compare column: which system answers is data, never a branch. Each
        sentence is spoken as soon as it is complete, as on Talk, so every column has its time to first
        audio (counted from the column's start); the whole reply's audio comes with the end."""
        started = time.monotonic()
        settings, voice = voice_last(settings, voice)
        system = self.system(name)
        options = replace(_options(*settings), seed=seed)
        speech = TurnSpeech(self.synthesizer, self.files, voice, started, turns=None)
        replies = paced(system.stream(audio=self.load(audio, system), options=options), self.stream_interval)
        try:
            for i, reply in enumerate(replies):  # every output each time, as in Callbacks._turn
                heard = (_emotion(reply), _transcript(reply) if i == 0 else reply.transcript)
                speech.feed(reply.text, reply.done, reply.emotion)
                timing = _timings(reply, speech.first_audio_s) + f" · seed `{reply.seed}`"
                spoken = speech.finish() if reply.done else (None, "")
                yield (*heard, reply.text, timing, *spoken, reply if reply.done else None)
        except WorkerError as e:
            raise _stopped(e) from e
        finally:
            replies.close()

    def voice_typed(self, text: str, emotion: str | None, policy: str = DEFAULT_POLICY):
        """The Voices tab: typed text, bounded as a typed turn is (speech of 100,000 characters is hours long)."""
        if problem := text_problem(text):
            raise _fail(problem)
        return self.voice(text, emotion, policy=policy)

    def voice(self, text: str, emotion: str | None, enabled: bool = True, policy: str = DEFAULT_POLICY):
        """`text` spoken in the style for a user heard as `emotion` under the voice `policy` (soothe or
        mirror), and a line naming the style and why."""
        if policy not in POLICIES:
            raise _fail(f"unknown reply voice {policy!r}; choose one of {list(POLICIES)}")
        if not enabled or isinstance(self.synthesizer, NullSynthesizer):
            return None, "🔇 Spoken replies are off" + (
                " (Settings)." if not enabled else " (started with --tts none)."
            )
        audio = self.synthesizer.synthesize(text, style_for(emotion, policy))
        # a file of its own per reply: Gradio would write a waveform to a name made from its samples,
        # rewriting it in place while another visitor with the same reply downloads it
        shown = None if audio is None else self.files.write_wav(audio[0], to_pcm16(audio[1]))
        return shown, style_note(emotion, policy)

    @_gpu
    def respond(self, audio, system_name=None):
        """The `/respond` API: the `python -m blsp_emo respond --json` object and the spoken reply."""
        system = self.system(system_name)
        try:
            reply = system.respond(audio=self.load(audio, system), options=self.options)
        except WorkerError as e:
            raise _stopped(e) from e
        spoken, _ = self.voice(reply.text, reply.emotion)
        return {"file": Path(audio).name, **reply.to_json()}, spoken

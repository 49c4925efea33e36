"""The page of the BLSP-Emo demo: the Talk, Compare, API and Voices tabs, and their event handlers.

`build_demo(systems, synthesizer)` only builds the page; `python app.py` loads the models (in worker
processes, or in its own) and serves it. Models are shared read-only by every visitor, whose
conversation lives in per-session `gr.State`.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np

from blsp_emo import GenerationOptions, Reply, SpokenDialogueSystem, load_audio
from blsp_emo.audio import AudioError, to_pcm16
from blsp_emo.systems import paced
from blsp_emo.tts import STYLES, NullSynthesizer, SpeechSynthesizer, style_for
from webui import study_tabs
from webui.waking_queue import WakingQueue

try:  # ZeroGPU Spaces lend a GPU per call to functions marked with spaces.GPU; elsewhere a no-op
    from spaces import GPU as _gpu
except ImportError:

    def _gpu(fn):
        return fn


ASSETS = Path(__file__).resolve().parents[1] / "assets"
EXAMPLES_DIR = ASSETS / "examples"
ANALYTICS_EVERY = 50  # events between recomputations of Gradio's monitoring summary
HEARD_EXCHANGES = 4  # earlier turns stay on screen; every heard clip is encoded again each turn
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


Chat = tuple  # of Exchange: a visitor's conversation, immutable, kept in gr.State


def _fail(message: str) -> gr.Error:
    return gr.Error(html.escape(message, quote=False), title="Please check your input", print_exception=False)


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
        return {ui.emotion: None, ui.transcript: gr.Textbox(None, visible=False), ui.card: ""}
    return {
        ui.emotion: _emotion(shown.reply, shown.audio is None),
        ui.transcript: _transcript(shown.reply),
        ui.card: shown.card,
    }


def _timings(reply: Reply) -> str:
    first = "" if reply.timings.first_token_s is None else f"first token {reply.timings.first_token_s:.2f} s · "
    return f"{first}total {reply.timings.total_s:.2f} s · {len(reply.token_ids)} tokens"


def _card(system: SpokenDialogueSystem, reply: Reply, options: GenerationOptions, model_label: str) -> str:
    decoding = "greedy" if options.greedy else f"sampling T={options.temperature:g} top-p={options.top_p:g}"
    return (
        f"**{system.name}** — {system.description}  \nmodel `{model_label}` · seed `{reply.seed}` · "
        f"{decoding} · ≤{options.max_new_tokens} tokens  \n{_timings(reply)}"
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
    exchanges = [(ex.shown, ex.reply) for ex in chat] + ([pending] if pending else [])
    out = []
    for shown, reply in exchanges:
        heard = _heard(reply) if isinstance(shown, dict) else ""
        out.append({"role": "user", "content": [shown, heard] if heard else shown})
        out.append({"role": "assistant", "content": reply.text if reply.done or reply.text else "…"})
    return out


def _history(chat: Chat) -> list:
    """The turns the system hears again: the latest few, as the released demo drops the oldest to fit."""
    return [turn for ex in chat[-HEARD_EXCHANGES:] for turn in ex.reply.turns(ex.audio, ex.text)]


class Callbacks:
    """Every event handler: models are read, never written; per-visitor state comes in and goes out."""

    def __init__(
        self, systems, synthesizer, model_label: str, options: GenerationOptions, stream_interval: float = 0.0
    ):
        self.systems, self.synthesizer, self.model_label, self.options = systems, synthesizer, model_label, options
        self.stream_interval = stream_interval
        self.ui = SimpleNamespace()  # the components handlers write to, filled in while the page is built

    def system(self, name: str | None) -> SpokenDialogueSystem:
        if not self.systems:
            raise gr.Error(NO_MODEL, title="No model loaded", print_exception=False)
        if name not in (None, "", *self.systems):
            raise _fail(f"unknown system {name!r}; available: {list(self.systems)}")
        return self.systems[name] if name else next(iter(self.systems.values()))

    def load(self, path: str | None, system: SpokenDialogueSystem) -> np.ndarray:
        if path is None:
            raise _fail(NO_AUDIO)
        try:
            return load_audio(path, max_seconds=system.window_seconds, name=Path(path).name)
        except AudioError as e:
            raise _fail(str(e)) from e

    def audio_problem(self, audio, system_names: Sequence[str | None]) -> str | None:
        """What is wrong with a clip for these systems, or None; validators show it on the audio input."""
        try:
            for name in system_names or [None]:
                self.load(audio, self.system(name))
        except gr.Error as e:
            return e.message
        return None

    def check_turn(self, audio, text, chat, system_name, *settings) -> list[dict]:
        spoken = audio is not None  # nothing at all is a notice from `talk`, not a mark on the input
        return _validation(self.audio_problem(audio, [system_name]) if spoken else None, 4 + len(settings))

    def check_respond(self, audio, system_name=None) -> list[dict]:
        return _validation(self.audio_problem(audio, [system_name]), 2)

    @_gpu
    def talk(self, audio, text, chat: Chat, system_name, *settings):
        text = (text or "").strip()
        if not self.systems or (audio is None and not text):  # a notice; the page stays as it was
            gr.Warning(NO_INPUT if self.systems else NO_MODEL)
            yield gr.skip()
            return
        system, options = self.system(system_name), _options(*settings)
        if audio is not None:
            wave, typed, shown = self.load(audio, system), None, {"path": audio}
        else:
            wave, typed, shown = None, text, text
        yield from self._turn(system, chat, Exchange(shown, wave, typed, None), options, chat[-1] if chat else None)

    @_gpu
    def regenerate(self, chat: Chat, system_name, *settings):
        if not chat:
            gr.Warning("Nothing to regenerate yet: say something first.")
            yield gr.skip()
            return
        yield from self._turn(self.system(system_name), chat[:-1], chat[-1], _options(*settings), chat[-1])

    def _turn(self, system, chat: Chat, user: Exchange, options: GenerationOptions, shown: Exchange | None):
        """Answer `user` after `chat`; `shown` is the exchange whose emotion, transcript and card the page shows.

        Every update gives every output a value: Gradio turns an output left out of an update into an
        empty component update, which rebuilds that component and its API schema (more than a
        demo-scale token costs; docs/serving.md). The card shows the reply's timings as it grows.
        """
        ui, reply, sent, typed = self.ui, None, False, user.audio is None
        before = (*chat, user) if user is shown else chat  # the state as it stands (a regenerated turn is in it)
        replies = system.stream(audio=user.audio, history=_history(chat), options=options, text=user.text)
        try:
            for i, reply in enumerate(paced(replies, self.stream_interval)):
                # what was heard is known before the first token: only the first update may change the boxes
                heard = _heard_outputs(ui, reply, typed, shown) if i == 0 else _heard_values(ui, reply, typed)
                update = {
                    ui.chatbot: _messages(chat, (user.shown, reply)),
                    ui.chat: before,
                    **heard,
                    ui.card: _card(system, reply, options, self.model_label),
                }
                if not reply.done:  # the end goes out below, with the answered turn in the state
                    sent = True
                    yield update
        except Exception:
            if sent:  # the page shows the failed turn: put back what it showed before (as the next turn assumes)
                yield {ui.chatbot: _messages(before), ui.chat: before, **_shown_outputs(ui, shown)}
            raise
        if reply is None:
            raise RuntimeError(f"{system.name} streamed no reply")
        answered = replace(user, reply=reply, card=update[ui.card])
        yield {**update, ui.chatbot: _messages((*chat, answered)), ui.chat: (*chat, answered)}

    def open_session(self) -> None:
        """The page's load event: the request itself has Gradio build the session (see `build_demo`)."""

    def clear_sent(self, chat: Chat):
        """After a turn: empty the input it used, keep the other (a clip beside typed text was not sent)."""
        spoken = bool(chat) and chat[-1].audio is not None
        return (None, gr.skip()) if spoken else (gr.skip(), "")

    def clear(self):
        ui = self.ui
        return {ui.chatbot: [], ui.chat: (), ui.reply_audio: None, ui.style: "", **_shown_outputs(ui, None)}

    def start_compare(self, audio, seed):
        """Fix one seed for every column, so the columns differ only by system (the clip is validated)."""
        return GenerationOptions(seed=None if seed in (None, "") else int(seed)).resolved_seed()

    @_gpu
    def answer(self, name: str, audio, seed: int, *settings):
        """One callback for every Compare column: which system answers is data, never a branch."""
        system = self.system(name)
        options = replace(_options(*settings), seed=seed)
        replies = paced(system.stream(audio=self.load(audio, system), options=options), self.stream_interval)
        for i, reply in enumerate(replies):  # every output each time, as in Callbacks._turn
            heard = (_emotion(reply), _transcript(reply) if i == 0 else reply.transcript)
            yield (*heard, reply.text, _timings(reply) + f" · seed `{reply.seed}`", reply if reply.done else None)

    def speak(self, reply: Reply | None, enabled: bool = True):
        return (None, "") if reply is None else self.voice(reply.text, reply.emotion, enabled)

    def speak_last(self, chat: Chat, enabled: bool = True):
        return self.speak(chat[-1].reply if chat else None, enabled)

    def voice(self, text: str, emotion: str | None, enabled: bool = True):
        """`text` spoken in the style for a user heard as `emotion`, and a line naming the style and why."""
        if not enabled or isinstance(self.synthesizer, NullSynthesizer):
            return None, "🔇 Spoken replies are off" + (
                " (Settings)." if not enabled else " (started with --tts none)."
            )
        style = style_for(emotion)
        audio = self.synthesizer.synthesize(text, style)
        shown = None if audio is None else (audio[0], to_pcm16(audio[1]))
        why = f"you sounded {emotion}" if emotion else "no emotion was heard"
        return shown, f"🔊 Voice style **{style.name}**: {style.purpose} — {why}."

    @_gpu
    def respond(self, audio, system_name=None):
        """The `/respond` API: the `python -m blsp_emo respond --json` object and the spoken reply."""
        system = self.system(system_name)
        reply = system.respond(audio=self.load(audio, system), options=self.options)
        spoken, _ = self.speak(reply)
        return {"file": Path(audio).name, **reply.to_json()}, spoken


def _banner(systems: Mapping, model_label: str, notes: Sequence[str], synthesizer: SpeechSynthesizer) -> str:
    names = ", ".join(f"`{n}`" for n in systems)
    loaded = f"**Model:** `{model_label}` · **systems:** {names} · **voice:** {synthesizer.name}"
    lines = [loaded if systems else f"⚠️ **{NO_MODEL}**"] + [f"ℹ️ {html.escape(n, quote=False)}" for n in notes]
    return "  \n".join(lines)


def _settings(ui: SimpleNamespace, systems, options: GenerationOptions) -> None:
    with gr.Accordion("⚙️ Settings", open=False):
        ui.system = gr.Dropdown(
            list(systems),
            value=next(iter(systems), None),
            label="System (Talk)",
            info="Switching starts a new conversation.",
        )
        ui.generation = [  # in the order of _options' parameters
            gr.Slider(0.05, 1.5, options.temperature, step=0.05, label="Temperature"),
            gr.Slider(0.05, 1.0, options.top_p, step=0.05, label="Top-p"),
            gr.Slider(8, 1024, options.max_new_tokens, step=8, label="Max new tokens"),
            gr.Checkbox(options.greedy, label="Greedy decoding (deterministic)"),
            gr.Number(options.seed, precision=0, label="Seed (empty: a new one each turn)"),
        ]
        ui.seed = ui.generation[-1]
        ui.tts_on = gr.Checkbox(True, label="Speak the reply")


def _examples(audio: gr.Audio, examples_dir: Path) -> None:
    clips = sorted(examples_dir.glob("*.wav")) if examples_dir.is_dir() else []
    if clips:
        gr.Examples(
            [[str(c)] for c in clips],
            inputs=[audio],
            label="Example clips (one click, then Send)",
            example_labels=[c.stem.replace("_", " ") for c in clips],
            examples_per_page=10,
        )


def _talk_tab(cb: Callbacks, systems, examples_dir: Path) -> None:
    ui = cb.ui
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            ui.chatbot = gr.Chatbot(
                label="Conversation",
                height=430,
                feedback_options=None,
                elem_id="chat",
                placeholder="Record or upload a clip, or type, then **Send**.",
            )
            ui.audio_in = gr.Audio(
                sources=["microphone", "upload"], type="filepath", label="Your voice", elem_id="voice"
            )
            ui.text_in = gr.Textbox(placeholder="…or type a message and press Enter", show_label=False)
            with gr.Row():
                send = gr.Button("Send", variant="primary", scale=2)
                regen = gr.Button("🔄 Regenerate")
                clear = gr.Button("🗑️ Clear")
            _examples(ui.audio_in, examples_dir)
        with gr.Column(scale=2, elem_id="side"):
            ui.emotion = gr.Label(label="Detected emotion", num_top_classes=5, elem_id="emotion")
            ui.transcript = gr.Textbox(label="Transcript (what the system read)", visible=False, interactive=False)
            ui.reply_audio = gr.Audio(
                label="Spoken reply", type="numpy", format="wav", autoplay=True, interactive=False, buttons=["download"]
            )
            ui.style = gr.Markdown(elem_classes=["note"])
            ui.card = gr.Markdown(elem_classes=["card"])
            _settings(ui, systems, cb.options)
    ui.chat = gr.State((), time_to_live=3600)  # per visitor; dropped after 1 h idle
    gen = [ui.system, *ui.generation]
    # The inputs are not outputs of the streaming turn (it would have to send them at every update);
    # a quick follow-up empties the one sent.
    outputs = [ui.chatbot, ui.chat, ui.emotion, ui.transcript, ui.card]
    spoken = {
        "fn": cb.speak_last,
        "inputs": [ui.chat, ui.tts_on],
        "outputs": [ui.reply_audio, ui.style],
        "api_visibility": "private",
    }
    talk = gr.on(
        [send.click, ui.text_in.submit],
        cb.talk,
        [ui.audio_in, ui.text_in, ui.chat, *gen],
        outputs,
        api_name="talk",
        api_visibility="undocumented",
        concurrency_id="model",
        validator=cb.check_turn,
    )
    talk.success(cb.clear_sent, [ui.chat], [ui.audio_in, ui.text_in], queue=False, api_visibility="private")
    talk.success(**spoken)
    again = regen.click(
        cb.regenerate,
        [ui.chat, *gen],
        outputs,
        api_name="regenerate",
        api_visibility="undocumented",
        concurrency_id="model",
    )
    again.success(**spoken)
    clear_outputs = [*outputs, ui.reply_audio, ui.style]
    clear.click(cb.clear, None, clear_outputs, cancels=[talk, again], api_visibility="private")
    ui.system.change(cb.clear, None, clear_outputs, api_visibility="private")


def _compare_tab(cb: Callbacks, systems, examples_dir: Path) -> None:
    ui = cb.ui
    gr.Markdown(
        "One recording, answered by every system side by side with the same seed and the sampling settings "
        "of **Talk ▸ Settings**. Systems that hear tone show an emotion; the others only read your words."
    )
    with gr.Row(equal_height=True):
        audio = gr.Audio(sources=["microphone", "upload"], type="filepath", label="Your voice", scale=3)
        go = gr.Button("Answer with every system", variant="primary", scale=1)
    _examples(audio, examples_dir)
    seed = gr.State(None)
    start = go.click(
        cb.start_compare,
        [audio, ui.seed],
        [seed],
        api_visibility="private",
        validator=lambda audio, _seed: _validation(cb.audio_problem(audio, list(systems)), 2),
    )
    with gr.Row(equal_height=True, elem_id="columns"):
        for name, system in systems.items():  # identical columns, one per system; no name checks
            with gr.Column(min_width=220, elem_classes=["system-column"]):
                gr.Markdown(f"### {name}\n{system.description}")
                outputs = [
                    gr.Label(label="Detected emotion", num_top_classes=3),
                    gr.Textbox(label="Transcript", visible=False, interactive=False),
                    gr.Textbox(label="Reply", lines=5, interactive=False),
                    gr.Markdown(elem_classes=["note"]),
                    gr.State(None),
                ]
                speech = [
                    gr.Audio(label="Spoken reply", type="numpy", format="wav", interactive=False),
                    gr.Markdown(elem_classes=["note"]),
                ]
                start.success(
                    cb.answer,
                    [gr.State(name), audio, seed, *ui.generation],
                    outputs,
                    api_visibility="private",
                    concurrency_id="model",
                ).success(cb.speak, [outputs[-1], ui.tts_on], speech, api_visibility="private")


def _api_tab(cb: Callbacks, systems) -> None:
    gr.Markdown(
        "Call the demo from Python with `pip install gradio_client`:\n```python\n"
        'from gradio_client import Client, handle_file\nclient = Client("http://127.0.0.1:7860/")\n'
        'result, speech_wav = client.predict(handle_file("clip.wav"), "blsp-emo", api_name="/respond")\n'
        'print(result["emotion"], result["reply"])\n```\n`result` is the object `python -m blsp_emo respond '
        "--json` prints (`file, system, emotion, emotion_scores, reply, transcript, timings`); the system "
        "argument is optional. Try it here:"
    )
    with gr.Row():
        audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="audio")
        system = gr.Dropdown(list(systems), value=next(iter(systems), None), label="system", allow_custom_value=True)
    go = gr.Button("Respond", variant="primary")
    with gr.Row():
        result, speech = gr.JSON(label="result"), gr.Audio(label="spoken reply", type="numpy", format="wav")
    go.click(
        cb.respond,
        [audio, system],
        [result, speech],
        api_name="respond",
        concurrency_id="model",
        validator=cb.check_respond,
    )


def _voices_tab(cb: Callbacks) -> None:
    rows = "\n".join(
        f"| {EMOJI.get(e, '')} {e} | **{s.name}** | {s.purpose} | {s.rate} | {s.pitch} | {s.volume} | {s.pitch_range} |"
        for e, s in STYLES.items()
        if e
    )
    header = "| you sounded | voice style | why | words/min | pitch | volume % | pitch range |\n" + "|---" * 7 + "|"
    gr.Markdown(
        f"The spoken reply keeps one voice; its prosody follows the emotion the system heard in you "
        f"(backend: **{cb.synthesizer.name}**; espeak-ng units).\n\n{header}\n{rows}"
    )
    with gr.Row(equal_height=True):
        text = gr.Textbox("I'm here for you. Tell me what happened.", label="Text", scale=3)
        emotion = gr.Radio([e for e in STYLES if e], value="sad", label="As if you sounded", scale=2)
        go = gr.Button("Hear it", scale=1)
    audio, note = gr.Audio(label="Spoken", type="numpy", format="wav", autoplay=True), gr.Markdown()
    go.click(cb.voice, [text, emotion], [audio, note], api_visibility="private")


def build_demo(
    systems: Mapping[str, SpokenDialogueSystem],
    synthesizer: SpeechSynthesizer | None = None,
    *,
    model_label: str = "bundled demo models",
    notes: Sequence[str] = (),
    options: GenerationOptions = GenerationOptions(),
    examples_dir: Path = EXAMPLES_DIR,
    concurrency: int = 2,
    max_queue: int = 16,
    study: study_tabs.StudyRunner | None = None,
    stream_interval: float = 0.0,
) -> gr.Blocks:
    """The page for already-loaded `systems` (may be empty: the page then says how to get a model).

    Args:
        synthesizer: speaks replies; None for no speech.
        model_label: where the models came from, named in the banner and each turn's card.
        notes: one-line problems to show under the banner (systems that failed to load, no TTS).
        options: the default generation settings (also those of the `/respond` API).
        concurrency: model calls run at once, shared by Talk, Compare and the API.
        max_queue: requests waiting beyond which visitors are told the app is busy.
        stream_interval: seconds between updates of a streaming reply (0: every token).
        study: the blind rating study of the Rate and Results tabs; None for no such tabs.
    """
    synthesizer = synthesizer or NullSynthesizer()
    cb = Callbacks(dict(systems), synthesizer, model_label, options, stream_interval)
    with gr.Blocks(title="BLSP-Emo: empathetic speech chat") as demo:
        gr.Markdown(
            "# 🎙️ BLSP-Emo · empathetic speech chat\nSpeak to it and see the emotion it hears in your "
            "voice, read and hear a reply that takes your tone into account, and compare with systems "
            "that only read your words. Audio is processed for your session only and not stored.",
            elem_id="title",
        )
        gr.Markdown(
            _banner(systems, model_label, notes, synthesizer),
            elem_classes=["banner", "banner-ok" if systems else "banner-warn"],
        )
        with gr.Tabs():
            with gr.Tab("💬 Talk"):
                _talk_tab(cb, systems, examples_dir)
            with gr.Tab("⚖️ Compare"):
                _compare_tab(cb, systems, examples_dir)
            with gr.Tab("🔌 API"):
                _api_tab(cb, systems)
            with gr.Tab("🔊 Voices"):
                _voices_tab(cb)
            study_tabs.build_tabs(study)
        # Gradio builds a visitor's session (a config for each of the page's 170-odd blocks, longer
        # than a typed demo-scale turn) on the session's first request to an event; this one makes
        # that the page's load, not the visitor's first turn (docs/serving.md).
        demo.load(cb.open_session, None, None, queue=False, show_progress="hidden", api_visibility="private")
    # Gradio's queue recomputes its monitoring summary (a pandas table of up to its last 10,000
    # events) after every event, on the page's process, at a cost that grows with the events
    # kept; every 50 events keeps the summary fresh and its cost per event small (docs/serving.md).
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", str(ANALYTICS_EVERY))
    demo.queue(default_concurrency_limit=concurrency, max_size=max_queue)
    demo._queue = WakingQueue.like(demo._queue)  # Gradio's own looks for work every millisecond
    return demo


def launch(demo: gr.Blocks, host: str | None = None, port: int | None = None, **kwargs):
    """`demo.launch` with the page's theme and CSS (Gradio 6 takes them here, not in Blocks)."""
    theme = gr.themes.Default(primary_hue="indigo", secondary_hue="rose")  # local fonts only: no CDN
    # Gradio asks matplotlib for its backend around every call; left to choose one, matplotlib
    # imports pyplot and probes GUI toolkits, and the first visitor's turn waits for it.
    os.environ.setdefault("MPLBACKEND", "agg")
    return demo.launch(
        server_name=host,
        server_port=port,
        theme=theme,
        css_paths=[ASSETS / "style.css"],
        max_file_size="20mb",
        **kwargs,
    )

"""Hands-free turns on the Talk tab: the microphone streams, voice activity detection sends each turn by
itself after a pause, and speaking over a reply stops it (barge-in).

The microphone is Gradio's own streaming `gr.Audio` (`.stream`, a chunk every `LISTEN_EVERY_S`), not
a WebRTC component such as fastrtc's. Gradio's streams reach the server as ordinary HTTP requests to
its queue, so they work wherever the page does: Chromium on localhost (the tests drive it with a fake
microphone) and a Space behind its proxy, with no TURN server and no extra package (fastrtc is not
installed; on a Space its WebRTC needs a TURN server with credentials). What it costs: a chunk is
0.3 s late at most, so a turn is sent within `pause_s` + 0.3 s of the end of the speech; fastrtc's
lower transport latency matters little next to the pause a person needs to finish a thought.

Per visitor, the stream's `VadState` lives in `gr.State` (reset when recording stops, the mode changes
or the chat is cleared); the Silero model is the process's one, shared read-only (`blsp_emo.vad`).
What one visitor's stream can take is bounded: one listener per page, `LISTENERS` at once (more wait
in the queue), `LISTEN_LIMIT_S` per press of Record, and in the VAD one chunk, one turn and the audio
kept before speech (`VadOptions`). Each turn is a WAV file in the session's folder, deleted with it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import SimpleNamespace

import gradio as gr

from blsp_emo import vad
from blsp_emo.audio import to_pcm16
from webui.callbacks import Exchange, _gpu, _options
from webui.live_speech import LIVE, STOP_PLAYBACK_JS, session_hash

LISTEN_EVERY_S = 0.3  # the microphone's chunk: a turn's end is seen within this of the pause's end
LISTEN_LIMIT_S = 600  # one press of Record listens this long at most; press it again to go on
LISTENERS = 8  # microphones streamed at once, in the whole app; each holds a queue slot while it streams
PAUSE_DEFAULT_S = vad.VadOptions().pause_s
PUSH, HANDS_FREE = "🎙️ Push to talk", "🎧 Hands-free"
READY = "Press Record; talk once this line says 👂 Listening."


@dataclass(frozen=True)
class HeardTurn:
    """One utterance the VAD sent: a WAV in the visitor's session folder, and when its speech ended."""

    path: str
    number: int  # counts a stream's turns, so that two identical turns still change the state
    speech_end: float  # time.monotonic() at the end of the speech, as this process saw it
    waited_s: float  # from the end of the speech until the turn was sent (the pause, and a chunk at most)
    pause_s: float
    seconds: float
    cut: bool  # sent at the length limit while the visitor was still speaking


def controls(ui: SimpleNamespace) -> None:
    """The hands-free microphone, the pause setting and the line that says what it hears (hidden until
    the visitor picks hands-free), and the per-session state behind them."""
    with gr.Group(visible=False, elem_id="handsfree") as ui.handsfree:
        ui.live_mic = gr.Audio(
            sources=["microphone"],
            streaming=True,
            type="numpy",
            label="Hands-free: press Record once, then just talk; a pause sends your turn",
            elem_id="live-mic",
        )
        ui.pause = gr.Slider(
            0.3,
            2.0,
            PAUSE_DEFAULT_S,
            step=0.1,
            label="Pause that ends your turn (s)",
            info="Speaking while the reply plays stops it.",
        )
        ui.listening = gr.Markdown(READY, elem_classes=["note"], elem_id="listening")
    ui.vad = gr.State(None, time_to_live=LISTEN_LIMIT_S + 300)  # the stream's VadState
    ui.heard = gr.State(None)  # the latest HeardTurn: its change sends the turn
    ui.barge = gr.State(0)  # counts barge-ins: its change stops the reply


def _status(state: vad.VadState, heard: HeardTurn | None) -> str:
    if state.speech_start_s is not None and state.started:
        return f"🗣️ Hearing you… {state.scored_s - state.speech_start_s:.1f} s"
    sent = f" · turn {heard.number} sent ({heard.seconds:.1f} s)" if heard else ""
    return f"👂 Listening{sent}"


class Listener:
    """The stream's handler and the events around it; `cb` is the page's `Callbacks`."""

    def __init__(self, cb):
        self.cb = cb

    def listen(self, chunk, state: vad.VadState | None, pause_s, heard: HeardTurn | None, barge: int):
        """One microphone chunk: the VAD's new state, a new `HeardTurn` when a turn ended, a new barge-in
        count when the visitor spoke over a reply, and the status line."""
        state = state or vad.VadState()
        if chunk is None:
            return state, heard, barge, _status(state, heard)
        try:
            options = vad.VadOptions(pause_s=round(float(pause_s), 2))
            rate, samples = chunk
            state, events = vad.step(state, int(rate), vad.to_mono_float(samples), options, vad.load_vad())
        except (TypeError, ValueError) as e:
            raise gr.Error(str(e), title="Hands-free stopped", print_exception=False) from e
        for event in events:
            if isinstance(event, vad.SpeechStarted) and LIVE.interrupt(session_hash()):
                barge += 1
            elif isinstance(event, vad.Utterance):
                heard = self._heard(event, heard, options.pause_s)
        return state, heard, barge, _status(state, heard)

    def _heard(self, turn: vad.Utterance, last: HeardTurn | None, pause_s: float) -> HeardTurn:
        # at the models' 16 kHz: a 48 kHz turn would be resampled again, more slowly, when it is loaded
        path = self.cb.files.write_wav(vad.SAMPLE_RATE, to_pcm16(vad.to_16k(turn.samples, turn.rate)))
        number = (last.number if last else 0) + 1
        return HeardTurn(path, number, time.monotonic() - turn.waited_s, turn.waited_s, pause_s, turn.seconds, turn.cut)

    @_gpu
    def talk(self, heard: HeardTurn | None, chat, voice, system_name, *settings):
        """The turn the VAD sent, answered as a sent clip is; its time to first audio counts from the end
        of the speech, the pause that ended it included."""
        if heard is None or not self.cb.systems:
            yield gr.skip()
            return
        system, options = self.cb.system(system_name), _options(*settings)
        user = Exchange({"path": heard.path}, self.cb.load(heard.path, system), None, None)
        note = f"  \nhands-free: sent {heard.waited_s:.2f} s after your speech ended (pause {heard.pause_s:g} s)"
        shown = chat[-1] if chat else None
        yield from self.cb._turn(system, chat, user, options, shown, voice, heard.speech_end, note)

    def stop_speaking(self):
        """Barge-in on the page: the reply being written stops and the live player empties."""
        LIVE.interrupt(session_hash())
        return None

    def reset(self):
        """A new stream (recording stopped, the mode changed, the chat cleared): nothing of the old one stays."""
        return None, READY

    def mode(self, choice: str):
        hands_free = choice == HANDS_FREE
        ui = self.cb.ui
        shown = {ui.audio_in: gr.update(visible=not hands_free), ui.handsfree: gr.update(visible=hands_free)}
        if ui.examples is not None:
            shown[ui.examples] = gr.update(visible=not hands_free)
        return {**shown, ui.vad: None, ui.listening: READY}


def wire(cb, turn_outputs: list, turn_events: list, settings: list) -> None:
    """The hands-free events of the Talk tab. `turn_outputs` are a turn's outputs, `turn_events` the
    turns speech should stop (Send, Regenerate), `settings` the system and generation inputs."""
    ui, listener = cb.ui, Listener(cb)
    private = {"api_visibility": "private"}
    ui.live_mic.stream(
        listener.listen,
        [ui.live_mic, ui.vad, ui.pause, ui.heard, ui.barge],
        [ui.vad, ui.heard, ui.barge, ui.listening],
        stream_every=LISTEN_EVERY_S,
        time_limit=LISTEN_LIMIT_S,
        concurrency_id="listen",
        concurrency_limit=LISTENERS,
        show_progress="hidden",
        **private,
    )
    heard_turn = ui.heard.change(
        listener.talk, [ui.heard, ui.chat, ui.voice, *settings], turn_outputs, concurrency_id="model", **private
    )
    stopping = {"fn": listener.stop_speaking, "inputs": None, "outputs": [ui.reply_stream], "js": STOP_PLAYBACK_JS}
    stop = {**stopping, "cancels": [*turn_events, heard_turn], "queue": False, **private}
    ui.barge.change(**stop)
    ui.audio_in.start_recording(**stop)  # push to talk: pressing Record over a reply stops it too
    ui.live_mic.stop_recording(listener.reset, None, [ui.vad, ui.listening], queue=False, **private)
    mode_outputs = [ui.audio_in, ui.handsfree, ui.vad, ui.listening, *([ui.examples] if ui.examples else [])]
    ui.mode.change(listener.mode, [ui.mode], mode_outputs, queue=False, **private)


def install(demo: gr.Blocks) -> None:
    """A closed page's live turn is forgotten (its files go with the session's: webui/storage.py)."""
    demo.unload(lambda: LIVE.forget(session_hash()))

"""The reply spoken while it is written, on the page, and what lets the visitor's speech stop it.

A turn's `TurnSpeech` synthesizes each sentence as soon as the reply completes it and hands its audio
to the live player (a streaming `gr.Audio`, which plays the chunks as they come); when the reply is
done, the whole reply's audio is written once, as a file of the visitor's session (`webui/storage.py`),
to replay and download. `LiveTurns` knows, per session, whether a reply is being written or played,
so that speech heard then can stop it (barge-in, `webui/handsfree.py`).
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass

import numpy as np
import soundfile as sf
from gradio.context import LocalContext

from blsp_emo.audio import to_pcm16
from blsp_emo.spoken_reply import SentenceSpeaker
from blsp_emo.tts import NullSynthesizer, SpeechSynthesizer
from blsp_emo.voice_style import DEFAULT_POLICY, POLICIES, style_for

# The browser's HLS player starts a stream's audio this long after its first chunk (measured in
# Chromium: 1-2 s), so a reply counts as playing until its audio's length plus this after it was sent.
PLAYER_DELAY_S = 2.0
STREAM_RUNS_KEPT = (
    2  # a session's latest replies whose streamed audio the server keeps (the player may still fetch them)
)
STOP_PLAYBACK_JS = "() => { document.querySelectorAll('#reply-live audio').forEach((a) => a.pause()); }"


@dataclass(frozen=True)
class VoiceChoice:
    """How the page's visitor wants replies spoken (Talk ▸ Settings); a session without one (an API
    caller's) gets no speech inside the turn."""

    enabled: bool = True
    policy: str = DEFAULT_POLICY


def voice_last(settings: tuple, voice: VoiceChoice | None) -> tuple[tuple, VoiceChoice | None]:
    """A handler's generation settings (`callbacks._options`' five) and the voice choice the page passes
    after them (`ui.voice`, a state: None until the page has loaded, and for an API caller)."""
    if len(settings) == 6:
        return settings[:5], settings[5]
    return settings, voice


def session_hash() -> str | None:
    """The calling visitor's session, inside an event handler (None outside one)."""
    request = LocalContext.request.get(None)
    return getattr(request, "session_hash", None) if request is not None else None


def wav_bytes(rate: int, samples: np.ndarray) -> bytes:
    """A WAV file in memory: the live player takes bytes as they are (a waveform would be written to disk)."""
    buffer = io.BytesIO()
    sf.write(buffer, to_pcm16(samples), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def style_note(emotion: str | None, policy: str) -> str:
    style = style_for(emotion, policy)
    why = f"you sounded {emotion}" if emotion else "no emotion was heard"
    return f"🔊 Voice style **{style.name}** ({policy}): {style.purpose} — {why}."


@dataclass
class _Live:
    cancel: threading.Event
    generating: bool = True
    playing_until: float = 0.0  # time.monotonic() until which the audio sent so far plays


class LiveTurns:
    """Per session, the reply being written or played: one entry per session with a recent turn, dropped
    when it has ended and played, or when the page closes."""

    def __init__(self):
        self._lock = threading.Lock()
        self._turns: dict[str, _Live] = {}

    def begin(self, session: str | None) -> threading.Event:
        """A new turn of `session`; the flag that stops it. A turn still going in that session stops."""
        cancel = threading.Event()
        if session is None:
            return cancel
        now = time.monotonic()
        with self._lock:
            if (old := self._turns.get(session)) is not None:
                old.cancel.set()
            for other in [s for s, live in self._turns.items() if not live.generating and live.playing_until < now]:
                del self._turns[other]
            self._turns[session] = _Live(cancel)
        return cancel

    def played(self, session: str | None, cancel: threading.Event, seconds: float) -> None:
        """`seconds` of the turn's audio were just sent to the player."""
        with self._lock:
            live = self._turns.get(session)
            if live is not None and live.cancel is cancel:
                start = max(time.monotonic() + PLAYER_DELAY_S, live.playing_until)
                live.playing_until = start + seconds

    def finish(self, session: str | None, cancel: threading.Event) -> None:
        """The turn has written its reply (its audio may still be playing)."""
        with self._lock:
            live = self._turns.get(session)
            if live is not None and live.cancel is cancel:
                live.generating = False

    def interrupt(self, session: str | None) -> bool:
        """Stop `session`'s reply if it is being written or played; whether there was one to stop."""
        with self._lock:
            live = self._turns.get(session)
            if live is None or live.cancel.is_set():
                return False
            if live.generating or time.monotonic() < live.playing_until:
                live.cancel.set()
                return True
            return False

    def forget(self, session: str | None) -> None:
        with self._lock:
            live = self._turns.pop(session, None)
        if live is not None:
            live.cancel.set()

    def __len__(self) -> int:
        return len(self._turns)


LIVE = LiveTurns()  # the app's one registry


def prune_streams(blocks, session: str | None, keep: int = STREAM_RUNS_KEPT) -> None:
    """Drop all but a session's latest `keep` streamed replies from Gradio's memory. Gradio keeps every
    streamed segment of a session until the session ends; a long hands-free conversation would grow."""
    runs = getattr(blocks, "pending_streams", {}).get(session) if session else None
    for run in list(runs or {})[:-keep]:
        for stream in runs.pop(run, {}).values():
            stream.end_stream()


class TurnSpeech:
    """One turn's spoken reply on the page. `feed` each reply update: the audio for the live player, or
    None; `close` when the reply is over (or stopped); `finish` for the whole reply's file and the note
    under it. Never raises for the voice: a voice that fails stops speaking for the turn and says so.

    `turns` is where the turn is registered for barge-in (None: not at all, as for a Compare column,
    whose columns answer side by side in one session).
    """

    def __init__(
        self,
        synthesizer: SpeechSynthesizer,
        files,
        voice: VoiceChoice | None,
        started: float,
        turns: LiveTurns | None = LIVE,
    ):
        self.synthesizer, self.files, self.voice, self.started, self.turns = synthesizer, files, voice, started, turns
        self.session = session_hash()
        self.cancel = turns.begin(self.session) if turns is not None else threading.Event()
        self.speaker: SentenceSpeaker | None = None
        self.emotion: str | None = None
        self.problem: str | None = None
        if voice is not None and voice.policy not in POLICIES:
            raise ValueError(f"unknown reply voice {voice.policy!r}; choose one of {list(POLICIES)}")

    @property
    def speaking(self) -> bool:
        return bool(self.voice and self.voice.enabled) and not isinstance(self.synthesizer, NullSynthesizer)

    @property
    def cancelled(self) -> bool:
        return self.cancel.is_set()

    @property
    def first_audio_s(self) -> float | None:
        return self.speaker.first_audio_s if self.speaker else None

    def feed(self, text: str, done: bool, emotion: str | None) -> bytes | None:
        """Speak the sentences `text` completed since the last update; their audio as one WAV, or None."""
        if not self.speaking or self.problem or self.cancelled:
            return None
        if self.speaker is None:
            self.emotion = emotion
            style = style_for(emotion, self.voice.policy)
            self.speaker = SentenceSpeaker(self.synthesizer, style, self.started)
        try:
            new = self.speaker.feed(text, done)
        except Exception as e:  # noqa: BLE001 -- the text reply stands; the voice says why it stopped
            self.problem = f"{type(e).__name__}: {e}"
            return None
        if not new or self.cancelled:
            return None
        if self.turns is not None:
            self.turns.played(self.session, self.cancel, sum(s.seconds for s in new))
        return wav_bytes(new[0].audio[0], np.concatenate([s.audio[1] for s in new]))

    def close(self) -> None:
        if self.turns is not None:
            self.turns.finish(self.session, self.cancel)

    def finish(self) -> tuple[str | None, str]:
        """The reply is done: the whole reply's audio file (None: nothing was said) and the note under it."""
        if self.voice is None:
            return None, ""
        if not self.speaking:
            why = "Settings" if not self.voice.enabled else "started with --tts none"
            return None, f"🔇 Spoken replies are off ({why})."
        if self.problem:
            return None, f"🔇 The voice failed ({self.problem}); the reply is written above."
        whole = self.speaker.whole() if self.speaker else None
        shown = None if whole is None else self.files.write_wav(whole[0], to_pcm16(whole[1]))
        return shown, style_note(self.emotion, self.voice.policy)

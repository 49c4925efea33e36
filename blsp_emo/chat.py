"""A voice conversation in the terminal: record (or read files), show the emotion, stream, speak.

Press Enter to start recording and Enter again to stop; or type a message; Ctrl-D ends. History is
this loop's local variable: the system object stays stateless.
"""

from __future__ import annotations

import sys
import threading
import wave
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

import numpy as np

from blsp_emo.audio import AudioError, load_audio, to_pcm16
from blsp_emo.microphone import MicrophoneError, check_input, play, record
from blsp_emo.options import GenerationOptions
from blsp_emo.prompts import Turn
from blsp_emo.systems import SpokenDialogueSystem
from blsp_emo.systems.base import text_problem


def converse(
    system: SpokenDialogueSystem,
    turns: Sequence[np.ndarray | str],
    options: GenerationOptions,
    speak: Callable[[str, str | None], None],
    out: TextIO = sys.stdout,
) -> list[Turn]:
    """Answer each turn (a waveform or typed text) in order as one conversation; return the history."""
    history: list[Turn] = []
    for turn in turns:
        audio, text = (None, turn) if isinstance(turn, str) else (turn, None)
        reply, shown = None, 0
        for reply in system.stream(audio, history, options, text):
            if shown == 0 and reply.emotion is not None:
                scores = " ".join(f"{k} {v:.2f}" for k, v in reply.emotion_scores.items())
                print(f"[emotion: {reply.emotion}]  ({scores})", file=out)
            if shown == 0 and reply.transcript is not None:
                print(f"[heard: {reply.transcript}]", file=out)
            if shown == 0:
                print(f"{system.name}> ", end="", file=out)
            if not reply.done:
                print(reply.text[shown:], end="", flush=True, file=out)
                shown = len(reply.text)
        print(file=out)
        history.extend(reply.turns(audio, text))
        speak(reply.text, reply.emotion)
    return history


def microphone_turns(window_seconds: float, read_line: Callable[[], str] = input, out: TextIO = sys.stdout):
    """Yield waveforms recorded between two Enter presses, or typed lines, until end of input."""
    check_input()
    while True:
        print("Enter: record · type: send text · Ctrl-D: quit", file=out)
        try:
            line = read_line()
        except EOFError:
            return
        if line.strip():
            if problem := text_problem(line.strip()):
                print(f"error: {problem}", file=out)
            else:
                yield line.strip()
            continue
        stop = threading.Event()
        result: list[np.ndarray] = []
        worker = threading.Thread(target=lambda: result.append(record(stop, window_seconds)))  # noqa: B023 (joined below)
        worker.start()
        print("recording... Enter to stop", file=out)
        try:
            read_line()
        except EOFError:
            pass
        stop.set()
        worker.join()
        try:
            yield load_audio(result[0], max_seconds=window_seconds, name="recording")
        except AudioError as e:
            print(f"error: {e}", file=out)


def speaker(synthesizer, save_dir: Path | None, out: TextIO = sys.stdout) -> Callable[[str, str | None], None]:
    """Say a reply in the voice style of its emotion; save the WAV when there is no speaker."""
    from blsp_emo.tts import style_for

    count = [0]

    def speak(text: str, emotion: str | None) -> None:
        audio = synthesizer.synthesize(text, style_for(emotion)) if text else None
        if audio is None:
            return
        try:
            play(*audio)
        except MicrophoneError as e:
            if save_dir is None:
                print(f"(not spoken: {e}; pass --save DIR to keep the audio)", file=out)
                return
            count[0] += 1
            path = save_dir / f"reply_{count[0]:02d}.wav"
            _write_wav(path, *audio)
            print(f"(no speaker: reply audio saved to {path})", file=out)

    return speak


def _write_wav(path: Path, rate: int, samples: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = to_pcm16(samples)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())

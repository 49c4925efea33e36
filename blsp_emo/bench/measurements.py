"""The latency bench's measurements: its options, the clips, each system's replies timed side by
side (medians over repeats), the last turn of a conversation with and without KV reuse, all in a
`Report`."""

from __future__ import annotations

import copy
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from blsp_emo.audio import SAMPLE_RATE, load_audio
from blsp_emo.bench.instruments import EncoderTimer, PeakMemory
from blsp_emo.decoding.generation import GenerationOptions
from blsp_emo.prompts import Turn
from blsp_emo.spoken_reply import complete_sentences, time_to_first_audio
from blsp_emo.systems import SpokenDialogueSystem
from blsp_emo.tts import SpeechSynthesizer
from blsp_emo.voice_style import DEFAULT_POLICY, style_for

EXAMPLES = Path(__file__).resolve().parents[2] / "assets" / "examples"
CLIP_SECONDS = (1.0, 5.0, 15.0, 30.0)


@dataclass(frozen=True)
class BenchOptions:
    clip_seconds: tuple[float, ...] = CLIP_SECONDS
    repeats: int = 5  # measured runs per (system, clip); medians are reported
    warmup: int = 1  # unmeasured runs first (lazy init, allocator, caches)
    new_tokens: int = 32  # every reply is exactly this long
    turns: int = 3  # conversation length for the KV-reuse measurement; 0 skips it

    def __post_init__(self):
        if self.repeats < 1 or self.warmup < 0 or self.new_tokens < 1 or self.turns < 0:
            raise ValueError(f"repeats and new_tokens must be >= 1, warmup and turns >= 0; got {self}")
        if not self.clip_seconds or min(self.clip_seconds) <= 0:
            raise ValueError(f"clip lengths must be positive seconds, got {self.clip_seconds}")

    @property
    def generation(self) -> GenerationOptions:
        return GenerationOptions(
            max_new_tokens=self.new_tokens, min_new_tokens=self.new_tokens, greedy=True, seed=0, stop_repeats=False
        )


@dataclass(frozen=True)
class Result:
    """One row of `--json` `results` (medians); `peak_gpu_mb` only where there is a GPU, `first_audio_s`
    only where a voice speaks (`--tts`)."""

    system: str
    clip_s: float
    first_token_s: float
    total_s: float
    encoder_s: float
    rtf: float
    peak_rss_mb: float
    peak_gpu_mb: float | None = None
    first_audio_s: float | None = None  # time to first audio: the first sentence complete, then synthesized

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None or k not in ("peak_gpu_mb", "first_audio_s")}


@dataclass(frozen=True)
class TurnResult:
    """Time to first token of the last turn of a conversation, with and without KV-cache reuse."""

    system: str
    turns: int
    clip_s: float
    first_token_s_recompute: float
    first_token_s_reuse: float
    total_s_recompute: float
    total_s_reuse: float
    same_tokens: bool  # the reused cache gave the same greedy reply


@dataclass
class Report:
    machine: dict
    settings: dict
    results: list[Result] = field(default_factory=list)
    turns: list[TurnResult] = field(default_factory=list)
    decode: dict = field(default_factory=dict)
    serving: dict = field(default_factory=dict)  # bench_serving.to_json: decode step, concurrent replies, collection

    def ratios(
        self, numerator: str = "blsp-emo", denominators: Sequence[str] = ("cascade", "cascade-ser")
    ) -> list[dict]:
        """`numerator`'s times over each denominator's, per clip (cascade-ser: the pipeline that also hears tone)."""
        rows = {(r.system, r.clip_s): r for r in self.results}
        out = []
        for denominator in denominators:
            for (system, clip), r in rows.items():
                base = rows.get((denominator, clip))
                if system == numerator and base is not None:
                    ratio = {
                        "clip_s": clip,
                        "of": f"{numerator}/{denominator}",
                        "first_token": r.first_token_s / base.first_token_s,
                        "total": r.total_s / base.total_s,
                    }
                    if r.first_audio_s is not None and base.first_audio_s is not None:
                        ratio["first_audio"] = r.first_audio_s / base.first_audio_s
                    out.append(ratio)
        return out

    def to_json(self) -> dict:
        return {
            "machine": self.machine,
            "results": [r.to_json() for r in self.results],
            "ratios": self.ratios(),
            "turns": [asdict(t) for t in self.turns],
            "decode": self.decode,
            "serving": self.serving,
            "settings": self.settings,
        }


# --- the clips ----------------------------------------------------------------------------------


def bench_clips(seconds: Sequence[float], examples: Path = EXAMPLES) -> tuple[dict[float, np.ndarray], str]:
    """One clip per length, cut from the bundled example speech played back to back (a tone if none)."""
    files = sorted(examples.glob("*.wav")) if examples.is_dir() else []
    if files:
        speech = np.concatenate([load_audio(f) for f in files])
        source = f"{examples.name}/*.wav back to back ({len(files)} clips)"
    else:
        t = np.arange(int(max(seconds) * SAMPLE_RATE)) / SAMPLE_RATE
        speech = (0.3 * np.sin(2 * np.pi * (180 + 40 * np.sin(t)) * t)).astype(np.float32)
        source = "a gliding tone (no example clips found)"
    reps = int(np.ceil(max(seconds) * SAMPLE_RATE / speech.size))
    speech = np.tile(speech, reps)
    return {s: speech[: int(round(s * SAMPLE_RATE))].copy() for s in seconds}, source


# --- running ------------------------------------------------------------------------------------


def _timed_reply(system: SpokenDialogueSystem, clip: np.ndarray, options: GenerationOptions, history=()):
    """The reply, the seconds inside its encoders, and its first sentence with the seconds from the
    start until that sentence was complete (None: the reply said nothing)."""
    timer = EncoderTimer(system)
    start, first, reply = time.perf_counter(), None, None
    try:
        for reply in system.stream(clip, history=history, options=options):
            if first is None and (sentences := complete_sentences(reply.text, reply.done)):
                first = (sentences[0], time.perf_counter() - start)
    finally:
        timer.close()
    return reply, timer.seconds, first


def _first_audio(first: tuple[str, float] | None, reply, voice: SpeechSynthesizer | None) -> float | None:
    """Time to first audio, in the voice style the page would use (`spoken_reply.time_to_first_audio`)."""
    if voice is None or first is None:
        return None
    return time_to_first_audio(first[1], first[0], voice, style_for(reply.emotion, DEFAULT_POLICY))


def measure_clip(
    systems: Sequence[SpokenDialogueSystem],
    clip_s: float,
    clip: np.ndarray,
    options: BenchOptions,
    voice: SpeechSynthesizer | None = None,
) -> list[Result]:
    """Medians over `options.repeats` replies of each system to `clip`, after `options.warmup` unmeasured
    ones. The systems take turns reply by reply, so a burst of load on the machine hits them alike.
    With a `voice`, each reply's time to first audio too (its first sentence, spoken after the reply)."""
    gen = options.generation
    for _ in range(options.warmup):
        for system in systems:
            _cold(system)
            reply, _, first = _timed_reply(system, clip, gen)
            _first_audio(first, reply, voice)  # the voice's first use loads it
    runs: dict[str, dict[str, list[float]]] = {
        s.name: {"first": [], "total": [], "encoder": [], "rss": [], "gpu": [], "audio": []} for s in systems
    }
    for _ in range(options.repeats):
        for system in systems:
            _cold(system)  # a first turn: nothing of this prompt is cached yet
            with PeakMemory() as peak:
                reply, encoder_s, first = _timed_reply(system, clip, gen)
            if len(reply.token_ids) != options.new_tokens:
                raise RuntimeError(
                    f"{system.name} replied with {len(reply.token_ids)} tokens, not {options.new_tokens}"
                )
            run = runs[system.name]
            run["first"].append(reply.timings.first_token_s)
            run["total"].append(reply.timings.total_s)
            run["encoder"].append(encoder_s)
            run["rss"].append(peak.rss_mb)
            if peak.gpu_mb is not None:
                run["gpu"].append(peak.gpu_mb)
            if (audio_s := _first_audio(first, reply, voice)) is not None:
                run["audio"].append(audio_s)
    return [_result(name, clip_s, run) for name, run in runs.items()]


def _result(name: str, clip_s: float, run: dict[str, list[float]]) -> Result:
    total = statistics.median(run["total"])
    return Result(
        name,
        clip_s,
        statistics.median(run["first"]),
        total,
        statistics.median(run["encoder"]),
        total / clip_s,
        round(max(run["rss"]), 1),
        round(max(run["gpu"]), 1) if run["gpu"] else None,
        statistics.median(run["audio"]) if run["audio"] else None,
    )


def measure_turns(system: SpokenDialogueSystem, clip_s: float, clip: np.ndarray, options: BenchOptions) -> TurnResult:
    """The last turn of an `options.turns`-turn spoken conversation, re-encoding the history vs reusing its cache."""
    gen = options.generation
    history: list[Turn] = []
    for _ in range(options.turns - 1):
        reply = system.respond(clip, history=history, options=gen)
        history.extend(reply.turns(clip))
    without = _without_prefix_cache(system)
    runs = {}
    for label, sys_ in (("recompute", without), ("reuse", system)):
        firsts, totals, tokens = [], [], None
        for i in range(options.warmup + options.repeats):
            _cold(system)
            if label == "reuse":  # as in a conversation: only the turn before has left its cache
                system.respond(clip, history=history[:-2], options=gen)
            reply = sys_.respond(clip, history=history, options=gen)
            if i >= options.warmup:
                firsts.append(reply.timings.first_token_s)
                totals.append(reply.timings.total_s)
            tokens = reply.token_ids
        runs[label] = (statistics.median(firsts), statistics.median(totals), tokens)
    return TurnResult(
        system.name,
        options.turns,
        clip_s,
        runs["recompute"][0],
        runs["reuse"][0],
        runs["recompute"][1],
        runs["reuse"][1],
        runs["recompute"][2] == runs["reuse"][2],
    )


def _without_prefix_cache(system: SpokenDialogueSystem) -> SpokenDialogueSystem:
    """A shallow copy of `system` that re-encodes the whole history every turn (the behaviour before reuse)."""
    other = copy.copy(system)
    if hasattr(other, "prefix_cache"):
        other.prefix_cache = None
    return other


def has_prefix_cache(system: SpokenDialogueSystem) -> bool:
    return getattr(system, "prefix_cache", None) is not None


def _cold(system: SpokenDialogueSystem) -> None:
    if has_prefix_cache(system):
        system.prefix_cache.clear()


def run(
    systems: Sequence[SpokenDialogueSystem],
    options: BenchOptions,
    machine: dict,
    settings: dict,
    progress: Callable[[str], None] = lambda line: None,
    voice: SpeechSynthesizer | None = None,
) -> Report:
    """Every system on every clip length (`voice`: the voice whose time to first audio is measured)."""
    clips, source = bench_clips(options.clip_seconds)
    report = Report(machine, {**settings, **asdict(options), "clips": source})
    for seconds in options.clip_seconds:
        fitting = [s for s in systems if seconds <= s.window_seconds]
        for system in systems:
            if system not in fitting:
                progress(f"skip {system.name} {seconds:g} s: longer than its {system.window_seconds:g} s window")
        for result in measure_clip(fitting, seconds, clips[seconds], options, voice) if fitting else []:
            audio = "" if result.first_audio_s is None else f"  first audio {result.first_audio_s * 1e3:8.1f} ms"
            progress(
                f"{result.system:12s} {seconds:5.1f} s  first {result.first_token_s * 1e3:8.1f} ms{audio}  "
                f"total {result.total_s * 1e3:8.1f} ms  encoder {result.encoder_s * 1e3:7.1f} ms"
            )
            report.results.append(result)
    if options.turns > 1:
        seconds = 5.0 if 5.0 in clips else options.clip_seconds[0]
        for system in systems:
            if has_prefix_cache(system):
                report.turns.append(measure_turns(system, seconds, clips[seconds], options))
    report.machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return report

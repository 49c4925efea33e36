"""The page of the BLSP-Emo demo: the Talk, Compare, API and Voices tabs, and how it is served.

`build_demo(systems, synthesizer)` only builds the page; `python app.py` loads the models (in worker
processes, or in its own) and serves it. Models are shared read-only by every visitor, whose
conversation lives in per-session `gr.State`. The event handlers are in `webui.callbacks`, the
layout of the tabs in `webui.demo_tabs`; this module puts them together and sets up the queue.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import gradio as gr

from blsp_emo import GenerationOptions, SpokenDialogueSystem
from blsp_emo.tts import NullSynthesizer, SpeechSynthesizer
from webui import demo_tabs, handsfree, study_tabs
from webui.callbacks import NO_MODEL, Callbacks
from webui.evidence_view import Read
from webui.study_api import STUDY_QUEUE, STUDY_WAITING
from webui.waking_queue import WakingQueue

ASSETS = Path(__file__).resolve().parents[1] / "assets"
EXAMPLES_DIR = ASSETS / "examples"
ANALYTICS_EVERY = 50  # events between recomputations of Gradio's monitoring summary


def _banner(systems: Mapping, model_label: str, notes: Sequence[str], synthesizer: SpeechSynthesizer) -> str:
    names = ", ".join(f"`{n}`" for n in systems)
    loaded = f"**Model:** `{model_label}` · **systems:** {names} · **voice:** {synthesizer.name}"
    lines = [loaded if systems else f"⚠️ **{NO_MODEL}**"] + [f"ℹ️ {html.escape(n, quote=False)}" for n in notes]
    return "  \n".join(lines)


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
    evidence: Read | None = None,
) -> gr.Blocks:
    """The page for already-loaded `systems` (may be empty: the page then says how to get a model).

    Args:
        synthesizer: speaks replies; None for no speech.
        model_label: where the models came from, named in the banner and each turn's card.
        notes: one-line problems to show under the banner (systems that failed to load, no TTS).
        options: the default generation settings (also those of the `/respond` API).
        concurrency: model calls run at once, shared by Talk, Compare and the API.
        max_queue: requests waiting beyond which visitors are told the app is busy (the study's calls
            have a bound of their own, `study_api.STUDY_WAITING`).
        stream_interval: seconds between updates of a streaming reply (0: every token).
        study: the blind rating study of the Rate and Results tabs; None for no such tabs.
        evidence: reads the evidence behind a Talk turn's emotion where the models run
            (`EvidenceReader.read` in this process, `WorkerPool.evidence` in a worker); None for none.
    """
    synthesizer = synthesizer or NullSynthesizer()
    cb = Callbacks(dict(systems), synthesizer, model_label, options, stream_interval, evidence)
    with gr.Blocks(title="BLSP-Emo: empathetic speech chat") as demo:
        cb.files.install(demo)  # what a visitor's session leaves on disk ends with it (webui/storage.py)
        gr.Markdown(
            "# 🎙️ BLSP-Emo · empathetic speech chat\nSpeak to it and see the emotion it hears in your "
            "voice, read and hear a reply that takes your tone into account, and compare with systems "
            "that only read your words. Your audio and the spoken replies are kept only while your page "
            "is open: they are deleted when you close it, at the latest about an hour after they were made.",
            elem_id="title",
        )
        gr.Markdown(
            _banner(systems, model_label, notes, synthesizer),
            elem_classes=["banner", "banner-ok" if systems else "banner-warn"],
        )
        with gr.Tabs():
            with gr.Tab("💬 Talk"):
                demo_tabs.talk_tab(cb, systems, examples_dir)
            with gr.Tab("⚖️ Compare"):
                demo_tabs.compare_tab(cb, systems, examples_dir)
            with gr.Tab("🔌 API"):
                demo_tabs.api_tab(cb, systems)
            with gr.Tab("🔊 Voices"):
                demo_tabs.voices_tab(cb)
            study_tabs.build_tabs(study)
        # Gradio builds a visitor's session (a config for each of the page's 170-odd blocks, longer
        # than a typed demo-scale turn) on the session's first request to an event; this one makes
        # that the page's load, not the visitor's first turn (docs/serving.md).
        demo.load(cb.open_session, None, cb.ui.voice, queue=False, show_progress="hidden", api_visibility="private")
        handsfree.install(demo)
        cb.demo = demo
    # Gradio's queue recomputes its monitoring summary (a pandas table of up to its last 10,000
    # events) after every event, on the page's process, at a cost that grows with the events
    # kept; every 50 events keeps the summary fresh and its cost per event small (docs/serving.md).
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", str(ANALYTICS_EVERY))
    demo.queue(default_concurrency_limit=concurrency, max_size=max_queue)
    # Gradio's own queue looks for work every millisecond and overfills under a burst of joins; the
    # study's events wait in a lane of their own, not refused because model requests filled theirs.
    lanes = {STUDY_QUEUE["concurrency_id"]: STUDY_WAITING} if study is not None else {}
    demo._queue = WakingQueue.like(demo._queue, lanes=lanes)
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

"""The layout of the Talk, Compare, API and Voices tabs, and which `Callbacks` each event runs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from blsp_emo import GenerationOptions
from blsp_emo.voice_style import DEFAULT_POLICY, POLICIES, POLICY_HELP
from webui import handsfree
from webui.callbacks import EMOJI, Callbacks, _validation
from webui.storage import spoken_reply


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
        ui.policy = _policy_radio()


def _policy_radio() -> gr.Radio:
    return gr.Radio(
        list(POLICIES),
        value=DEFAULT_POLICY,
        label="Reply voice",
        info=" · ".join(f"{name}: {why}" for name, why in POLICY_HELP.items()),
    )


def _examples(audio: gr.Audio, examples_dir: Path) -> gr.Dataset | None:
    """The example clips for `audio`; their table, or None when there are none."""
    clips = sorted(examples_dir.glob("*.wav")) if examples_dir.is_dir() else []
    if not clips:
        return None
    labels = _example_labels(examples_dir)
    return gr.Examples(
        [[str(c)] for c in clips],
        inputs=[audio],
        label="Example clips (one click, then Send)",
        example_labels=[labels.get(c.name, c.stem.replace("_", " ")) for c in clips],
        examples_per_page=10,
    ).dataset


def _example_labels(examples_dir: Path) -> dict[str, str]:
    """Speaker, emotion and transcript of each listed clip ("Joe, sad: '…'"), from examples.json."""
    import json

    listing = examples_dir / "examples.json"
    if not listing.is_file():
        return {}
    return {entry["file"]: entry["label"] for entry in json.loads(listing.read_text(encoding="utf-8"))}


def talk_tab(cb: Callbacks, systems, examples_dir: Path) -> None:
    ui = cb.ui
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            ui.chatbot = gr.Chatbot(
                label="Conversation",
                height=430,
                feedback_options=None,
                elem_id="chat",
                placeholder="Record or upload a clip, or type, then **Send** — or pick **Hands-free** and just talk.",
            )
            ui.mode = gr.Radio(
                [handsfree.PUSH, handsfree.HANDS_FREE], value=handsfree.PUSH, show_label=False, elem_id="mode"
            )
            ui.audio_in = gr.Audio(
                sources=["microphone", "upload"], type="filepath", label="Your voice", elem_id="voice"
            )
            handsfree.controls(ui)
            ui.text_in = gr.Textbox(placeholder="…or type a message and press Enter", show_label=False)
            with gr.Row():
                send = gr.Button("Send", variant="primary", scale=2)
                regen = gr.Button("🔄 Regenerate")
                clear = gr.Button("🗑️ Clear")
            ui.examples = _examples(ui.audio_in, examples_dir)
        with gr.Column(scale=2, elem_id="side"):
            ui.emotion = gr.Label(label="Detected emotion", num_top_classes=5, elem_id="emotion")
            # why it heard that: sureness, words vs tone, prosody against neutral (webui/evidence_view.py)
            ui.evidence = gr.Markdown(elem_classes=["note", "evidence"], elem_id="evidence")
            ui.transcript = gr.Textbox(label="Transcript (what the system read)", visible=False, interactive=False)
            # Each sentence plays here as soon as it is spoken; the whole reply stays below to replay.
            ui.reply_stream = gr.Audio(
                streaming=True, autoplay=True, interactive=False, label="Spoken reply", elem_id="reply-live", buttons=[]
            )
            ui.reply_audio = spoken_reply(
                label="Whole reply (replay, download)",
                type="numpy",
                format="wav",
                interactive=False,
                buttons=["download"],
                elem_id="reply-whole",
            )
            ui.style = gr.Markdown(elem_classes=["note"])
            ui.card = gr.Markdown(elem_classes=["card"])
            _settings(ui, systems, cb.options)
    ui.chat = gr.State((), time_to_live=3600)  # per visitor; dropped after 1 h idle
    # How the visitor wants replies spoken: set by the page's load and its settings, so that a state, not
    # an input, carries it (an API caller's turn, with no page, is not spoken and keeps its inputs).
    ui.voice = gr.State(None)
    gen = [ui.system, *ui.generation]
    # The inputs are not outputs of the streaming turn (it would have to send them at every update);
    # a quick follow-up empties the one sent. A turn speaks as it writes: its audio is among its outputs.
    outputs = [ui.chatbot, ui.chat, ui.emotion, ui.evidence, ui.transcript, ui.card]
    outputs += [ui.reply_stream, ui.reply_audio, ui.style]
    talk = gr.on(
        [send.click, ui.text_in.submit],
        cb.talk,
        [ui.audio_in, ui.text_in, ui.chat, *gen, ui.voice],
        outputs,
        api_name="talk",
        api_visibility="undocumented",
        concurrency_id="model",
        validator=cb.check_turn,
    )
    talk.success(cb.clear_sent, [ui.chat], [ui.audio_in, ui.text_in], queue=False, api_visibility="private")
    again = regen.click(
        cb.regenerate,
        [ui.chat, *gen, ui.voice],
        outputs,
        api_name="regenerate",
        api_visibility="undocumented",
        concurrency_id="model",
    )
    gr.on(
        [ui.tts_on.change, ui.policy.change],
        cb.voice_choice,
        [ui.tts_on, ui.policy],
        [ui.voice],
        queue=False,
        api_visibility="private",
    )
    handsfree.wire(cb, outputs, [talk, again], gen)
    clear_outputs = [*outputs, ui.vad]  # a new conversation: the stream's VAD starts afresh too
    clear.click(cb.clear, None, clear_outputs, cancels=[talk, again], api_visibility="private")
    ui.system.change(cb.clear, None, clear_outputs, api_visibility="private")


def _what_it_is(system) -> str:
    """A Compare column's heading: the system, what it is, and in plain words whether it hears your tone."""
    tone = (
        f"**Hears your tone: yes** (its {system.emotion_source})"
        if system.emotion_source
        else "**Hears your tone: no** — it answers your words only"
    )
    return f"### {system.name}\n{system.description}  \n{tone}"


def compare_tab(cb: Callbacks, systems, examples_dir: Path) -> None:
    ui = cb.ui
    gr.Markdown(
        "One recording, answered by every system side by side with the same seed and the sampling settings "
        "of **Talk ▸ Settings**. Systems that hear tone show an emotion; the others only read your words. "
        "Each column times its first token and its *first audio*: from its start until the reply's first "
        "sentence is spoken."
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
                gr.Markdown(_what_it_is(system))
                outputs = [
                    gr.Label(label="Detected emotion", num_top_classes=3),
                    gr.Textbox(label="Transcript", visible=False, interactive=False),
                    gr.Textbox(label="Reply", lines=5, interactive=False),
                    gr.Markdown(elem_classes=["note"]),
                    spoken_reply(label="Spoken reply", type="numpy", format="wav", interactive=False),
                    gr.Markdown(elem_classes=["note"]),
                    gr.State(None),
                ]
                start.success(
                    cb.answer,
                    [gr.State(name), audio, seed, *ui.generation, ui.voice],
                    outputs,
                    api_visibility="private",
                    concurrency_id="model",
                )


def api_tab(cb: Callbacks, systems) -> None:
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
        result, speech = gr.JSON(label="result"), spoken_reply(label="spoken reply", type="numpy", format="wav")
    go.click(
        cb.respond,
        [audio, system],
        [result, speech],
        api_name="respond",
        concurrency_id="model",
        validator=cb.check_respond,
    )


def voices_tab(cb: Callbacks) -> None:
    rows = "\n".join(
        f"| {EMOJI.get(e, '')} {e} | {policy} | **{s.name}** | {s.purpose} | {s.rate} | {s.pitch} | {s.volume} | "
        f"{s.pitch_range} |"
        for policy, styles in POLICIES.items()
        for e, s in styles.items()
        if e
    )
    header = (
        "| you sounded | reply voice | voice style | why | words/min | pitch | volume % | pitch range |\n"
        + "|---" * 8
        + "|"
    )
    gr.Markdown(
        f"The spoken reply keeps one voice; its prosody follows the emotion the system heard in you "
        f"(backend: **{cb.synthesizer.name}**; in espeak-ng units, which the neural voice maps onto its pace, pitch "
        f"and loudness). **Reply voice** picks the policy: soothe or mirror (Talk ▸ Settings; beside the text below).\n\n{header}\n{rows}"
    )
    with gr.Row(equal_height=True):
        text = gr.Textbox("I'm here for you. Tell me what happened.", label="Text", scale=3)
        emotion = gr.Radio([e for e in POLICIES[DEFAULT_POLICY] if e], value="sad", label="As if you sounded", scale=2)
        policy = _policy_radio()
        go = gr.Button("Hear it", scale=1)
    audio, note = spoken_reply(label="Spoken", type="numpy", format="wav", autoplay=True), gr.Markdown()
    go.click(cb.voice_typed, [text, emotion, policy], [audio, note], api_visibility="private")

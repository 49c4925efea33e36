"""The Gradio app, driven as visitors and clients drive it: gradio_client round trips and one real browser."""

import importlib.util
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

gr = pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import ValidationError  # noqa: E402

import app  # noqa: E402
import tiny  # noqa: E402
from blsp_emo import GenerationOptions, available_systems  # noqa: E402
from blsp_emo.emotion import EMOTIONS  # noqa: E402
from blsp_emo.systems import load_systems  # noqa: E402
from blsp_emo.tts import NEUTRAL, NullSynthesizer, SpeechSynthesizer, load_synthesizer  # noqa: E402
from webui import demo_page
from webui.callbacks import Callbacks
from webui.live_speech import VoiceChoice

OPTIONS = GenerationOptions(max_new_tokens=12, greedy=True)  # deterministic: a sampled reply may be empty
TALK = {"system_name": "blsp-emo", "temperature": 0.5, "top_p": 0.5, "max_tokens": 12, "greedy": False, "seed": None}


@pytest.fixture(scope="module")
def systems(bundle_dir):
    systems, notes = load_systems(available_systems(), model=str(bundle_dir))
    assert notes == [] and list(systems) == available_systems()
    return systems


@pytest.fixture(scope="module")
def synthesizer():
    return load_synthesizer("espeak") if shutil.which("espeak-ng") else NullSynthesizer()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(systems, synthesizer, tmp_path_factory):
    examples = tmp_path_factory.mktemp("examples")
    sf.write(examples / "sad_tone.wav", tiny.tone(2.0, 180.0), 16000)
    demo = app.build_demo(systems, synthesizer, model_label="tiny bundle", options=OPTIONS, examples_dir=examples)
    app.launch(demo, "127.0.0.1", _free_port(), prevent_thread_lock=True, quiet=True)
    yield demo
    demo.close()


@pytest.fixture(scope="module")
def server(served):
    return served.local_url


def _client(url: str) -> Client:
    return Client(url, verbose=False, httpx_kwargs={"timeout": 120})  # a busy CI machine answers slowly


def _talk(client: Client, audio=None, text="", **kw):
    args = {**TALK, **kw}
    return client.submit(
        audio,
        text,
        args["system_name"],
        args["temperature"],
        args["top_p"],
        args["max_tokens"],
        args["greedy"],
        args["seed"],
        api_name="/talk",
    )


def _texts(chatbot) -> list[str]:
    return [" ".join(part.get("text", "") for part in m["content"]) for m in chatbot]


def test_build_demo_constructs_with_every_part(systems):
    demo = app.build_demo(systems, NullSynthesizer(), options=OPTIONS, examples_dir=Path("/nonexistent"))
    api_names = {fn.api_name for fn in demo.fns.values()}
    assert {"respond", "talk", "regenerate"} <= api_names
    assert not any(isinstance(b, gr.Dataset) for b in demo.blocks.values())  # no example clips, no Examples
    labels = [b for b in demo.blocks.values() if isinstance(b, gr.Label)]
    assert len(labels) == 1 + len(systems)  # Talk + one per Compare column


class _StyleRecorder(SpeechSynthesizer):
    """Says a fixed tone and remembers the style it was asked for."""

    name = "recorder"

    def __init__(self):
        self.styles = []

    def synthesize(self, text, style=NEUTRAL):
        self.styles.append(style)
        return 16000, np.zeros(1600, np.float32)


def test_the_reply_voice_policy_picks_the_style(monkeypatch, tmp_path):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))  # the reply WAVs land here
    recorder = _StyleRecorder()
    cb = Callbacks({}, recorder, "stub", OPTIONS)
    _, soothing = cb.voice("I hear you.", "sad")  # soothe by default
    _, mirroring = cb.voice("I hear you.", "sad", policy="mirror")
    assert [s.name for s in recorder.styles] == ["gentle", "downcast"]
    assert "**gentle** (soothe)" in soothing and "**downcast** (mirror)" in mirroring
    with pytest.raises(gr.Error, match="unknown reply voice 'echo'"):
        cb.voice_typed("I hear you.", "sad", "echo")
    demo = app.build_demo({}, recorder, examples_dir=Path("/nonexistent"))
    radios = [b for b in demo.blocks.values() if isinstance(b, gr.Radio) and b.label == "Reply voice"]
    assert len(radios) == 2 and all(r.value == "soothe" for r in radios)  # Talk settings and the Voices tab


def test_the_queue_recomputes_its_monitoring_summary_only_every_so_many_events(monkeypatch):
    # Gradio reads the setting when the queue is made; were it renamed, the summary would again be
    # recomputed (a pandas table of up to 10,000 events) after every event on the page's process.
    monkeypatch.delenv("GRADIO_ANALYTICS_CACHE_FREQUENCY", raising=False)
    demo = app.build_demo({}, None)
    assert demo._queue.ANAYLTICS_CACHE_FREQUENCY == demo_page.ANALYTICS_EVERY > 1


def test_compare_columns_share_one_callback_and_one_seed(systems, clip_path):
    demo = app.build_demo(systems, NullSynthesizer(), options=OPTIONS)
    column_fns = [fn.fn for fn in demo.fns.values() if getattr(fn.fn, "__name__", "") == "answer"]
    assert len(column_fns) == len(systems) and len({f.__func__ for f in column_fns}) == 1
    callbacks = column_fns[0].__self__
    seed = callbacks.start_compare(str(clip_path), None)
    # blsp-emo hears tone through its emotion head, cascade-ser through its classifier; blsp and cascade do not.
    hears_tone = {"blsp-emo", "cascade-ser"}
    assert {name for name, system in systems.items() if system.emotion_source} == hears_tone
    for name in systems:
        answers = callbacks.answer(name, str(clip_path), seed, 0.5, 0.5, 12, False, None, VoiceChoice())
        (label, transcript, *_), *later = list(answers)
        *_, timings, spoken, note, reply = later[-1]
        assert reply.system == name and reply.seed == seed and f"seed `{seed}`" in timings
        assert spoken is None and "--tts none" in note  # NullSynthesizer: the column says so
        assert isinstance(label, dict) == bool(reply.emotion_scores)
        assert transcript.visible == (reply.transcript is not None)
        if name in hears_tone:  # a score for every emotion, shown with its emoji
            assert isinstance(label, dict) and {key.split()[-1] for key in label} == set(EMOTIONS), (name, label)
        else:
            assert label == "🔇 this system hears no tone", (name, label)
        # Components go with the first update only; later ones repeat plain values, never leave an
        # output out (Gradio would rebuild a left-out component at every update).
        assert later and all(isinstance(update[0], dict) == bool(reply.emotion_scores) for update in later)
        assert all(update[1] == reply.transcript and not _skips(update) for update in later)


def _skips(values) -> bool:
    return any(isinstance(v, dict) and v.get("__type__") == "update" for v in values)


def _talk_fn(demo):
    return next(fn for fn in demo.fns.values() if fn.api_name == "talk")


def test_every_update_of_a_turn_gives_every_output_a_value(systems, clip_path):
    demo = app.build_demo(systems, NullSynthesizer(), options=OPTIONS)
    talk = _talk_fn(demo)
    cb, outputs = talk.fn.__self__, set(talk.outputs)
    assert cb.ui.audio_in not in outputs and cb.ui.text_in not in outputs  # a follow-up empties them
    chat = ()
    for audio, text in [(str(clip_path), ""), (None, "and then?"), (str(clip_path), "")]:
        updates = list(cb.talk(audio, text, chat, "blsp-emo", 0.5, 0.5, 16, True, 0))
        assert len(updates) >= 2  # at least a first token and the end
        for i, update in enumerate(updates):
            assert set(update) == outputs and not _skips(update.values())
            if i:  # components (a new title, a box shown) only in the first
                assert not any(isinstance(v, gr.components.Component) for v in update.values())
        chat = updates[-1][cb.ui.chat]
        assert chat[-1].card == updates[-1][cb.ui.card] and f"seed `{chat[-1].reply.seed}`" in chat[-1].card
        # while it is written, the state holds the reply so far as an interrupted turn (what stays if the
        # visitor speaks over it); the end replaces it with the answered one
        assert all(u[cb.ui.chat][:-1] == chat[:-1] and u[cb.ui.chat][-1].interrupted for u in updates[:-1])
        assert not chat[-1].interrupted and updates[-1][cb.ui.reply_stream] is None  # API callers: not spoken
    spoken, typed = cb.clear_sent(chat), cb.clear_sent(chat[:2])
    assert spoken == (None, gr.skip()) and typed == (gr.skip(), "")  # the input sent is emptied, the other kept


def test_a_turn_sends_a_component_only_when_the_transcript_box_appears_or_hides(systems, clip_path):
    """Plain values keep Gradio from rebuilding a component's config at every turn (README, Speed)."""
    demo = app.build_demo(systems, NullSynthesizer(), options=OPTIONS)
    cb = _talk_fn(demo).fn.__self__
    ui, settings = cb.ui, (0.5, 0.5, 8, True, 0)

    def turn(audio, text, chat, system):
        updates = list(cb.talk(audio, text, chat, system, *settings))
        return updates[0], updates[-1][ui.chat]

    first, chat = turn(str(clip_path), "", (), "blsp-emo")  # a new chat shows no transcript
    assert isinstance(first[ui.emotion], dict) and first[ui.transcript] is None
    again, chat = turn(str(clip_path), "", chat, "blsp-emo")
    assert isinstance(again[ui.emotion], dict) and again[ui.transcript] is None
    typed, chat = turn(None, "hello there", chat, "blsp-emo")  # the label says why it has no scores
    assert typed[ui.emotion] == "⌨️ typed: no tone to hear" and typed[ui.transcript] is None
    spoken, chat = turn(str(clip_path), "", chat, "blsp-emo")  # ... and has scores again
    assert isinstance(spoken[ui.emotion], dict)
    blsp, _ = turn(str(clip_path), "", (), "blsp")
    assert blsp[ui.emotion] == "🔇 this system hears no tone"
    heard, chat = turn(str(clip_path), "", (), "cascade")  # a transcript to show: the box appears once
    assert isinstance(heard[ui.transcript], gr.Textbox) and heard[ui.transcript].visible
    heard_again, _ = turn(str(clip_path), "", chat, "cascade")
    assert isinstance(heard_again[ui.transcript], str)


class _FailsAfterFirstToken:
    """A system whose decoding fails after its first update (what a worker error looks like)."""

    def __init__(self, real):
        self.real, self.name, self.description = real, real.name, real.description

    def stream(self, **kwargs):
        replies = self.real.stream(**kwargs)
        yield next(replies)
        raise gr.Error("decoding failed")


def test_a_failed_turn_puts_back_the_label_and_transcript_the_chat_says_are_shown(systems, clip_path):
    demo = app.build_demo(systems, NullSynthesizer(), options=OPTIONS)
    cb = _talk_fn(demo).fn.__self__
    ui, options = cb.ui, GenerationOptions(greedy=True, max_new_tokens=8)
    typed = app.Exchange("hello", None, "hello", None)
    *_, last = cb._turn(systems["blsp-emo"], (), typed, options, None)
    chat = last[ui.chat]  # the page now shows the typed turn's title
    spoken = app.Exchange({"path": str(clip_path)}, tiny.tone(1.0), None, None)
    updates = []
    with pytest.raises(gr.Error, match="decoding failed"):
        for update in cb._turn(_FailsAfterFirstToken(systems["blsp-emo"]), chat, spoken, options, chat[-1]):
            updates.append(update)
    assert isinstance(updates[0][ui.emotion], dict)  # the failed turn showed the scores it heard ...
    assert updates[-1][ui.emotion] == "⌨️ typed: no tone to hear"  # ... and the typed turn's label is back
    assert len(updates[-1][ui.chatbot]) == 2  # the failed turn's bubbles are gone
    assert updates[-1][ui.chat] == chat and updates[-1][ui.card] == chat[-1].card  # and its card
    updates = []
    with pytest.raises(gr.Error, match="decoding failed"):  # a failed regenerate keeps the old reply
        for update in cb._turn(_FailsAfterFirstToken(systems["blsp-emo"]), (), chat[-1], options, chat[-1]):
            updates.append(update)
    assert len(updates[-1][ui.chatbot]) == 2 and updates[-1][ui.chatbot][1]["content"] == chat[-1].reply.text


def test_without_models_the_page_starts_and_says_how_to_get_one(tmp_path):
    systems, notes = load_systems(available_systems(), model=str(tmp_path / "missing"))
    assert systems == {} and "blsp-emo, blsp not loaded: model folder" in notes[0] and "does not exist" in notes[0]
    demo = app.build_demo(systems, None, notes=notes)
    markdown = " ".join(str(b.value) for b in demo.blocks.values() if isinstance(b, gr.Markdown))
    assert "python -m train demo" in markdown and "--model DIR" in markdown and "does not exist" in markdown
    respond = next(fn.fn for fn in demo.fns.values() if fn.api_name == "respond")
    with pytest.raises(gr.Error, match="No model is loaded"):
        respond("clip.wav")


@pytest.mark.server
def test_examples_are_picked_up_from_the_folder(server):
    config = _client(server).config
    datasets = [c for c in config["components"] if c["type"] == "dataset"]
    assert datasets and all("sad tone" in str(c["props"]) for c in datasets)


@pytest.mark.server
def test_the_pages_load_builds_the_visitors_session_so_the_first_turn_does_not(served):
    import httpx

    url, session = served.local_url, "page-just-loaded"
    loads = [d for d in httpx.get(url + "config").json()["dependencies"] if any(t == "load" for _, t in d["targets"])]
    assert len(loads) == 1 and loads[0]["queue"] is False and session not in served.state_holder
    answer = httpx.post(
        url + "gradio_api/run/predict",
        json={"data": [], "fn_index": loads[0]["id"], "session_hash": session, "event_data": None, "trigger_id": None},
    )
    assert answer.status_code == 200 and session in served.state_holder


@pytest.mark.server
def test_respond_endpoint_returns_the_cli_json_and_a_wav(server, clip_path, synthesizer):
    result, speech = _client(server).predict(handle_file(str(clip_path)), api_name="/respond")
    assert list(result) == ["file", "system", "emotion", "emotion_scores", "reply", "transcript", "timings"]
    assert result["file"] == clip_path.name and result["system"] == "blsp-emo" and result["transcript"] is None
    assert result["emotion"] in EMOTIONS and list(result["emotion_scores"]) == list(EMOTIONS)
    assert sum(result["emotion_scores"].values()) == pytest.approx(1.0, abs=1e-4)
    assert result["reply"].strip() and set(result["timings"]) == {"first_token_s", "total_s"}
    if isinstance(synthesizer, NullSynthesizer):
        assert speech is None
    else:
        info = sf.info(speech)
        assert info.format == "WAV" and info.frames > 0.2 * info.samplerate


@pytest.mark.server
def test_respond_with_a_system_name_and_an_unknown_one(server, clip_path):
    client = _client(server)
    result, _ = client.predict(handle_file(str(clip_path)), "cascade", api_name="/respond")
    assert result["system"] == "cascade" and isinstance(result["transcript"], str)
    assert result["emotion"] is None and result["emotion_scores"] == {}
    with pytest.raises(ValidationError, match=r"unknown system 'nope'; available: \['blsp-emo'"):
        client.predict(handle_file(str(clip_path)), "nope", api_name="/respond")


def _bad_inputs(folder: Path) -> dict[str, tuple[Path, str]]:
    (folder / "empty.wav").write_bytes(b"")
    sf.write(folder / "silent.wav", np.zeros(32000, np.float32), 16000)
    sf.write(folder / "long.wav", tiny.tone(12.0), 16000)  # the tiny models' window is 10 s
    (folder / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 4)
    (folder / "notes.txt").write_text("this is not audio\n" * 20)
    return {
        "empty": (folder / "empty.wav", "empty.wav: the file is empty"),
        "silent": (folder / "silent.wav", "silent.wav: the audio is silent"),
        "too long": (folder / "long.wav", "longer than the model's 10 s window"),
        "corrupt": (folder / "corrupt.wav", "corrupt.wav: not a readable audio file"),
        "not audio": (folder / "notes.txt", "notes.txt: not a readable audio file"),
    }


@pytest.mark.server
def test_bad_inputs_give_a_clear_message_and_the_server_stays_up(server, clip_path, tmp_path):
    client = _client(server)
    for case, (path, message) in _bad_inputs(tmp_path).items():
        with pytest.raises(ValidationError, match=message) as raised:  # reported on the audio input
            client.predict(handle_file(str(path)), api_name="/respond")
        assert "Traceback" not in str(raised.value), case
    with pytest.raises(ValidationError, match="No audio: record"):
        client.predict(None, api_name="/respond")  # no audio: a blocked or missing microphone
    assert all(out == {"__type__": "update"} for out in _talk(client).result())  # Talk: a notice, no change
    result, _ = client.predict(handle_file(str(clip_path)), api_name="/respond")
    assert result["reply"].strip()


@pytest.mark.server
def test_reply_streams_token_by_token(server):
    job = _talk(_client(server), text="I lost my keys today.", seed=3)
    final = job.result()
    replies = [_texts(out[0])[-1] for out in job.outputs()]
    assert len(set(replies)) >= 3  # many growing snapshots, not one final message
    assert [len(r) for r in replies] == sorted(len(r) for r in replies)
    assert _texts(final[0])[-1] == replies[-1].strip()


@pytest.mark.server
def test_two_visitors_at_once_never_see_each_others_turns(server, clip_path):
    a, b = _client(server), _client(server)
    first = [_talk(a, text="alpha one"), _talk(b, audio=handle_file(str(clip_path)))]
    [job.result() for job in first]
    second = [_talk(a, text="alpha two"), _talk(b, text="bravo two")]
    chat_a, chat_b = (job.result()[0] for job in second)
    texts_a, texts_b = _texts(chat_a), _texts(chat_b)
    assert len(chat_a) == len(chat_b) == 4  # two turns each: user, assistant, user, assistant
    assert texts_a[0] == "alpha one" and texts_a[2] == "alpha two"
    assert chat_b[0]["content"][0]["type"] == "file" and texts_b[2] == "bravo two"
    assert not any("alpha" in t for t in texts_b) and not any("bravo" in t for t in texts_a)


@pytest.mark.server
def test_regenerate_replaces_the_last_reply(server):
    client = _client(server)
    _talk(client, text="hello there").result()
    chat = client.submit(*TALK.values(), api_name="/regenerate").result()[0]
    assert len(chat) == 2 and _texts(chat)[0] == "hello there"
    nothing = _client(server).submit(*TALK.values(), api_name="/regenerate").result()  # a warning, not an error
    assert all(out == {"__type__": "update"} for out in nothing)


CHROMIUM = Path("/usr/bin/chromium")
# The recorder's clock (m:ss) has reached 2 s of audio heard from the fake microphone.
RECORDED_2_S = """() => {
    const shown = document.querySelector('#voice time.duration')?.textContent.trim() || '0:00';
    const [minutes, seconds] = shown.split(':').map(Number);
    return 60 * minutes + seconds >= 2;
}"""
# The turn succeeded (its success handler emptied the voice input) and every event it started, the spoken
# reply included, has ended (Gradio hides an output's status tracker when its event is over).
TURN_AND_SPEECH_DONE = """() => !document.querySelector('#voice audio')
    && [...document.querySelectorAll('[data-testid=status-tracker]')].every(t => t.classList.contains('hide'))"""


@pytest.mark.server
@pytest.mark.browser
def test_browser_upload_and_microphone_get_an_emotion_and_a_reply(server, clip_path, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright; never `playwright install`")
    flags = [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={clip_path}",
    ]
    outside = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=flags)
        page = browser.new_context(viewport={"width": 1360, "height": 1000}, permissions=["microphone"]).new_page()
        local = (server, "data:", "blob:")
        page.on("request", lambda r: None if r.url.startswith(local) else outside.append(r.url))
        with page.expect_response(lambda r: "/run/predict" in r.url):  # the load event: the session is built
            page.goto(server)
        page.get_by_role("button", name="Send", exact=True).click()  # nothing recorded: said on the input
        page.get_by_text("Nothing to send").wait_for(timeout=10_000)
        page.get_by_role("button", name="Record", exact=True).first.click()  # Chromium's fake microphone
        page.wait_for_function(RECORDED_2_S, timeout=30_000)
        with page.expect_response(lambda r: "/upload" in r.url):  # Send is refused while an upload runs
            page.locator("button.stop-button").first.click()
        page.get_by_role("button", name="Send", exact=True).click()
        page.wait_for_selector("#emotion .output-class", timeout=30_000)
        page.locator("#chat .bot").first.wait_for(timeout=30_000)
        page.get_by_role("button", name="Upload file").first.click()
        with page.expect_response(lambda r: "/upload" in r.url):
            page.locator("#voice input[type=file]").set_input_files(str(clip_path))
        page.get_by_role("button", name="Send", exact=True).click()
        page.wait_for_function("document.querySelectorAll('#chat .bot').length >= 2", timeout=30_000)
        page.wait_for_function(TURN_AND_SPEECH_DONE, timeout=30_000)  # the final card and spoken reply are shown
        shot = tmp_path / "talk.png"
        page.screenshot(path=str(shot), full_page=True)
        emotion = page.locator("#emotion .output-class").inner_text()
        replies = page.locator("#chat .bot").all_inner_texts()
        browser.close()
    print(f"screenshot: {shot}")
    assert any(e in emotion for e in EMOTIONS)
    # Both turns got a reply bubble; the tiny random model may answer one with only whitespace.
    assert len(replies) == 2 and any(r.strip() for r in replies)
    assert outside == []  # offline: no CDN, fonts or analytics


def test_a_negative_max_batch_is_refused_before_any_model_loads():
    with pytest.raises(SystemExit, match="--max-batch must be >= 0, got -1"):
        app.main(["--max-batch", "-1", "--model", "/nonexistent"])


def test_a_negative_worker_count_is_refused_before_any_model_loads():
    with pytest.raises(SystemExit, match="--workers must be >= 0, got -1"):
        app.main(["--workers", "-1", "--model", "/nonexistent"])


def test_worker_count_follows_the_machine_and_the_model(monkeypatch):
    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv("BLSP_EMO_MODEL", raising=False)
    assert app.default_workers(app.parse_args([])) == min(cores, 2)  # the bundled models: one per core
    assert app.default_workers(app.parse_args(["--concurrency", "1"])) == 1
    assert app.default_workers(app.parse_args(["--model", "some/model"])) == 1  # each worker holds a copy
    assert app.default_workers(app.parse_args(["--device", "cuda"])) == 1
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "spaces" else real(name, *a))
    assert app.default_workers(app.parse_args([])) == 0  # ZeroGPU: the GPU is lent to this process only

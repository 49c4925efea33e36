"""Talk as a spoken conversation, in process: each sentence of a reply spoken as soon as it is written,
speech over a reply stopping it (barge-in), the hands-free listener sending turns by itself, and the
bounds on what a visitor's stream and turns keep."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

gr = pytest.importorskip("gradio")
from gradio.context import LocalContext  # noqa: E402

import app  # noqa: E402
from blsp_emo.systems.base import Reply, SpokenDialogueSystem, Timings  # noqa: E402
from blsp_emo.tts import NEUTRAL, SpeechSynthesizer  # noqa: E402
from webui import handsfree, live_speech  # noqa: E402
from webui.live_speech import LiveTurns, VoiceChoice  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples"
SETTINGS = ("scripted", 0.5, 0.5, 16, True, 0)
SAID = "I hear you. That sounds really hard. Tell me more about it."


class Scripted(SpokenDialogueSystem):
    """Says `SAID` word by word, having heard sadness; remembers whether its stream was closed early."""

    name, description, window_seconds, emotion_source = "scripted", "says the same thing", 30.0, "script"

    def __init__(self):
        self.closed = 0

    def stream(self, audio=None, history=(), options=None, text=None):
        words, scores = SAID.split(), {"sad": 0.9, "neutral": 0.1}
        try:
            for n in range(1, len(words) + 1):
                partial = " ".join(words[:n])
                yield Reply(self.name, partial, "sad", scores, None, Timings(0.01, 0.01 * n), tuple(range(n)), 0, False)
            yield Reply(self.name, SAID, "sad", scores, None, Timings(0.01, 0.2), tuple(range(len(words))), 0, True)
        except GeneratorExit:
            self.closed += 1
            raise


class Voice(SpeechSynthesizer):
    """0.1 s of audio per word."""

    name = "test voice"

    def __init__(self):
        self.said = []

    def synthesize(self, text, style=NEUTRAL):
        self.said.append(text)
        return 16000, np.full(1600 * len(text.split()), 0.1, np.float32)


@pytest.fixture()
def page(monkeypatch, tmp_path):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))  # the turns' and replies' WAVs land here
    system, voice = Scripted(), Voice()
    demo = app.build_demo({"scripted": system}, voice, examples_dir=Path("/nonexistent"))
    talk = next(fn.fn for fn in demo.fns.values() if fn.api_name == "talk")
    return SimpleNamespace(demo=demo, cb=talk.__self__, ui=talk.__self__.ui, system=system, voice=voice)


@pytest.fixture()
def session():
    """A request of the session 'visitor-1', as Gradio sets one around each event handler."""
    token = LocalContext.request.set(SimpleNamespace(session_hash="visitor-1"))
    yield "visitor-1"
    LocalContext.request.reset(token)
    live_speech.LIVE.forget("visitor-1")


def test_each_sentence_plays_as_soon_as_it_is_written_and_the_whole_reply_stays(page, session):
    updates = list(page.cb.talk(None, "hello", (), *SETTINGS, VoiceChoice()))
    chunks = [(i, u[page.ui.reply_stream]) for i, u in enumerate(updates) if u[page.ui.reply_stream] is not None]
    assert page.voice.said == ["I hear you.", "That sounds really hard.", "Tell me more about it."]
    # the first sentence is sent when the second begins, long before the reply is done
    assert len(chunks) == 3 and chunks[0][0] == 3 and chunks[-1][0] == len(updates) - 1
    for _, chunk in chunks:
        assert chunk.startswith(b"RIFF") and sf.info(__import__("io").BytesIO(chunk)).samplerate == 16000
    last = updates[-1]
    whole = sf.info(last[page.ui.reply_audio])  # the whole reply, a WAV in the session's folder
    assert whole.frames == 1600 * len(SAID.split()) and "/replies/" in last[page.ui.reply_audio]
    assert "**gentle** (soothe)" in last[page.ui.style] and "you sounded sad" in last[page.ui.style]
    assert "first audio" in last[page.ui.card] and "first audio" not in updates[2][page.ui.card]
    assert not last[page.ui.chat][-1].interrupted and all(u[page.ui.reply_audio] is None for u in updates[:-1])


def test_replies_are_silent_when_the_visitor_turned_speech_off_or_calls_the_api(page, session):
    off = list(page.cb.talk(None, "hello", (), *SETTINGS, VoiceChoice(enabled=False)))
    api = list(page.cb.talk(None, "hello", (), *SETTINGS[:-1], 0))  # no voice choice: an API caller
    assert page.voice.said == [] and all(u[page.ui.reply_stream] is None for u in off + api)
    assert off[-1][page.ui.style] == "🔇 Spoken replies are off (Settings)." and api[-1][page.ui.style] == ""


def test_speech_over_a_reply_stops_it_and_keeps_what_was_said(page, session):
    turn = page.cb.talk(None, "hello", (), *SETTINGS, VoiceChoice())
    updates = []
    for update in turn:
        updates.append(update)
        if update[page.ui.reply_stream] is not None:  # the first sentence is playing: the visitor speaks
            assert live_speech.LIVE.interrupt(session)
    assert page.system.closed == 1  # the decoding stopped, not only the page's part
    assert page.voice.said == ["I hear you."] and len(updates) == 4
    kept = updates[-1][page.ui.chat][-1]  # the conversation keeps the reply as far as it went
    assert kept.interrupted and kept.reply.text == "I hear you. That"
    assert page.cb.clear()[page.ui.reply_stream] is None
    from webui.callbacks import _messages

    assert _messages((kept,))[-1]["content"].endswith("— *(interrupted)*")


def test_a_reply_counts_as_playing_until_its_audio_has_played():
    turns, clock = LiveTurns(), [100.0]
    live_speech.time.monotonic, real = (lambda: clock[0]), live_speech.time.monotonic
    try:
        assert not turns.interrupt("a")  # nothing to stop
        first = turns.begin("a")
        assert turns.interrupt("a") and first.is_set() and not turns.interrupt("a")  # being written: stopped once
        second = turns.begin("a")
        turns.played("a", second, 3.0)
        turns.finish("a", second)
        clock[0] += live_speech.PLAYER_DELAY_S + 2.9  # written, still playing
        assert turns.interrupt("a") and second.is_set()
        third = turns.begin("a")
        turns.finish("a", third)
        assert not turns.interrupt("a")  # written and nothing played: nothing to stop
        writing = turns.begin("b")
        assert len(turns) == 1  # a's turn is over and played: forgotten
        assert turns.begin("b") is not writing and writing.is_set()  # a new turn stops the one before
        turns.forget("b")
        assert len(turns) == 0
    finally:
        live_speech.time.monotonic = real


def test_a_sessions_old_streamed_replies_are_dropped():
    ended = []
    stream = lambda name: SimpleNamespace(end_stream=lambda: ended.append(name))  # noqa: E731
    blocks = SimpleNamespace(pending_streams={"s": {f"run{i}": {7: stream(f"run{i}")} for i in range(4)}})
    live_speech.prune_streams(blocks, "s", keep=2)
    assert list(blocks.pending_streams["s"]) == ["run2", "run3"] and ended == ["run0", "run1"]
    live_speech.prune_streams(blocks, None)  # outside a session: nothing to do
    live_speech.prune_streams(None, "s")


def _microphone(*parts: np.ndarray, rate: int = 48_000) -> list[tuple[int, np.ndarray]]:
    """`parts` (16 kHz) back to back as Chromium's microphone streams them: 0.3 s chunks of int16 at 48 kHz."""
    import librosa

    audio = librosa.resample(np.concatenate(parts), orig_sr=16_000, target_sr=rate)
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
    step = int(handsfree.LISTEN_EVERY_S * rate)
    return [(rate, pcm[i : i + step]) for i in range(0, pcm.size, step)]


def test_the_listener_sends_each_spoken_turn_by_itself_and_speech_stops_a_reply(page, session):
    clip, _ = sf.read(EXAMPLES / "annie_sad.wav", dtype="float32")
    quiet = np.zeros(24_000, np.float32)
    listener, state, heard, barge = handsfree.Listener(page.cb), None, None, 0
    sent = []
    for chunk in _microphone(quiet, clip, quiet, clip, quiet):
        state, heard, barge, status = listener.listen(chunk, state, 0.8, heard, barge)
        if heard is not None and (not sent or sent[-1] is not heard):
            sent.append(heard)
            live_speech.LIVE.begin(session)  # the turn is being answered: the next speech stops it
        assert sum(a.size for a in state.audio) <= (20 + 1) * 48_000  # bounded: one turn at most
    assert [h.number for h in sent] == [1, 2] and barge == 1
    for h in sent:
        info = sf.info(h.path)
        assert info.samplerate == 16_000 and info.duration == pytest.approx(clip.size / 16_000, abs=0.6)
        assert 0.8 <= h.waited_s < 1.2 and h.pause_s == 0.8 and not h.cut
    assert "turn 2 sent" in status
    assert listener.reset() == (None, handsfree.READY)
    with pytest.raises(gr.Error, match="microphone sample rate 1000 Hz"):
        listener.listen((1000, np.zeros(300, np.int16)), None, 0.8, None, 0)


def test_a_hands_free_turn_is_answered_and_timed_from_the_end_of_the_speech(page, session):
    clip, _ = sf.read(EXAMPLES / "annie_sad.wav", dtype="float32")
    path = page.cb.files.write_wav(16_000, (clip * 32767).astype(np.int16))
    heard = handsfree.HeardTurn(path, 1, live_speech.time.monotonic() - 1.0, 0.9, 0.8, 4.5, False)
    updates = list(handsfree.Listener(page.cb).talk(heard, (), VoiceChoice(), *SETTINGS))
    card = updates[-1][page.ui.card]
    first_audio = float(card.split("first audio ")[1].split(" s")[0])
    assert first_audio >= 1.0 and "sent 0.90 s after your speech ended (pause 0.8 s)" in card
    assert updates[-1][page.ui.chat][-1].shown == {"path": path}


def test_hands_free_shows_its_microphone_in_place_of_push_to_talk(page):
    ui = page.ui
    shown = handsfree.Listener(page.cb).mode(handsfree.HANDS_FREE)
    assert shown[ui.handsfree]["visible"] and not shown[ui.audio_in]["visible"] and shown[ui.vad] is None
    assert handsfree.Listener(page.cb).mode(handsfree.PUSH)[ui.audio_in]["visible"]
    stream = next(fn for fn in page.demo.fns.values() if fn.fn.__name__ == "listen")
    assert stream.concurrency_limit == handsfree.LISTENERS and stream.time_limit == handsfree.LISTEN_LIMIT_S
    assert stream.concurrency_id == "listen" and stream.stream_every == handsfree.LISTEN_EVERY_S


# --- in Chromium, with a fake microphone ---------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
LONG = ("I hear you. That sounds really hard, and I am glad you told me. " * 5).split()  # 65 words
# Every play, pause and end of every audio element, with the id of the block it is in.
MEDIA_LOG = """
window.__media = [];
for (const type of ['play', 'playing', 'pause', 'ended']) {
  document.addEventListener(type, (e) => {
    if (!(e.target instanceof HTMLMediaElement)) return;
    const box = e.target.closest('[id]');
    window.__media.push({type, id: box ? box.id : null, t: e.target.currentTime});
  }, true);
}"""
PLAYING = "() => window.__media.some(m => m.type === 'playing' && m.id === 'reply-live')"
TWO_TURNS_ANSWERED = """() => document.querySelectorAll('#chat .user').length === 2
    && [...document.querySelectorAll('#chat .bot')].filter(b => b.innerText.trim().length > 20).length === 2"""
TIMEOUT_MS = 180_000  # a busy 2-core machine


class Paced(Scripted):
    """`LONG`, one word every `delay` seconds."""

    delay = 0.0

    def stream(self, audio=None, history=(), options=None, text=None):
        scores = {"sad": 0.9, "neutral": 0.1}
        try:
            for n in range(1, len(LONG) + 1):
                __import__("time").sleep(self.delay)
                partial = " ".join(LONG[:n])
                yield Reply(self.name, partial, "sad", scores, None, Timings(0.01, 0.01 * n), tuple(range(n)), 0, False)
            yield Reply(
                self.name, " ".join(LONG), "sad", scores, None, Timings(0.01, 1.0), tuple(range(len(LONG))), 0, True
            )
        except GeneratorExit:
            self.closed += 1
            raise


class Tone(SpeechSynthesizer):
    """A 220 Hz tone, 0.3 s per word: something a player can play."""

    name = "tone"

    def synthesize(self, text, style=NEUTRAL):
        t = np.arange(int(16000 * 0.3 * len(text.split()))) / 16000
        return 16000, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def talking():
    system = Paced()
    demo = app.build_demo({"scripted": system}, Tone(), examples_dir=Path("/nonexistent"))
    app.launch(demo, "127.0.0.1", _free_port(), prevent_thread_lock=True, quiet=True)
    yield SimpleNamespace(url=demo.local_url, system=system)
    demo.close()


def _two_utterances(folder: Path, gap_s: float) -> Path:
    """What the fake microphone plays once: an utterance, `gap_s` of silence, another, then silence."""
    first, _ = sf.read(EXAMPLES / "annie_sad.wav", dtype="float32")
    second, _ = sf.read(EXAMPLES / "edward_happy.wav", dtype="float32")
    quiet = lambda seconds: np.zeros(int(16_000 * seconds), np.float32)  # noqa: E731
    path = folder / f"two-utterances-{gap_s:g}s.wav"
    # 2 s first: the stream starts up (a busy machine loses its first second)
    sf.write(path, np.concatenate([quiet(2.0), first, quiet(gap_s), second, quiet(60)]), 16_000, subtype="PCM_16")
    return path


def _hands_free(playwright, url: str, microphone: Path):
    """Chromium on the page, hands-free picked and Record pressed once: the microphone plays `microphone`."""
    flags = [
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-sync",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone}%noloop",
        "--autoplay-policy=no-user-gesture-required",
    ]
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=flags)
    page = browser.new_context(viewport={"width": 1360, "height": 1000}, permissions=["microphone"]).new_page()
    page.add_init_script(MEDIA_LOG)
    streams = set()  # the replies whose spoken audio the page fetched
    page.on(
        "request", lambda r: streams.add(r.url.split("/stream/")[1].rsplit("/", 2)[0]) if "playlist" in r.url else None
    )
    with page.expect_response(lambda r: "/run/predict" in r.url):  # the load event: the session is built
        page.goto(url)
    page.locator("#mode").get_by_text("Hands-free").click()
    page.locator("#live-mic").get_by_role("button", name="Record").click()  # the only click
    return browser, page, streams


def _browser():
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    return pytest.importorskip("playwright.sync_api", reason="pip install playwright; never `playwright install`")


@pytest.mark.server
@pytest.mark.browser
def test_browser_hands_free_sends_both_turns_without_a_click_and_speaks_each_reply(talking, tmp_path):
    playwright = _browser()
    talking.system.delay = 0.0
    with playwright.sync_playwright() as p:
        browser, page, streams = _hands_free(p, talking.url, _two_utterances(tmp_path, 1.5))
        page.wait_for_function(TWO_TURNS_ANSWERED, timeout=TIMEOUT_MS)
        page.wait_for_function(PLAYING, timeout=TIMEOUT_MS)  # a reply is heard
        whole = "() => document.querySelector('#reply-whole a[download]')?.href.endsWith('.wav')"
        page.wait_for_function(whole, timeout=TIMEOUT_MS)  # the whole last reply, to replay and download
        status = page.locator("#listening").inner_text()
        card = page.locator(".prose.card").inner_text()
        page.screenshot(path=str(tmp_path / "hands-free.png"), full_page=True)
        browser.close()
    print(f"screenshot: {tmp_path / 'hands-free.png'}")
    assert "turn 2 sent" in status
    heard_s = float(status.split("turn 2 sent (")[1].split(" s)")[0])  # the second utterance, whole
    assert heard_s == pytest.approx(sf.info(EXAMPLES / "edward_happy.wav").duration, abs=0.7)
    assert len(streams) == 2  # each reply's speech was streamed to the page
    assert "first audio" in card and "hands-free: sent" in card


@pytest.mark.server
@pytest.mark.browser
def test_browser_speech_over_a_reply_stops_it_and_is_the_next_turn(talking, tmp_path):
    playwright = _browser()
    talking.system.delay, closed = 0.25, talking.system.closed  # a reply written over 16 s, spoken as it goes
    with playwright.sync_playwright() as p:
        browser, page, _ = _hands_free(p, talking.url, _two_utterances(tmp_path, 14.0))
        page.wait_for_function(PLAYING, timeout=TIMEOUT_MS)  # the first reply is heard ...
        first = page.locator("#chat .bot").first
        page.wait_for_function(  # ... until the visitor speaks again: it stops where it was
            "() => document.querySelector('#chat .bot')?.innerText.includes('(interrupted)')", timeout=TIMEOUT_MS
        )
        page.wait_for_function(TWO_TURNS_ANSWERED, timeout=TIMEOUT_MS)  # the new utterance is the next turn
        media = page.evaluate("window.__media")
        interrupted = first.inner_text()
        browser.close()
    heard = [m for m in media if m["id"] == "reply-live"]
    start = next(i for i, m in enumerate(heard) if m["type"] == "playing")
    stopped = next(m for m in heard[start:] if m["type"] in ("pause", "ended"))
    assert stopped["type"] == "pause" and stopped["t"] > 0  # paused while playing, not at its end
    assert talking.system.closed > closed  # the first reply's decoding was stopped, not left to run
    assert len(interrupted.split()) < len(LONG)  # what was written before it stopped stays, marked


NO_SIDEWAYS_SCROLL = "() => document.documentElement.scrollWidth <= document.documentElement.clientWidth"


def _fits(page, locator) -> bool:
    """Shown and within the width of the screen (a control cut off at the side cannot be used)."""
    box = locator.bounding_box()
    return locator.is_visible() and box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390


@pytest.mark.server
@pytest.mark.browser
def test_browser_the_page_fits_a_phone(talking, tmp_path):
    playwright = _browser()
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True).new_page()
        with page.expect_response(lambda r: "/run/predict" in r.url):
            page.goto(talking.url)
        controls = {
            "mode": page.locator("#mode"),
            "record": page.locator("#voice").get_by_role("button", name="Record", exact=True),
            "text": page.get_by_placeholder("…or type a message and press Enter"),
            "send": page.get_by_role("button", name="Send", exact=True),
        }
        shown = {name: _fits(page, c) for name, c in controls.items()}
        no_scroll = [page.evaluate(NO_SIDEWAYS_SCROLL)]
        page.locator("#mode").get_by_text("Hands-free").click()
        page.locator("#live-mic").wait_for()
        shown["hands-free record"] = _fits(
            page, page.locator("#live-mic").get_by_role("button", name="Record", exact=True)
        )
        shown["pause"] = _fits(page, page.get_by_label("Pause that ends your turn (s)", exact=False).first)
        no_scroll.append(page.evaluate(NO_SIDEWAYS_SCROLL))
        record = page.locator("#live-mic").get_by_role("button", name="Record", exact=True).bounding_box()
        first_screen = record["y"] + record["height"] <= 844  # hands-free starts without scrolling
        page.screenshot(path=str(tmp_path / "phone-talk.png"), full_page=True)
        page.get_by_role("tab", name="Compare").click()
        go = page.get_by_role("button", name="Answer with every system")
        go.wait_for()
        shown["compare"] = _fits(page, go)
        no_scroll.append(page.evaluate(NO_SIDEWAYS_SCROLL))
        heading = page.locator(".system-column").first.inner_text()
        page.screenshot(path=str(tmp_path / "phone-compare.png"), full_page=True)
        browser.close()
    print(f"screenshots: {tmp_path}")
    assert no_scroll == [True, True, True] and all(shown.values()), (no_scroll, shown)
    assert first_screen
    assert "Hears your tone: yes (its script)" in heading  # Compare says plainly what each system is

"""The Rate and Results tabs in the app: the JSON API through gradio_client, and a rater in a real browser."""

import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio")
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

import app  # noqa: E402
from blsp_emo.study import StudyConfig, StudyLimits, StudyRunner, StudyStore  # noqa: E402
from blsp_emo.systems import load_systems  # noqa: E402
from blsp_emo.tts import NullSynthesizer  # noqa: E402
from study_fixtures import SYSTEMS, write_study  # noqa: E402
from webui import study_tabs  # noqa: E402

TOKEN = "tab-test-admin-token"
CHROMIUM = Path("/usr/bin/chromium")
# The Results gallery shows every plot the report wrote, each image decoded.
PLOTS_LOADED = """() => {
    const names = ['scores.png', 'bradley_terry.png', 'preferences.png'];
    const images = [...document.querySelectorAll('img')];
    return names.every(name => images.some(i => i.src.endsWith('/' + name) && i.complete && i.naturalWidth > 0));
}"""


@pytest.fixture(scope="module")
def runner(bundle_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("study-app")
    systems, notes = load_systems(SYSTEMS, model=str(bundle_dir))
    assert notes == []
    # A scripted rater answers two trials within seconds: the per-rater pace limit (tested in
    # test_study_security) would refuse the second submit on a fast machine and not on a slow one.
    config, store = StudyConfig.load(write_study(root / "study", trials=2)), StudyStore(root / "r.sqlite")
    return StudyRunner(config, systems, store, limits=StudyLimits(submit_interval=0.0))


@pytest.fixture(scope="module")
def server(runner):
    os.environ["BLSP_EMO_ADMIN_TOKEN"] = TOKEN
    demo = app.build_demo(runner.systems, NullSynthesizer(), model_label="tiny bundle", study=runner)
    app.launch(demo, "127.0.0.1", None, prevent_thread_lock=True, quiet=True)
    yield demo.local_url
    demo.close()
    os.environ.pop("BLSP_EMO_ADMIN_TOKEN", None)


def _client(url):
    return Client(url, verbose=False, download_files=False, httpx_kwargs={"timeout": 120})


def test_without_a_study_the_app_has_no_rate_tab(runner):
    demo = app.build_demo(runner.systems, NullSynthesizer())
    assert not any(getattr(fn, "api_name", None) == "study_begin" for fn in demo.fns.values())


@pytest.mark.server
def test_api_rater_sees_blind_replies_then_the_reveal(server, runner):
    client = _client(server)
    with pytest.raises(AppError, match="I agree"):
        client.predict(False, False, api_name="/study_begin")
    begin = client.predict(True, False, api_name="/study_begin")
    assert begin["trials"] == 2
    plan = runner.store.plan(begin["rater_id"])
    view0 = None
    for trial in plan:
        view = client.predict(begin["rater_id"], trial.index, api_name="/study_trial")
        assert not any(name in str(view) for name in SYSTEMS)
        time.sleep(view["listen_seconds"])  # the clips' length: a sooner 'played' is refused
        client.predict(begin["rater_id"], trial.index, view["key"], api_name="/study_played")
        answer = client.predict(
            begin["rater_id"],
            trial.index,
            view["key"],
            view["shown_at"],
            9,
            8,
            2,
            3,
            "A",
            "warmer",
            api_name="/study_submit",
        )
        assert answer["status"] == "stored" and (answer["a"], answer["b"]) == (trial.system_a, trial.system_b)
        view0 = view0 or view
    again = client.predict(begin["rater_id"], 0, view0["key"], 0.0, 1, 1, 1, 1, "B", "", api_name="/study_submit")
    assert again["status"] == "duplicate" and again["next_trial"] is None
    with pytest.raises(AppError, match="not issued") as refused:  # a key it was not handed out with
        client.predict(begin["rater_id"], 0, "another-key", 0.0, 1, 1, 1, 1, "B", "", api_name="/study_submit")
    assert not any(name in str(refused.value) for name in SYSTEMS)
    rows = [r for r in runner.store.ratings() if r["rater_id"] == begin["rater_id"]]
    assert [r["preference"] for r in rows] == ["A", "A"] and rows[0]["reason"] == "warmer"
    assert all(r["listened"] == 1 for r in rows)  # the server saw the clips played
    with pytest.raises(AppError, match="no trial|outside"):
        client.predict(begin["rater_id"], 7, api_name="/study_trial")


@pytest.mark.server
def test_results_and_audit_refuse_without_the_admin_token(server, runner):
    with pytest.raises(AppError, match="wrong or missing admin token"):
        _client(server).predict("not-the-token", api_name="/study_audit")
    tab = study_tabs.ResultsTab(runner)
    for wrong in ("", None, "nope-nope-nope"):
        with pytest.raises(gr.Error, match="admin token"):
            tab.show(wrong)
    summary, gallery, export = tab.show(TOKEN)
    assert "Bradley–Terry" in summary and "ratings from" in summary
    assert len(gallery.value) == 3 and export.value is not None


@pytest.mark.server
@pytest.mark.browser
def test_browser_rater_consents_listens_rates_and_sees_the_reveal(server, runner, tmp_path, clip_path):
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
        "--autoplay-policy=no-user-gesture-required",
    ]
    outside = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=flags)
        page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
        page.on("request", lambda r: None if r.url.startswith((server, "data:", "blob:")) else outside.append(r.url))
        page.goto(server)
        page.get_by_role("tab", name="Rate").click()
        page.get_by_text("What is stored").wait_for()
        page.get_by_role("button", name="Start the study").click()  # no consent yet: a notice, nothing starts
        page.get_by_text("tick 'I agree'").wait_for(timeout=10_000)
        assert not page.locator("#study-trial").is_visible()
        page.get_by_label("I agree").check()
        page.get_by_role("button", name="Start the study").click()
        page.locator("#study-trial").wait_for(state="visible", timeout=60_000)
        page.get_by_text("Trial 1 of 2").wait_for()
        page.get_by_text("still to hear").wait_for()
        assert page.locator("#study-submit").is_disabled()  # listen first
        assert page.locator("#study-empathy-A input").first.is_disabled()
        page.screenshot(path=str(tmp_path / "rate-locked.png"), full_page=True)
        page.locator("#study-stimulus button[aria-label='Play']").click()
        page.wait_for_function("!document.querySelector('#study-submit').disabled", timeout=30_000)
        for q in ("empathy", "quality"):
            page.locator(f"#study-{q}-A label").filter(has_text="8").click()
            page.locator(f"#study-{q}-B label").filter(has_text="3").click()
        page.locator("#study-preference label").filter(has_text="A is better").click()
        page.get_by_label("Why? (optional)").fill("A noticed the tone")
        page.locator("#study-submit").click()
        page.get_by_text("Saved").wait_for(timeout=30_000)
        reveal = page.locator("#study-reveal").inner_text()
        page.screenshot(path=str(tmp_path / "rate-revealed.png"), full_page=True)
        page.locator("#study-next").click()  # trial 2: answered on the rater's own (uploaded) recording
        page.get_by_text("Trial 2 of 2").wait_for(timeout=30_000)
        assert page.locator("#study-trial input:checked").count() == 0  # no answers carried over
        assert page.get_by_label("Why? (optional)").input_value() == ""
        page.get_by_text("…or answer your own recording instead").click()
        page.locator("#study-own").get_by_role("button", name="Upload file").click()
        with page.expect_response(lambda r: "/upload" in r.url):
            page.locator("#study-own input[type=file]").set_input_files(str(clip_path))
        page.get_by_role("button", name="Use my recording for this trial").click()
        page.wait_for_function("!document.querySelector('#study-submit').disabled", timeout=60_000)
        for q in ("empathy", "quality"):
            for side in "AB":
                page.locator(f"#study-{q}-{side} label").filter(has_text="5").click()
        page.locator("#study-preference label").filter(has_text="Both are bad").click()
        page.locator("#study-submit").click()
        page.get_by_text("That was the last trial").wait_for(timeout=30_000)
        page.locator("#study-next").click()
        page.get_by_text("Thank you!").wait_for(timeout=30_000)
        page.get_by_role("tab", name="Results").click()
        page.locator("#admin-token input").fill("a-guess-at-the-token")
        page.get_by_role("button", name="Show results").click()
        page.get_by_text("wrong or missing admin token").first.wait_for(timeout=30_000)
        assert "Bradley" not in page.locator("#study-results").inner_text()
        page.locator("#admin-token input").fill(TOKEN)
        page.get_by_role("button", name="Show results").click()
        page.locator("#study-results").get_by_text("Bradley–Terry").first.wait_for(timeout=60_000)
        page.wait_for_function(PLOTS_LOADED, timeout=30_000)  # the report's three plots, for the screenshot
        page.screenshot(path=str(tmp_path / "results.png"), full_page=True)
        browser.close()
    print(f"screenshots: {tmp_path}")
    rater = [r for r in runner.store.ratings() if r["reason"] == "A noticed the tone"]
    assert len(rater) == 1 and rater[0]["listened"] == 1 and rater[0]["empathy_a"] == 8 and rater[0]["quality_b"] == 3
    assert rater[0]["system_a"] in reveal and rater[0]["system_b"] in reveal
    own = [r for r in runner.store.ratings() if r["rater_id"] == rater[0]["rater_id"] and r["trial"] == 1]
    assert len(own) == 1 and own[0]["stimulus"] == "own-recording" and own[0]["preference"] == "both-bad"
    assert own[0]["audio_path"] is None  # the box to keep recordings was not ticked
    assert outside == []  # offline: no CDN, fonts or analytics


def test_a_signed_in_rater_comes_back_to_their_place(runner):
    profile = gr.OAuthProfile({"name": "Carol", "preferred_username": "carol", "profile": "", "picture": ""})
    with gr.Blocks():
        tab = study_tabs.RateTab(runner)
        tab.build()
    first = tab.begin(True, False, profile)[tab.state]
    runner.submit(first.view, {"empathy_a": 5, "quality_a": 5, "empathy_b": 5, "quality_b": 5}, "tie")
    again = tab.begin(True, False, profile)[tab.state]
    assert again.view.rater_id == first.view.rater_id and again.view.index == 1  # the next unrated trial
    assert "carol" not in again.view.rater_id
    anonymous = tab.begin(True, False, None)[tab.state]
    assert anonymous.view.rater_id != first.view.rater_id


def test_spoken_replies_must_be_heard_too_but_only_those_that_exist(runner):
    import numpy as np

    view = runner.view(runner.begin(True)[0], 0)
    speech = (16000, np.zeros(1600, np.float32))
    assert study_tabs._needed(view) == {"stimulus"}
    assert study_tabs._needed(replace(view, speech_a=speech)) == {"stimulus", "A"}
    assert study_tabs._needed(replace(view, speech_a=speech, speech_b=speech)) == {"stimulus", "A", "B"}


def test_warming_computes_every_reply_once(runner):
    runner.warm()
    assert set(runner.cache._replies) == {(s.id, n) for s in runner.config.stimuli for n in runner.config.systems}

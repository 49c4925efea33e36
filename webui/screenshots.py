"""The screenshots in docs/, taken from the running app by Debian's chromium (`make screenshots`).

    python -m webui.screenshots [--out docs] [--clip assets/examples/X.wav] [-- app.py options]

It starts `python app.py` on a free loopback port with the bundled models, uploads one example clip
on the Talk tab and on the Compare tab, waits until every reply (and its spoken version, and on Talk
the evidence behind the emotion) is shown, and writes `screenshot.png` (Talk) and
`screenshot-compare.png` (Compare). Then, in a browser whose fake microphone says the same clip, it
picks Hands-free, presses Record once and waits until the turn was sent by itself, its reply spoken
and its evidence shown: `screenshot-handsfree.png`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from blsp_emo.bench.app_process import ROOT, spawn_app

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-sync"]
# Every progress tracker hidden: the turn, its card and the spoken reply are all done.
IDLE = "() => [...document.querySelectorAll('[data-testid=status-tracker]')].every(t => t.classList.contains('hide'))"
TIMEOUT_MS = 120_000  # a turn on a busy 2-core machine, with the models warming up


def talk(page, clip: Path, out: Path) -> None:
    page.get_by_role("button", name="Upload file").first.click()
    with page.expect_response(lambda r: "/upload" in r.url):
        page.locator("#voice input[type=file]").set_input_files(str(clip))
    page.get_by_role("button", name="Send", exact=True).click()
    page.wait_for_selector("#emotion .output-class", timeout=TIMEOUT_MS)
    page.locator("#chat .bot").first.wait_for(timeout=TIMEOUT_MS)
    page.wait_for_function(IDLE, timeout=TIMEOUT_MS)
    page.screenshot(path=str(out), full_page=True)


def compare(page, clip: Path, out: Path) -> None:
    page.get_by_role("tab", name="Compare").click()
    panel = page.locator("[role=tabpanel]:visible")
    panel.get_by_role("button", name="Upload file").first.click()
    with page.expect_response(lambda r: "/upload" in r.url):
        panel.locator("input[type=file]").first.set_input_files(str(clip))
    panel.get_by_role("button", name="Answer with every system").click()
    columns = panel.locator(".system-column")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.system-column textarea')].filter(t => t.value.trim()).length"
        f" >= {columns.count()}",
        timeout=TIMEOUT_MS,
    )
    page.wait_for_function(IDLE, timeout=TIMEOUT_MS)
    page.screenshot(path=str(out), full_page=True)


# The hands-free turn is answered, spoken and kept (the microphone's own stream never ends), and the
# evidence behind its emotion has come (it is read after the reply).
SPOKEN = """() => document.querySelector('#listening')?.innerText.includes('turn 1 sent')
    && document.querySelector('#reply-whole a[download]')?.href.endsWith('.wav')
    && document.querySelector('#reply-whole #duration')?.textContent.trim() !== '0:00'
    && /Sure|Unsure|%/.test(document.querySelector('#evidence')?.innerText ?? '')
    && !document.querySelector('#evidence').innerText.includes('measured once')"""


def microphone(clip: Path, folder: Path) -> Path:
    """What the fake microphone says, once: 2 s of silence (the stream starts up: a busy machine loses
    its first second), `clip`, then silence."""
    import numpy as np
    import soundfile as sf

    speech, rate = sf.read(clip, dtype="float32")
    path = folder / "microphone.wav"
    quiet = np.zeros(rate, np.float32)
    sf.write(path, np.concatenate([quiet, quiet, speech, *[quiet] * 30]), rate, subtype="PCM_16")
    return path


def handsfree(pw, url: str, clip: Path, out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="blsp-screenshot-") as folder:
        fake = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
        said = f"--use-file-for-fake-audio-capture={microphone(clip, Path(folder))}%noloop"
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[*FLAGS, *fake, said])
        page = browser.new_context(viewport={"width": 1360, "height": 900}, permissions=["microphone"]).new_page()
        with page.expect_response(lambda r: "/run/predict" in r.url):
            page.goto(url)
        page.locator("#mode").get_by_text("Hands-free").click()
        page.locator("#live-mic").get_by_role("button", name="Record", exact=True).click()
        page.wait_for_function(SPOKEN, timeout=TIMEOUT_MS)
        page.screenshot(path=str(out), full_page=True)
        browser.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m webui.screenshots", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "docs"), help="folder for the PNGs")
    p.add_argument("--clip", default=str(ROOT / "assets/examples/edward_sad.wav"))
    p.add_argument("app_args", nargs="*", help="options for app.py (after --)")
    args = p.parse_args(argv)
    if not CHROMIUM.exists():
        print("error: needs Debian's chromium (apt-get install -y chromium)", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    out, clip = Path(args.out), Path(args.clip)
    server = spawn_app(tuple(args.app_args))
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
            page = browser.new_context(viewport={"width": 1360, "height": 900}).new_page()
            with page.expect_response(lambda r: "/run/predict" in r.url):  # the visitor's state is built
                page.goto(server.url)
            talk(page, clip, out / "screenshot.png")
            compare(page, clip, out / "screenshot-compare.png")
            browser.close()
            handsfree(pw, server.url, clip, out / "screenshot-handsfree.png")
    finally:
        server.stop()
    print(
        f"wrote {', '.join(str(out / n) for n in ('screenshot.png', 'screenshot-compare.png', 'screenshot-handsfree.png'))}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

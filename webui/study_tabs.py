"""The Rate and Results tabs of the app: a blind empathy-rating study and its analysis (admin only).

Built inside `webui.demo_page.build_demo` from a `StudyRunner` (blsp_emo.study), which does all the work: this
module only lays out the page and turns its events into runner calls. A rater's progress lives in
their session's `gr.State`; their plan and ratings live in the database, so the JSON API
(`/study_begin`, `/study_trial`, `/study_submit`, in `webui.study_api`) carries only the rater id and
survives a restart.
"""

from __future__ import annotations

import html
import sys
import tempfile
import threading
from dataclasses import dataclass, replace

import gradio as gr

from blsp_emo.audio import AudioError, to_pcm16
from blsp_emo.study import (
    AdminTokenError,
    StudyConfig,
    StudyConfigError,
    StudyLimits,
    StudyRunner,
    StudyStore,
    StudyStoreError,
    TrialView,
    UploadSettings,
    balance,
    check_admin,
    start_upload,
    write_report,
)
from webui import storage
from webui.study_api import STUDY_QUEUE, _fail, api, client_address

SIDES = "AB"
PREFERENCE_CHOICES = [("A is better", "A"), ("B is better", "B"), ("Tie", "tie"), ("Both are bad", "both-bad")]
# The 0–10 scale on one line in a half-width column; the lock note stands out until it is lifted.
CSS = """
.study-scale .wrap { flex-wrap: nowrap !important; gap: 4px !important; }
.study-scale label { padding: 6px 8px !important; min-width: 0 !important; flex: 1 1 0; justify-content: center; }
#study-lock p { background: #fff8e1; border-left: 4px solid #ffb300; padding: 6px 10px; margin: 0; }
"""
EMPTY = "(this system gave an empty reply)"
LOCKED = "🔒 Listen to the speaker's clip to the end{} to unlock the ratings."


@dataclass(frozen=True)
class RaterState:
    """One rater's place in the study, kept in their session."""

    view: TrialView
    heard: frozenset = frozenset()  # clips played to the end on this trial: "stimulus", "A", "B"
    submitted: bool = False
    own_audio: str | None = None


def _stored_text(runner: StudyRunner) -> str:
    own = (
        (
            " If you answer with **your own recording**, it is used to make the two replies and is kept only if you "
            "tick the box below; otherwise it is deleted when you close the page (at the latest about an hour "
            "after you made it)."
        )
        if runner.config.allow_own_recording
        else ""
    )
    return (
        "**What is stored:** a random rater id (it names nobody), your ratings and optional reasons, which "
        "two systems you compared and in which order, the replies' text, timings, and the model versions. "
        "No name, e-mail, IP address or audio of yours is stored (if you are signed in, only a one-way hash of "
        "your user name, so that you can come back to your place)."
        + own
        + " Replies to the study's clips are decoded deterministically (greedy), so every rater hears the same "
        "reply from a system for a clip."
    )


def _notice(message: str):
    """A message to the rater that changes nothing on the page (an error would cover the inputs)."""
    gr.Warning(html.escape(message, quote=False))
    return gr.skip()


def _speech(speech):
    # a file of its own each time: every rater hears the same reply, and Gradio would rewrite the one
    # file named by its samples in place while another rater downloads it (webui/storage.py)
    return None if speech is None else storage.FILES.write_wav(speech[0], to_pcm16(speech[1]))


def _needed(view: TrialView) -> frozenset:
    """The clips to hear to the end before rating: the speaker's, and each reply that is spoken."""
    return frozenset({"stimulus", *(s for s in SIDES if getattr(view, f"speech_{s.lower()}") is not None)})


def _progress(view: TrialView) -> str:
    done = int(100 * view.index / view.total)
    return (
        f"**Trial {view.index + 1} of {view.total}**"
        f"<div style='height:6px;border-radius:3px;background:#e0e0e0;margin-top:4px'>"
        f"<div style='height:6px;border-radius:3px;background:#5c6bc0;width:{done}%'></div></div>"
    )


class RateTab:
    """Components and handlers of the Rate tab."""

    def __init__(self, runner: StudyRunner):
        self.runner = runner

    def build(self) -> None:
        cfg = self.runner.config
        gr.HTML(f"<style>{CSS}</style>", padding=False)
        with gr.Column(visible=True, elem_id="study-consent") as self.consent_box:
            gr.Markdown(f"## {html.escape(cfg.title)}\n{cfg.instructions}\n\n{_stored_text(self.runner)}")
            self.agree = gr.Checkbox(label="I agree to take part and to the storage described above")
            self.keep = gr.Checkbox(
                label="Keep my own recordings for the researchers (optional)", visible=cfg.allow_own_recording
            )
            self.invite = gr.Textbox(
                label="Invitation code",
                type="password",
                visible=bool(self.runner.limits.invite),
                elem_id="study-invite",
            )
            self.start = gr.Button("Start the study", variant="primary")
        with gr.Column(visible=False, elem_id="study-trial") as self.trial_box:
            self.progress = gr.Markdown(elem_id="study-progress")
            self.stimulus = gr.Audio(
                label="1 · Listen to the speaker", type="filepath", interactive=False, elem_id="study-stimulus"
            )
            self.lock = gr.Markdown(elem_id="study-lock")
            if cfg.allow_own_recording:
                with gr.Accordion("…or answer your own recording instead", open=False):
                    self.own = gr.Audio(
                        sources=["microphone", "upload"], type="filepath", label="Your voice", elem_id="study-own"
                    )
                    self.use_own = gr.Button("Use my recording for this trial")
            self.replies, self.speeches, self.scores = [], [], []
            with gr.Row(equal_height=True):
                for side in SIDES:
                    with gr.Column(elem_classes=["study-reply"]):
                        gr.Markdown(f"### 2 · Reply {side}")
                        self.replies.append(
                            gr.Textbox(show_label=False, lines=4, interactive=False, elem_id=f"study-reply-{side}")
                        )
                        self.speeches.append(
                            storage.spoken_reply(
                                label=f"Reply {side} spoken",
                                type="numpy",
                                format="wav",
                                interactive=False,
                                visible=self.runner.speaks,
                                elem_id=f"study-speech-{side}",
                            )
                        )
                        for q in cfg.questions:
                            self.scores.append(
                                gr.Radio(
                                    list(range(11)),
                                    label=f"{q.label} — reply {side}",
                                    info=q.help or None,
                                    interactive=False,
                                    elem_id=f"study-{q.id}-{side}",
                                    elem_classes=["study-scale"],
                                )
                            )
            self.preference = gr.Radio(
                PREFERENCE_CHOICES, label="3 · Which reply is better?", interactive=False, elem_id="study-preference"
            )
            self.reason = gr.Textbox(label="Why? (optional)", lines=2, interactive=False)
            self.submit = gr.Button("Submit ratings", variant="primary", interactive=False, elem_id="study-submit")
            self.reveal = gr.Markdown(elem_id="study-reveal")
            self.next = gr.Button("Next trial →", visible=False, elem_id="study-next")
        with gr.Column(visible=False, elem_id="study-done") as self.done_box:
            self.done = gr.Markdown()
        self.state = gr.State(None, time_to_live=6 * 3600)
        self._wire()

    # --- what each event changes -----------------------------------------------------------------

    @property
    def inputs(self) -> list:
        return [*self.scores, self.preference, self.reason]

    def _show(self, state: RaterState) -> dict:
        view = state.view
        order = {self.replies[i]: getattr(view, f"reply_{s.lower()}") or EMPTY for i, s in enumerate(SIDES)}
        speech = {self.speeches[i]: _speech(getattr(view, f"speech_{s.lower()}")) for i, s in enumerate(SIDES)}
        unlock = self._unlock(state)
        cleared = {
            c: gr.update(value="" if c is self.reason else None, interactive=unlock[c]["interactive"])
            for c in self.inputs
        }  # a new trial starts with no answers
        return {
            self.state: state,
            self.consent_box: gr.Column(visible=False),
            self.trial_box: gr.Column(visible=True),
            self.progress: _progress(view),
            self.stimulus: view.stimulus_audio or state.own_audio,
            **order,
            **speech,
            **unlock,
            **cleared,
            self.reveal: "",
            self.next: gr.Button(visible=False),
        }

    def _unlock(self, state: RaterState) -> dict:
        needed = _needed(state.view)
        open_ = needed <= state.heard and not state.submitted
        missing = sorted(needed - state.heard)
        extra = " and the spoken replies" if len(needed) > 1 else ""
        lock = "" if open_ or state.submitted else LOCKED.format(extra) + f" (still to hear: {', '.join(missing)})"
        return {
            **{c: gr.update(interactive=open_) for c in self.inputs},
            self.submit: gr.Button(interactive=open_, visible=not state.submitted),
            self.lock: lock,
        }

    def begin(
        self,
        agree: bool,
        keep: bool,
        profile: gr.OAuthProfile | None = None,
        invite: str = "",
        request: gr.Request = None,
    ):
        # Gradio passes the signed-in user on a Space with `hf_oauth: true`, None elsewhere, and the request
        # (its address counts toward the cap on new raters per address, in memory only).
        login = profile.get("preferred_username") if profile else None
        try:
            rater_id, plan = self.runner.begin(agree, keep, login=login, client=client_address(request), invite=invite)
        except PermissionError as e:
            return _notice(str(e))
        done = self.runner.store.submitted_trials(rater_id)
        left = [t.index for t in plan if t.index not in done]
        if not left:  # a signed-in rater who already finished
            return _notice("You have already rated every trial of this study with this account. Thank you!")
        return self._show(RaterState(self.runner.view(rater_id, left[0])))

    def heard(self, what: str, state: RaterState | None):
        if state is None:
            return gr.skip()
        heard = replace(state, heard=state.heard | {what})
        if _needed(heard.view) <= heard.heard and not heard.submitted:
            try:  # the server's own record: refused if the clips cannot have been played to the end yet
                self.runner.played(heard.view.rater_id, heard.view.index, heard.view.key)
            except (LookupError, PermissionError) as e:
                gr.Warning(html.escape(str(e), quote=False))
                return {self.state: state, **self._unlock(state)}  # still locked: play it again to the end
        return {self.state: heard, **self._unlock(heard)}

    def answer_own(self, audio, state: RaterState):
        if state is None or state.submitted:
            return gr.skip()
        if audio is None:
            return _notice("record or upload a clip first, then press the button")
        storage.FILES.claim(audio)  # deleted with the session; runner keeps a copy only with consent
        try:
            view = self.runner.view(state.view.rater_id, state.view.index, own_audio=audio)
        except (ValueError, PermissionError) as e:
            return _notice(str(e))
        state = RaterState(view, frozenset({"stimulus"}), own_audio=audio)  # they made the clip
        if _needed(view) <= state.heard:  # nothing else to hear: the server records the play now
            self.runner.played(view.rater_id, view.index, view.key)
        return self._show(state)

    def send(self, state: RaterState | None, *answers):
        if state is None:
            return _notice("start the study first (tick 'I agree', then Start)")
        if state.submitted:  # a second click while the first was saving
            return gr.skip()
        *scores, preference, reason = answers
        names = [c.label for c in self.scores]
        for label, value in zip(names, scores):
            if value is None:
                return _notice(f"Please rate “{label}” (0–10) before submitting.")
        if preference is None:
            return _notice("Please choose which reply is better (or tie / both bad).")
        if not _needed(state.view) <= state.heard:
            return _notice(LOCKED.format(""))
        keys = [f"{q.id}_{s.lower()}" for s in SIDES for q in self.runner.config.questions]
        try:
            result = self.runner.submit(
                state.view, dict(zip(keys, scores)), preference, reason, own_audio=state.own_audio
            )
        except (LookupError, ValueError, PermissionError) as e:  # refused (too fast, …): nothing was stored
            return _notice(str(e))
        state = replace(state, submitted=True)
        again = "" if result.stored else " (this trial was already recorded; it counts once)"
        finished = result.next_trial is None
        reveal = f"✅ Saved{again}. **Reply A** was **{result.system_a}**, **reply B** was **{result.system_b}**." + (
            " That was the last trial." if finished else ""
        )
        return {
            self.state: state,
            **self._unlock(state),
            **{c: gr.update(interactive=False) for c in self.inputs},
            self.reveal: reveal,
            self.next: gr.Button("See the summary →" if finished else "Next trial →", visible=True),
        }

    def advance(self, state: RaterState):
        done = self.runner.store.submitted_trials(state.view.rater_id)
        later = [i for i in range(state.view.total) if i not in done]
        if not later:
            return {
                self.trial_box: gr.Column(visible=False),
                self.done_box: gr.Column(visible=True),
                self.done: f"## Thank you!\nAll {state.view.total} trials are saved. Your anonymous rater id is "
                f"`{state.view.rater_id}` — quote it if you want your ratings withdrawn.",
            }
        return self._show(RaterState(self.runner.view(state.view.rater_id, later[0])))

    def _wire(self) -> None:
        shown = [
            self.state,
            self.consent_box,
            self.trial_box,
            self.progress,
            self.stimulus,
            *self.replies,
            *self.speeches,
            *self.inputs,
            self.submit,
            self.lock,
            self.reveal,
            self.next,
        ]
        quiet = {"api_visibility": "private", "show_progress": "hidden", **STUDY_QUEUE}
        self.start.click(self.begin, [self.agree, self.keep, self.invite], shown, **quiet)
        unlock = [self.state, *self.inputs, self.submit, self.lock]
        self.stimulus.stop(lambda s: self.heard("stimulus", s), [self.state], unlock, **quiet)
        for side, speech in zip(SIDES, self.speeches):
            speech.stop(lambda s, side=side: self.heard(side, s), [self.state], unlock, **quiet)
        if self.runner.config.allow_own_recording:
            self.use_own.click(
                self.answer_own, [self.own, self.state], shown, api_visibility="private", concurrency_id="model"
            )
        self.submit.click(self.send, [self.state, *self.inputs], [*unlock, self.reveal, self.next], **quiet)
        self.next.click(self.advance, [self.state], [*shown, self.done_box, self.done], **quiet)


class ResultsTab:
    """The analysis behind the admin token: tables, plots and the CSV export."""

    def __init__(self, runner: StudyRunner):
        self.runner = runner

    def build(self) -> None:
        gr.Markdown(
            "Results of the study so far (admin only). The token is the value of `BLSP_EMO_ADMIN_TOKEN` "
            "where the app runs."
        )
        with gr.Row(equal_height=True):
            token = gr.Textbox(type="password", label="Admin token", scale=3, elem_id="admin-token")
            show = gr.Button("Show results", variant="primary", scale=1)
        unplayed = gr.Checkbox(label="Also count ratings whose audio was not played (left out by default)")
        summary = gr.Markdown(elem_id="study-results")
        plots = gr.Gallery(label="Plots", columns=2, height="auto", object_fit="contain", visible=False)
        export = gr.File(label="ratings.csv (every rating)", visible=False)
        show.click(self.show, [token, unplayed], [summary, plots, export], api_visibility="private")

    def show(self, token: str, include_unplayed: bool = False):
        try:
            check_admin(token)
        except AdminTokenError as e:
            raise _fail(str(e)) from e
        out = tempfile.mkdtemp(prefix="blsp-emo-report-")
        rows = self.runner.store.ratings(self.runner.config.id)
        counts = self.runner.store.assignment_counts(self.runner.config.id)
        report = write_report(
            rows, out, n_boot=500, assignment=balance(counts, self.runner.config), include_unplayed=include_unplayed
        )
        csv_path = f"{out}/ratings.csv"
        self.runner.store.export_csv(csv_path, self.runner.config.id)
        body = report.markdown.split("\n![")[0]  # the plots go to the gallery
        return (
            body,
            gr.Gallery([str(p) for p in report.plots], visible=bool(report.plots)),
            gr.File(csv_path, visible=True),
        )


def runner_from_args(args, config: StudyConfig | None, systems, synthesizer) -> StudyRunner | None:
    """The study over the loaded systems and the database of --study-db; exits naming what is wrong."""
    if config is None:
        return None
    if args.study is None and not set(config.systems) <= set(systems):  # the example study is optional
        print(
            f"app: Rate tab off: the example study compares {list(config.systems)}, loaded {list(systems)}; "
            "pass --study FILE naming loaded systems",
            file=sys.stderr,
        )
        return None
    try:
        # --study-invite (when app.py has it) or $BLSP_EMO_STUDY_INVITE: the code a rater must give to begin
        limits = StudyLimits.from_env(invite=getattr(args, "study_invite", None))
        runner = StudyRunner(config, systems, StudyStore.from_env(args.study_db), synthesizer, limits)
    except (StudyConfigError, StudyStoreError, AudioError, ValueError) as e:
        sys.exit(f"error: study: {e}")
    try:
        settings = UploadSettings.from_env()
        if settings is not None:
            start_upload(runner.store, settings)
    except Exception as e:  # noqa: BLE001 - hub errors come in many types; the researcher asked for this upload
        sys.exit(
            f"error: study upload: {type(e).__name__}: {e} — it needs the hub (HF_HUB_OFFLINE=0) and a write "
            "token (HF_TOKEN); or unset BLSP_EMO_STUDY_UPLOAD_REPO"
        )
    threading.Thread(target=runner.warm, name="study-warm", daemon=True).start()  # replies ready for rater one
    invite = "; an invitation code is needed to begin" if limits.invite else ""
    print(f"study {config.id!r}: ratings in {runner.store.path}{invite}", file=sys.stderr)
    return runner


def build_tabs(runner: StudyRunner | None) -> None:
    """The Rate and Results tabs (inside `gr.Tabs`), and the study's JSON API."""
    if runner is None:
        return
    with gr.Tab("📝 Rate", id="rate"):
        RateTab(runner).build()
        api(runner)
    with gr.Tab("📊 Results", id="results"):
        ResultsTab(runner).build()


__all__ = ["RaterState", "RateTab", "ResultsTab", "build_tabs", "runner_from_args"]

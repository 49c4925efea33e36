"""The study's JSON endpoints for scripted raters (the load test), and what they share with the Rate tab.

They make the same `StudyRunner` calls as the page (`webui.study_tabs`). A rater's plan and ratings
live in the database, so each call carries only the rater id, and a rater survives a restart.
"""

from __future__ import annotations

import html
from dataclasses import replace

import gradio as gr

from blsp_emo.study import AdminTokenError, StudyRunner, balance, check_admin

# Study calls are small database writes (a reply is computed once per clip and system): they get
# their own, wider lane of the queue so that raters do not wait behind model calls.
STUDY_QUEUE = {"concurrency_id": "study", "concurrency_limit": 8}
# Study calls that may wait in their lane, counted apart from the model's `max_queue`, so that a flood
# of model requests cannot refuse raters (`webui.waking_queue`): 50 raters at once fit without a retry.
STUDY_WAITING = 64


def _fail(message: str) -> gr.Error:
    return gr.Error(html.escape(message, quote=False), print_exception=False)


def trial_number(runner: StudyRunner, rater_id: str, value) -> int:
    """`value` as a trial number. An API caller may send any JSON ("abc", 1.5, true), and `int()`
    turns some into a generic error and others (1.5) silently into another trial; the refusal names
    the value and this rater's range."""
    if isinstance(value, str) and value.strip().removeprefix("-").isdigit():
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value  # a whole number outside the plan is refused by the runner, naming the range
    plan = runner.store.plan(rater_id)
    accepted = f"this rater's trials are 0–{len(plan) - 1}" if plan else "trials are numbered from 0"
    raise _fail(f"trial {value!r} is not a trial number; {accepted}")


def client_address(request: gr.Request | None) -> str | None:
    """The caller's address, for the per-address cap on new raters (counted in memory, never stored)."""
    client = getattr(request, "client", None)
    return getattr(client, "host", None)


def api(runner: StudyRunner) -> None:
    """JSON endpoints for scripted raters (the load test): the same runner calls as the page.

    The server accepts only what it handed out: a trial must be fetched (`/study_trial`, which
    issues its key and records when it was shown) before `/study_submit` takes it with that key,
    and `/study_played` is refused until the clips could have been played to the end; ratings
    without it are stored flagged and left out of the analysis.
    """

    def study_begin(consent: bool, keep_audio: bool = False, invite: str = "", request: gr.Request = None) -> dict:
        """Take part: returns a new anonymous rater id and the number of trials (`invite`: the code, when set)."""
        try:
            rater_id, plan = runner.begin(consent, keep_audio, client=client_address(request), invite=invite)
        except PermissionError as e:
            raise _fail(str(e)) from e
        return {"rater_id": rater_id, "study_id": runner.config.id, "trials": len(plan)}

    def study_trial(rater_id: str, trial: int) -> dict:
        """Trial `trial` (0-based) of a rater: the clip id and replies A and B, the key to submit with,
        the server's shown-at time and how long the clips last."""
        index = trial_number(runner, rater_id, trial)
        try:
            return runner.view(rater_id, index).to_json()
        except LookupError as e:
            raise _fail(str(e)) from e

    def study_played(rater_id: str, trial: int, key: str) -> dict:
        """The trial's clips were played to the end (refused sooner after fetching than they last)."""
        index = trial_number(runner, rater_id, trial)  # outside: a gr.Error is a ValueError too
        try:
            runner.trial(rater_id, index)
            return {"played_at": runner.played(rater_id, index, key)}
        except (LookupError, ValueError, PermissionError) as e:
            raise _fail(str(e)) from e

    def study_submit(
        rater_id: str,
        trial: int,
        key: str,
        shown_at: float,
        empathy_a: int,
        quality_a: int,
        empathy_b: int,
        quality_b: int,
        preference: str,
        reason: str = "",
    ) -> dict:
        """Store one fetched trial's ratings once, with the key it was issued with (again: 'duplicate');
        reveals A and B only once this rater's rating of this trial is stored. `shown_at` is ignored
        (the server's is stored)."""
        del shown_at  # the server recorded when it handed the trial out
        index = trial_number(runner, rater_id, trial)
        try:
            view = replace(runner.issued_view(rater_id, index), key=key)
            scores = {"empathy_a": empathy_a, "quality_a": quality_a, "empathy_b": empathy_b, "quality_b": quality_b}
            return runner.submit(view, scores, preference, reason).to_json()
        except (LookupError, ValueError, PermissionError) as e:
            raise _fail(str(e)) from e

    def study_audit(token: str) -> dict:
        """Admin: rows per idempotency key and the assignment balance (for the load test)."""
        try:
            check_admin(token)
        except AdminTokenError as e:
            raise _fail(str(e)) from e
        counts = runner.store.assignment_counts(runner.config.id)
        return {"keys": runner.store.key_counts(), "assignment": balance(counts, runner.config)}

    for fn in (study_begin, study_trial, study_played, study_submit, study_audit):
        gr.api(fn, api_name=fn.__name__, **STUDY_QUEUE)

"""The study server accepts only what it handed out: no unblinding, no fake or unplayed ratings counted,
no balancing steered by abandoned plans, rate limits, an invitation code, and results behind the token.

In process: the JSON endpoints are called as the app registers them (`webui.study_api.api`), without a server.
"""

import argparse
import random
import sqlite3
from types import SimpleNamespace

import pytest

from blsp_emo import load_system
from blsp_emo.study import (
    ABANDON_SECONDS,
    SCHEMA_VERSION,
    RateLimited,
    StudyConfig,
    StudyLimits,
    StudyRefusal,
    StudyRunner,
    StudyStore,
    plan_trials,
    schema,
    write_report,
)
from blsp_emo.study import store as store_module
from study_fixtures import SYSTEMS, write_study

gr = pytest.importorskip("gradio")
from webui import study_api  # noqa: E402

SCORES = (7, 6, 3, 4)


@pytest.fixture(scope="module")
def systems(bundle_dir):
    return {name: load_system(name, model=str(bundle_dir)) for name in SYSTEMS}


@pytest.fixture()
def study(tmp_path):
    return StudyConfig.load(write_study(tmp_path / "study", trials=2))


def _runner(study, systems, tmp_path, **limits) -> StudyRunner:
    limits = {"submit_interval": 0.0, **limits}
    return StudyRunner(study, systems, StudyStore(tmp_path / "r.sqlite"), limits=StudyLimits(**limits))


def _endpoints(runner: StudyRunner) -> dict:
    """The study's JSON endpoints as the app registers them, callable in process."""
    with gr.Blocks() as demo:
        study_api.api(runner)
    return {fn.api_name: fn.fn for fn in demo.fns.values() if getattr(fn, "api_name", None)}


def _played(runner, rater, trial, key):
    """Report the clips played once they could have been (time moved on, not slept)."""
    issued = runner.store.issued(rater, trial)
    return runner.store.mark_played(rater, trial, key, now=issued["issued_at"] + issued["listen_seconds"])


def _submit(api, rater, trial, key, shown_at=0.0, preference="A"):
    return api["study_submit"](rater, trial, key, shown_at, *SCORES, preference, "")


def test_a_used_key_on_an_unrated_trial_is_refused_without_names(study, systems, tmp_path):
    runner = _runner(study, systems, tmp_path)
    api = _endpoints(runner)
    rater = api["study_begin"](True)["rater_id"]
    first = api["study_trial"](rater, 0)
    assert _submit(api, rater, 0, first["key"])["status"] == "stored"
    for fetched in (False, True):  # trial 1 not yet shown, then shown: the old key is refused either way
        if fetched:
            api["study_trial"](rater, 1)
        with pytest.raises(gr.Error) as refused:
            _submit(api, rater, 1, first["key"])
        assert not any(name in str(refused.value) for name in SYSTEMS)
    assert [r["trial"] for r in runner.store.ratings()] == [0]
    again = _submit(api, rater, 0, first["key"])  # a double click on the rated trial: names are no news
    assert again["status"] == "duplicate" and {again["a"], again["b"]} <= set(SYSTEMS)


def test_a_trial_never_issued_or_a_forged_key_is_refused_and_nothing_is_stored(study, systems, tmp_path):
    runner = _runner(study, systems, tmp_path)
    api = _endpoints(runner)
    rater = api["study_begin"](True)["rater_id"]
    with pytest.raises(gr.Error, match="never shown"):
        _submit(api, rater, 1, "a" * 32)
    assert runner.store.issued(rater, 1) is None  # refusing did not hand the trial out either
    view = api["study_trial"](rater, 0)
    with pytest.raises(gr.Error, match="not issued"):
        _submit(api, rater, 0, "f" * 32)
    with pytest.raises(gr.Error, match="unknown rater"):
        _submit(api, "someone-else", 0, view["key"])
    with pytest.raises(gr.Error, match="never shown|not issued"):
        api["study_played"](rater, 1, view["key"])
    assert runner.store.ratings() == []


def test_a_trial_index_that_is_not_a_trial_is_one_line_naming_it_and_the_range(study, systems, tmp_path):
    runner = _runner(study, systems, tmp_path)
    api = _endpoints(runner)
    rater = api["study_begin"](True)["rater_id"]
    calls = {
        "study_trial": lambda index: api["study_trial"](rater, index),
        "study_played": lambda index: api["study_played"](rater, index, "a" * 32),
        "study_submit": lambda index: _submit(api, rater, index, "a" * 32),
    }
    refusals = {
        "abc": "trial 'abc' is not a trial number; this rater's trials are 0–1",
        1.5: "trial 1.5 is not a trial number; this rater's trials are 0–1",  # int() would take trial 1
        True: "trial True is not a trial number; this rater's trials are 0–1",
        2**70: f"trial {2**70} is outside this rater's plan (0–1)",
        -1: "trial -1 is outside this rater's plan (0–1)",
    }
    for name, call in calls.items():
        for index, message in refusals.items():
            with pytest.raises(gr.Error) as refused:
                call(index)
            assert refused.value.message == message, (name, index)
    with pytest.raises(gr.Error, match="trial 'abc' is not a trial number; trials are numbered from 0"):
        api["study_trial"]("no-such-rater", "abc")
    assert api["study_trial"](rater, "1")["key"] == api["study_trial"](rater, 1.0)["key"]  # a number as text
    assert runner.store.ratings() == []


def test_the_stored_shown_at_is_the_servers_never_the_clients(study, systems, tmp_path):
    runner = _runner(study, systems, tmp_path)
    api = _endpoints(runner)
    rater = api["study_begin"](True)["rater_id"]
    view = api["study_trial"](rater, 0)
    assert api["study_trial"](rater, 0)["key"] == view["key"]  # fetched again: same key, same time
    _submit(api, rater, 0, view["key"], shown_at=1e308)
    (row,) = runner.store.ratings()
    assert row["shown_at"] == view["shown_at"] == runner.store.issued(rater, 0)["issued_at"]
    assert 0 <= row["rating_seconds"] < 60


def test_unplayed_ratings_are_flagged_and_left_out_of_the_analysis_by_default(study, systems, tmp_path):
    runner = _runner(study, systems, tmp_path)
    api = _endpoints(runner)
    raters = [api["study_begin"](True)["rater_id"] for _ in range(3)]
    for i, rater in enumerate(raters):
        view = api["study_trial"](rater, 0)
        if i == 0:
            with pytest.raises(gr.Error, match="play them to the end"):  # right after fetching: too soon
                api["study_played"](rater, 0, view["key"])
        if i < 2:
            _played(runner, rater, 0, view["key"])
        _submit(api, rater, 0, view["key"])
    rows = runner.store.ratings()
    assert [r["listened"] for r in rows] == [1, 1, 0]
    default = write_report(rows, tmp_path / "default", n_boot=20)
    assert default.summary["ratings"] == 2 and default.summary["unplayed"] == {"ratings": 1, "included": False}
    assert "1 rating whose audio was not played left out" in default.markdown
    everything = write_report(rows, tmp_path / "all", n_boot=20, include_unplayed=True)
    assert everything.summary["ratings"] == 3 and "included above" in everything.markdown


def test_an_abandoned_plan_does_not_steer_the_balancing(study, tmp_path):
    store = StudyStore(tmp_path / "r.sqlite")
    now = 1_000_000.0
    fresh = plan_trials(study, {}, {}, random.Random(5))  # what a rater gets in an empty study
    store.begin_rater(study, "gone", False, random.Random(5), now=now)  # the same conditions, never rated
    store.begin_rater(study, "rated", False, random.Random(9), now=now)
    key, _ = store.issue("rated", 0, "low", 0.0, now=now)
    rated = store.plan("rated")[0]
    store.submit_issued(_rating_for(rated, "rated", key), now=now + 10)
    later = now + ABANDON_SECONDS + 60  # both quiet for over 30 minutes
    counts = store.assignment_counts(study.id, now=later)
    assert counts == {(rated.pair, rated.swapped): 1}  # only the rated trial still counts
    # With only 'rated' trial 0 counting, a new rater's plan avoids just that condition, not those of 'gone'.
    expected = plan_trials(study, counts, {(rated.pair, rated.stimulus): 1}, random.Random(5))
    assert store.begin_rater(study, "new", False, random.Random(5), now=later) == expected
    live = store.assignment_counts(study.id, now=now + 60)  # before the 30 minutes, every plan counts
    assert sum(live.values()) == 3 * study.trials_per_rater and fresh == store.plan("gone")


def _rating_for(trial, rater, key):
    return store_module.Rating(
        key, "short-study", rater, trial.index, trial.stimulus, trial.system_a, trial.system_b, trial.swapped,
        *SCORES, "A", "", "a", "b", "r1", "r2", 0.0, 0.0, False,
    )  # fmt: skip


def test_rate_limits_refuse_a_burst_with_a_message(study, systems, tmp_path):
    runner = _runner(study, systems, tmp_path, submit_interval=30.0, begins_per_hour=3)
    api = _endpoints(runner)
    here, there = (SimpleNamespace(client=SimpleNamespace(host=h)) for h in ("10.0.0.1", "10.0.0.2"))
    raters = [api["study_begin"](True, False, "", here)["rater_id"] for _ in range(3)]
    with pytest.raises(gr.Error, match=r"too many new raters from your address \(at most 3 an hour\)"):
        api["study_begin"](True, False, "", here)
    assert api["study_begin"](True, False, "", there)["trials"] == 2  # another address is not held back
    rater = raters[0]
    keys = [api["study_trial"](rater, t)["key"] for t in (0, 1)]
    assert _submit(api, rater, 0, keys[0])["status"] == "stored"
    with pytest.raises(gr.Error, match=r"too fast: one rating every 30 s per rater"):
        _submit(api, rater, 1, keys[1])
    assert _submit(api, rater, 0, keys[0])["status"] == "duplicate"  # a double click is no new rating
    assert [r["trial"] for r in runner.store.ratings()] == [0]
    with pytest.raises(RateLimited):
        runner.submit(runner.issued_view(rater, 1), dict(zip(("empathy_a", "quality_a", "empathy_b", "quality_b"), SCORES)), "B")  # fmt: skip


def test_an_invitation_code_is_needed_when_set(study, systems, tmp_path, monkeypatch):
    runner = _runner(study, systems, tmp_path, invite="blue-heron-42")
    api = _endpoints(runner)
    for wrong in ("", "blue-heron", "BLUE-HERON-42"):
        with pytest.raises(gr.Error, match="invitation code"):
            api["study_begin"](True, False, wrong)
    assert runner.store.assignment_counts(study.id) == {}
    assert api["study_begin"](True, False, "blue-heron-42")["trials"] == 2
    monkeypatch.setenv("BLSP_EMO_STUDY_INVITE", "from-the-env")
    assert StudyLimits.from_env().invite == "from-the-env"
    assert StudyLimits.from_env(invite="from-the-flag").invite == "from-the-flag"


def test_study_report_refuses_without_the_admin_token(study, tmp_path, monkeypatch, capsys):
    from blsp_emo.study.cli import add_commands

    store = StudyStore(tmp_path / "r.sqlite")
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    monkeypatch.delenv("BLSP_EMO_ADMIN_TOKEN", raising=False)
    out = tmp_path / "report"
    for extra, env in (([], None), (["--token", "guess-guess"], "s3cret-token")):
        if env:
            monkeypatch.setenv("BLSP_EMO_ADMIN_TOKEN", env)
        args = parser.parse_args(["study", "report", "--db", str(store.path), "--out", str(out), *extra])
        assert args.func(args) == 2
        assert "BLSP_EMO_ADMIN_TOKEN" in capsys.readouterr().err and not out.exists()
    args = parser.parse_args(["study", "report", "--db", str(store.path), "--out", str(out), "--bootstrap", "10"])
    assert args.func(args) == 0 and (out / "report.md").is_file()


def test_a_version_1_database_opens_and_keeps_its_rows(study, tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        schema._run(db, schema._SCHEMA)  # the version-1 layout, as an older blsp_emo wrote it
        db.execute("PRAGMA user_version=1")
        db.execute("INSERT INTO raters VALUES ('old', 'short-study', 1.0, 0)")
        db.execute("INSERT INTO assignments VALUES ('old', 0, 'short-study', 'low', 'blsp-emo', 'blsp', 0)")
    store = StudyStore(path)
    rating = _rating_for(store.plan("old")[0], "old", "legacy-key")
    assert store.submit(rating) and store.schema_version() == SCHEMA_VERSION == 2
    assert StudyStore(path).ratings()[0]["idempotency_key"] == "legacy-key"  # opens again, nothing dropped
    with pytest.raises(StudyRefusal, match="never shown"):  # an old plan's trial was never issued
        store.submit_issued(rating)

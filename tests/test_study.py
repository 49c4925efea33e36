"""The study's parts without a server: config checks, balanced assignment, the store, the analysis."""

import inspect
import json
import random
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from blsp_emo import load_system
from blsp_emo.study import (
    DEFAULT_STUDY,
    SCHEMA_VERSION,
    AdminTokenError,
    Rating,
    StudyConfig,
    StudyConfigError,
    StudyRunner,
    StudyStore,
    StudyStoreError,
    UploadSettings,
    balance,
    check_admin,
    plan_trials,
    write_report,
)
from blsp_emo.study.analysis import bradley_terry, fit_bradley_terry, outcome_matrix
from study_fixtures import SYSTEMS, write_study

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def study(tmp_path):
    return StudyConfig.load(write_study(tmp_path / "study"))


@pytest.fixture(scope="module")
def systems(bundle_dir):
    return {name: load_system(name, model=str(bundle_dir)) for name in SYSTEMS}


def _rating(plan_trial, rater, key=None, **kw) -> Rating:
    fields = dict(
        idempotency_key=key or f"{rater}-{plan_trial.index}",
        study_id="short-study",
        rater_id=rater,
        trial=plan_trial.index,
        stimulus=plan_trial.stimulus,
        system_a=plan_trial.system_a,
        system_b=plan_trial.system_b,
        swapped=plan_trial.swapped,
        empathy_a=7,
        quality_a=6,
        empathy_b=3,
        quality_b=4,
        preference="A",
        reason="",
        reply_a="a",
        reply_b="b",
        revision_a="r1",
        revision_b="r2",
        shown_at=1.0,
        submitted_at=3.5,
        listened=True,
    )
    return Rating(**{**fields, **kw})


# --- configuration -------------------------------------------------------------------------------


def test_the_example_study_is_valid_and_uses_bundled_clips():
    config = StudyConfig.load(DEFAULT_STUDY)
    assert all(s.audio.is_file() and s.audio.parent.name == "examples" for s in config.stimuli)
    assert len(config.pairs) == len(config.systems) * (len(config.systems) - 1) // 2
    assert config.options.greedy  # one reply per clip and system: every rater sees the same


@pytest.mark.parametrize(
    "change, named",
    [
        (lambda s: s["stimuli"].append({"id": "gone", "audio": "nowhere/missing.wav"}), "missing.wav"),
        (lambda s: s["systems"].append("gpt-5-voice"), "gpt-5-voice"),
        (lambda s: s.update(trials_per_rater=0), "trials_per_rater"),
        (lambda s: s["stimuli"].append({"id": "low", "audio": "low.wav"}), "'low' appears twice"),
        (lambda s: s.update(systems=["blsp-emo"]), "at least 2 systems"),
        (lambda s: s.update(questions=[{"id": "empathy", "label": "E"}]), "questions"),
        (lambda s: s.update(colour="blue"), "'colour'"),
    ],
)
def test_bad_study_files_are_refused_naming_the_item(tmp_path, change, named):
    path = write_study(tmp_path)
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))
    with pytest.raises(StudyConfigError, match=named.replace("(", r"\(")) as e:
        StudyConfig.load(path)
    assert str(path) in str(e.value)


def test_a_study_naming_a_system_the_app_did_not_load_is_refused(study, systems):
    with pytest.raises(StudyConfigError, match="'cascade' is in the study but not loaded"):
        StudyRunner(study, {k: v for k, v in systems.items() if k != "cascade"}, StudyStore(":memory:"))


@pytest.mark.server
def test_app_refuses_a_bad_study_at_start_naming_it(tmp_path):
    path = write_study(tmp_path)
    raw = json.loads(path.read_text())
    raw["stimuli"][1]["audio"] = "typo_high.wav"
    path.write_text(json.dumps(raw))
    run = subprocess.run(
        [sys.executable, "app.py", "--study", str(path), "--tts", "none", "--port", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0 and "typo_high.wav" in run.stderr and "Running on" not in run.stdout
    check = subprocess.run(
        [sys.executable, "-m", "blsp_emo", "study", "check", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 2 and "typo_high.wav" in check.stderr


# --- assignment ----------------------------------------------------------------------------------


@pytest.mark.parametrize("raters, trials", [(1, 2), (7, 2), (50, 2), (13, 5), (5, 9)])
def test_every_pair_and_order_is_used_equally_often(tmp_path, raters, trials):
    config = StudyConfig.load(write_study(tmp_path, trials=trials))
    store = StudyStore(tmp_path / "r.sqlite")
    for i in range(raters):
        plan = store.begin_rater(config, f"rater{i}", False, random.Random(i))
        assert len(plan) == trials and len({t.index for t in plan}) == trials
        if trials <= 6:  # a rater never sees the same pair and order twice while others are unused
            assert len({(t.pair, t.swapped) for t in plan}) == trials
    summary = balance(store.assignment_counts(config.id), config)
    assert summary["spread"] <= 1 and sum(summary["conditions"].values()) == raters * trials


def test_a_rater_hears_every_clip_before_one_repeats(study):
    plan = plan_trials(study, {}, {}, random.Random(0))
    assert {t.stimulus for t in plan} == {"low", "high"}


def test_concurrent_raters_still_get_a_balanced_assignment(study, tmp_path):
    store = StudyStore(tmp_path / "r.sqlite")
    threads = [threading.Thread(target=store.begin_rater, args=(study, f"r{i}", False)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert balance(store.assignment_counts(study.id), study)["spread"] <= 1


# --- storage -------------------------------------------------------------------------------------


def test_store_is_wal_and_versioned_and_refuses_a_newer_schema(tmp_path):
    path = tmp_path / "deep" / "ratings.sqlite"
    store = StudyStore(path)
    assert store.schema_version() == SCHEMA_VERSION
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(StudyStoreError, match="newer"):
        StudyStore(path)


def test_a_double_click_records_once(study, tmp_path):
    store = StudyStore(tmp_path / "r.sqlite")
    plan = store.begin_rater(study, "rater", False)
    assert store.submit(_rating(plan[0], "rater", key="k1")) is True
    assert store.submit(_rating(plan[0], "rater", key="k1")) is False  # same key
    assert store.submit(_rating(plan[0], "rater", key="k2")) is False  # same trial, another page load
    rows = store.ratings()
    assert len(rows) == 1 and rows[0]["winner"] == plan[0].system_a and rows[0]["rating_seconds"] == 2.5
    assert {
        "study_id",
        "rater_id",
        "trial",
        "stimulus",
        "system_a",
        "system_b",
        "swapped",
        "revision_a",
        "shown_at",
        "submitted_at",
    } <= set(rows[0])


def test_export_keeps_a_typed_formula_from_running_in_a_spreadsheet(study, tmp_path):
    import csv

    store = StudyStore(tmp_path / "r.sqlite")
    plan = store.begin_rater(study, "rater", False)
    store.submit(_rating(plan[0], "rater", reason='=HYPERLINK("http://x","click")'))
    store.export_csv(tmp_path / "out.csv")
    row = next(csv.DictReader(open(tmp_path / "out.csv", encoding="utf-8")))
    assert row["reason"] == '\'=HYPERLINK("http://x","click")' and row["empathy_a"] == "7"
    assert store.ratings()[0]["reason"].startswith("=")  # the database keeps what was typed


def test_a_rating_outside_the_plan_or_scale_is_refused(study, tmp_path):
    store = StudyStore(tmp_path / "r.sqlite")
    plan = store.begin_rater(study, "rater", False)
    with pytest.raises(ValueError, match="no trial"):
        store.submit(_rating(plan[0], "stranger"))
    with pytest.raises(ValueError, match="empathy_b must be a whole number 0–10, got 11"):
        _rating(plan[0], "rater", empathy_b=11)
    with pytest.raises(ValueError, match="preference"):
        _rating(plan[0], "rater", preference="C")
    assert store.ratings() == []


def test_an_unwritable_database_path_says_what_to_do(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(StudyStoreError, match="--study-db"):
        StudyStore(tmp_path / "file" / "ratings.sqlite")


# --- the runner: blind trials, reveal, audio only with consent ------------------------------------


def test_runner_hides_identities_until_submission(study, systems, tmp_path):
    runner = StudyRunner(study, systems, StudyStore(tmp_path / "r.sqlite"))
    with pytest.raises(PermissionError, match="I agree"):
        runner.begin(consent=False)
    rater, plan = runner.begin(consent=True)
    view = runner.view(rater, 0)
    shown = json.dumps(view.to_json())
    assert not any(name in shown for name in SYSTEMS)  # no system name before the ratings
    again = runner.view(rater, 0)
    assert (again.reply_a, again.reply_b) == (view.reply_a, view.reply_b)  # computed once, the same for all
    result = runner.submit(view, {"empathy_a": 8, "quality_a": 7, "empathy_b": 2, "quality_b": 5}, "A")
    assert result.stored and (result.system_a, result.system_b) == (plan[0].system_a, plan[0].system_b)
    row = runner.store.ratings()[0]
    assert row["revision_a"] == runner.revisions[plan[0].system_a] and "@" in row["revision_a"]


def test_a_signed_in_rater_resumes_their_plan_under_a_hashed_id(study, systems, tmp_path):
    runner = StudyRunner(study, systems, StudyStore(tmp_path / "r.sqlite"))
    first, plan = runner.begin(consent=True, login="alice")
    again, plan_again = runner.begin(consent=True, login="alice")
    other, _ = runner.begin(consent=True, login="bob")
    assert first == again and plan == plan_again and other != first
    assert "alice" not in first and len(runner.store.assignment_counts(study.id)) <= 6
    assert sum(runner.store.assignment_counts(study.id).values()) == 2 * study.trials_per_rater


@pytest.mark.parametrize("consent_audio", [False, True])
def test_own_recordings_are_kept_only_with_consent(study, systems, tmp_path, clip_path, consent_audio):
    runner = StudyRunner(study, systems, StudyStore(tmp_path / "db" / "r.sqlite"))
    rater, _ = runner.begin(consent=True, keep_audio=consent_audio)
    view = runner.view(rater, 0, own_audio=str(clip_path))
    assert view.stimulus == "own-recording" and view.stimulus_audio is None
    runner.submit(
        view, {"empathy_a": 5, "quality_a": 5, "empathy_b": 5, "quality_b": 5}, "tie", own_audio=str(clip_path)
    )
    kept = list((tmp_path / "db").glob("audio/*.wav"))
    row = runner.store.ratings()[0]
    assert (
        (len(kept) == 1 and row["audio_path"] == str(kept[0]))
        if consent_audio
        else (kept == [] and row["audio_path"] is None)
    )


# --- access and upload ---------------------------------------------------------------------------


def test_admin_token_is_required_and_compared_exactly():
    with pytest.raises(AdminTokenError, match="set BLSP_EMO_ADMIN_TOKEN"):
        check_admin("anything", environ={})
    env = {"BLSP_EMO_ADMIN_TOKEN": "correct horse"}
    for wrong in (None, "", "correct hors", "correct horse "):
        with pytest.raises(AdminTokenError, match="wrong or missing") as e:
            check_admin(wrong, environ=env)
        assert "correct horse" not in str(e.value)  # never echo the secret
    check_admin("correct horse", environ=env)


@pytest.mark.server
def test_export_refuses_without_the_admin_token(study, tmp_path):
    store = StudyStore(tmp_path / "r.sqlite")
    plan = store.begin_rater(study, "rater", False)
    store.submit(_rating(plan[0], "rater"))
    out = tmp_path / "ratings.csv"
    cmd = [sys.executable, "-m", "blsp_emo", "study", "export", "--db", str(store.path), "--out", str(out)]
    env = {k: v for k, v in __import__("os").environ.items() if k != "BLSP_EMO_ADMIN_TOKEN"}
    refused = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert refused.returncode == 2 and "BLSP_EMO_ADMIN_TOKEN" in refused.stderr and not out.exists()
    wrong = subprocess.run(
        cmd + ["--token", "guess-guess"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**env, "BLSP_EMO_ADMIN_TOKEN": "s3cret-token"},
        timeout=120,
    )
    assert wrong.returncode == 2 and not out.exists()
    ok = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, env={**env, "BLSP_EMO_ADMIN_TOKEN": "s3cret-token"}, timeout=120
    )
    assert ok.returncode == 0 and out.read_text().count("\n") == 2  # header + one rating


def test_hub_upload_is_off_by_default_and_configured_for_a_private_dataset(tmp_path):
    from huggingface_hub import CommitScheduler

    assert UploadSettings.from_env({}) is None
    env = {"BLSP_EMO_STUDY_UPLOAD_REPO": "lab/ratings", "BLSP_EMO_STUDY_UPLOAD_EVERY": "5"}
    settings = UploadSettings.from_env(env)
    kwargs = settings.scheduler_kwargs(tmp_path)
    inspect.signature(CommitScheduler).bind(**kwargs)  # every argument is one CommitScheduler takes
    assert kwargs["repo_type"] == "dataset" and kwargs["private"] and kwargs["every"] == 5.0
    with pytest.raises(ValueError, match="BLSP_EMO_STUDY_UPLOAD_EVERY"):
        UploadSettings.from_env({"BLSP_EMO_STUDY_UPLOAD_REPO": "lab/ratings", "BLSP_EMO_STUDY_UPLOAD_EVERY": "soon"})


@pytest.mark.server
def test_an_upload_that_cannot_reach_the_hub_stops_the_app_saying_why(tmp_path, bundle_dir):
    env = {**__import__("os").environ, "BLSP_EMO_STUDY_UPLOAD_REPO": "lab/ratings", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [
            sys.executable,
            "app.py",
            "--model",
            str(bundle_dir),
            "--systems",
            ",".join(SYSTEMS),
            "--tts",
            "none",
            "--study",
            str(write_study(tmp_path)),
            "--study-db",
            str(tmp_path / "r.sqlite"),
            "--port",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert run.returncode != 0 and "study upload" in run.stderr and "BLSP_EMO_STUDY_UPLOAD_REPO" in run.stderr


# --- analysis ------------------------------------------------------------------------------------


def _synthetic_rows(strengths: dict, n: int, seed: int, raters: int = 40, tie_rate: float = 0.15) -> list[dict]:
    """Comparisons drawn from a Bradley–Terry model with known log-strengths (ties at random)."""
    rng = np.random.default_rng(seed)
    names, rows = list(strengths), []
    for i in range(n):
        a, b = rng.choice(len(names), size=2, replace=False)
        sa, sb = names[a], names[b]
        p_a = 1 / (1 + np.exp(strengths[sb] - strengths[sa]))
        u = rng.random()
        winner = rng.choice(["tie", "both-bad"]) if u < tie_rate else sa if rng.random() < p_a else sb
        rows.append(
            {
                "rater_id": f"r{i % raters}",
                "study_id": "s",
                "stimulus": f"c{i % 5}",
                "system_a": sa,
                "system_b": sb,
                "winner": winner,
                "empathy_a": int(rng.integers(0, 11)),
                "quality_a": int(rng.integers(0, 11)),
                "empathy_b": int(rng.integers(0, 11)),
                "quality_b": int(rng.integers(0, 11)),
            }
        )
    return rows


def test_bradley_terry_recovers_a_known_order():
    truth = {"best": 1.5, "good": 0.5, "fair": -0.5, "poor": -1.5}
    rows = _synthetic_rows(truth, 3000, seed=1)
    fitted = fit_bradley_terry(outcome_matrix(rows, list(truth)), prior=0.0)
    # Ties count half a win each way, which shrinks the scale by about (1 - tie rate).
    assert list(np.argsort(-fitted)) == [0, 1, 2, 3]
    assert np.allclose(fitted / 0.85, np.array(list(truth.values())), atol=0.2)
    table = bradley_terry(rows, n_boot=200, seed=0)
    assert [r["system"] for r in table] == list(truth)
    assert all(r["lo"] < r["strength"] < r["hi"] for r in table)
    assert table[0]["lo"] > table[1]["hi"]  # 3000 comparisons separate neighbours one unit apart


def test_bradley_terry_keeps_an_unbeaten_system_finite():
    rows = [{"rater_id": "r", "system_a": "a", "system_b": "b", "winner": "a"}] * 5
    assert np.isfinite(fit_bradley_terry(outcome_matrix(rows, ["a", "b"]))).all()


def test_report_writes_tables_plots_and_agreement(tmp_path):
    rows = _synthetic_rows({"x": 1.0, "y": 0.0, "z": -1.0}, 300, seed=2, raters=10)
    report = write_report(rows, tmp_path / "out", n_boot=100)
    names = {p.name for p in report.tables + report.plots}
    assert {
        "scores.csv",
        "pairwise.csv",
        "bradley_terry.csv",
        "summary.json",
        "report.md",
        "scores.png",
        "bradley_terry.png",
        "preferences.png",
    } <= names
    assert all(p.stat().st_size > 1000 for p in report.plots)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["ratings"] == 300 and summary["raters"] == 10
    assert summary["agreement"]["empathy"]["items"] > 0  # clip × system items rated by several raters
    assert [r["system"] for r in summary["bradley_terry"]] == ["x", "y", "z"]

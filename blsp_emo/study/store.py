"""Ratings that are never lost: SQLite in WAL mode, one transaction per submission, versioned schema.

Every write is one `BEGIN IMMEDIATE … COMMIT` on its own connection, with `synchronous=FULL`, so a
rating is on disk before the rater sees it acknowledged, and a killed server loses nothing that
was acknowledged. The idempotency key (and one rating per rater and trial) make a double click, a
retried request or a resubmitted page record once.

The server accepts only what it handed out (`submit_issued`): a trial is *issued* to its rater when
first shown, with a random key and the server's own shown-at time (`issue`); a rating must carry
that key, takes its shown-at time from the issue, and is flagged unless the server saw the clip
played for as long as it lasts (`mark_played`). Plans whose rater went quiet for `ABANDON_SECONDS`
stop counting in the balancing, except for the trials they rated.
"""

from __future__ import annotations

import csv
import hmac
import os
import random
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from blsp_emo.study.assign import Condition, Trial, plan_trials
from blsp_emo.study.config import PREFERENCES, SCALE, StudyConfig
from blsp_emo.study.schema import StudyStoreError, migrate

# A plan whose rater did nothing (no trial shown, played or rated) for 30 minutes is abandoned: its
# unrated trials stop counting in the pair balancing. A trial takes a minute or two and a plan a
# few, so 30 minutes is far beyond a rater who is still at it, yet short enough that a burst of
# begun-and-dropped plans cannot steer which pairs the next raters see for long.
ABANDON_SECONDS = 30 * 60
PLAY_SLACK_SECONDS = 0.25  # a clip reported played this much before its length is up still counts
DEFAULT_DB = Path("runs") / "study" / "ratings.sqlite"
DB_ENV = "BLSP_EMO_STUDY_DB"


class StudyRefusal(PermissionError):
    """A submission or call the server does not accept (not issued, forged key, too fast); says why."""


class RateLimited(StudyRefusal):
    """Too many requests from one rater or client address; the message says when to try again."""


@dataclass(frozen=True)
class Rating:
    """One submitted trial, as stored: identities, order, scores, timings and model revisions."""

    idempotency_key: str
    study_id: str
    rater_id: str
    trial: int
    stimulus: str
    system_a: str
    system_b: str
    swapped: bool
    empathy_a: int
    quality_a: int
    empathy_b: int
    quality_b: int
    preference: str  # A, B, tie, both-bad
    reason: str
    reply_a: str
    reply_b: str
    revision_a: str
    revision_b: str
    shown_at: float
    submitted_at: float
    listened: bool  # every clip on the page was played to its end before rating
    audio_path: str | None = None  # the rater's own recording, kept only with consent

    def __post_init__(self):
        lo, hi = SCALE
        for name in ("empathy_a", "quality_a", "empathy_b", "quality_b"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                raise ValueError(f"{name} must be a whole number {lo}–{hi}, got {value!r}")
        if self.preference not in PREFERENCES:
            raise ValueError(f"preference must be one of {list(PREFERENCES)}, got {self.preference!r}")
        if not self.idempotency_key or len(self.idempotency_key) > 128:
            raise ValueError("idempotency_key must be 1–128 characters")

    @property
    def winner(self) -> str:
        """The preferred system's name, or 'tie' / 'both-bad'."""
        return {"A": self.system_a, "B": self.system_b}.get(self.preference, self.preference)


EXPORT_COLUMNS = [f.name for f in fields(Rating)] + ["winner", "rating_seconds"]


class StudyStore:
    """The ratings database at `path` (created with its folder on first use)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._transaction() as db:
                migrate(db)
        except (sqlite3.Error, OSError) as e:
            raise StudyStoreError(
                f"study database {self.path}: {e}; pass --study-db PATH (or set {DB_ENV}) to a writable file"
            ) from e

    @classmethod
    def from_env(cls, path: str | Path | None = None) -> StudyStore:
        """`path`, else $BLSP_EMO_STUDY_DB, else runs/study/ratings.sqlite."""
        return cls(path or os.environ.get(DB_ENV) or DEFAULT_DB)

    @contextmanager
    def _transaction(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        # A connection per transaction: safe from any thread, and nothing half-written survives an error.
        # Writers take the lock up front (IMMEDIATE), so a plan is computed from counts no one else is
        # changing; readers do not wait for writers in WAL mode.
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # acknowledged means on disk
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    def schema_version(self) -> int:
        with self._transaction(write=False) as db:
            return db.execute("PRAGMA user_version").fetchone()[0]

    # --- raters and their plans ------------------------------------------------------------------

    def begin_rater(
        self,
        config: StudyConfig,
        rater_id: str,
        consent_audio: bool,
        rng: random.Random | None = None,
        now: float | None = None,
    ) -> list[Trial]:
        """Register a rater and store their plan, counted against every live plan in one transaction."""
        rng = rng or random.Random()
        now = time.time() if now is None else now
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM raters WHERE rater_id=?", (rater_id,)).fetchone():
                db.execute("UPDATE raters SET active_at=? WHERE rater_id=?", (now, rater_id))
                return self._plan(db, rater_id)
            conditions, stimuli = self._usage(db, config.id, now)
            trials = plan_trials(config, conditions, stimuli, rng)
            db.execute(
                "INSERT INTO raters (rater_id, study_id, created_at, consent_audio, active_at) VALUES (?, ?, ?, ?, ?)",
                (rater_id, config.id, now, int(consent_audio), now),
            )
            db.executemany(
                "INSERT INTO assignments (rater_id, trial, study_id, stimulus, pair_first, pair_second, swapped) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(rater_id, t.index, config.id, t.stimulus, *t.pair, int(t.swapped)) for t in trials],
            )
        return trials

    def plan(self, rater_id: str) -> list[Trial]:
        with self._transaction(write=False) as db:
            return self._plan(db, rater_id)

    def consented_audio(self, rater_id: str) -> bool:
        with self._transaction(write=False) as db:
            row = db.execute("SELECT consent_audio FROM raters WHERE rater_id=?", (rater_id,)).fetchone()
        return bool(row and row[0])

    @staticmethod
    def _plan(db, rater_id: str) -> list[Trial]:
        rows = db.execute(
            "SELECT trial, stimulus, pair_first, pair_second, swapped FROM assignments WHERE rater_id=? ORDER BY trial",
            (rater_id,),
        ).fetchall()
        return [Trial(i, s, (a, b), bool(w)) for i, s, a, b, w in rows]

    @staticmethod
    def _usage(db, study_id: str, now: float | None = None) -> tuple[dict[Condition, int], dict]:
        """Conditions and clips of the live plans: every rated trial, and the unrated trials of raters
        active in the last ABANDON_SECONDS (an abandoned plan's unrated trials do not steer balancing)."""
        now = time.time() if now is None else now
        live = (
            "FROM assignments a JOIN raters r ON r.rater_id = a.rater_id WHERE a.study_id=? AND "
            "(COALESCE(r.active_at, r.created_at) > ? OR EXISTS "
            "(SELECT 1 FROM ratings g WHERE g.rater_id = a.rater_id AND g.trial = a.trial))"
        )
        args = (study_id, now - ABANDON_SECONDS)
        conditions = {
            ((a, b), bool(w)): n
            for a, b, w, n in db.execute(
                f"SELECT a.pair_first, a.pair_second, a.swapped, COUNT(*) {live} "
                "GROUP BY a.pair_first, a.pair_second, a.swapped",
                args,
            )
        }
        stimuli = {
            ((a, b), s): n
            for a, b, s, n in db.execute(
                f"SELECT a.pair_first, a.pair_second, a.stimulus, COUNT(*) {live} "
                "GROUP BY a.pair_first, a.pair_second, a.stimulus",
                args,
            )
        }
        return conditions, stimuli

    def assignment_counts(self, study_id: str, now: float | None = None) -> dict[Condition, int]:
        """Trials per condition that count in the balancing (abandoned plans' unrated trials left out)."""
        with self._transaction(write=False) as db:
            return self._usage(db, study_id, now)[0]

    # --- what the server handed out ------------------------------------------------------------

    def issue(
        self,
        rater_id: str,
        trial: int,
        stimulus: str,
        listen_seconds: float,
        reissue: bool = False,
        now: float | None = None,
    ) -> tuple[str, float]:
        """The trial's submission key and shown-at time, made (and stored) the first time it is shown.

        Showing it again returns the same key and time, so a reloaded page or a retried request
        submits once. `reissue` (the rater's own recording replaces the clip) keeps the key but
        restarts the clock and forgets an earlier play.
        """
        now = time.time() if now is None else now
        with self._transaction() as db:
            row = db.execute(
                "SELECT issued_key, issued_at FROM assignments WHERE rater_id=? AND trial=?", (rater_id, trial)
            ).fetchone()
            if row is None:
                raise LookupError(f"rater {rater_id!r} has no trial {trial}; start the study first")
            key, issued_at = row
            if key is None or reissue:
                key, issued_at = key or secrets.token_hex(16), now
                db.execute(
                    "UPDATE assignments SET issued_key=?, issued_at=?, issued_stimulus=?, listen_seconds=?, "
                    "played_at=NULL WHERE rater_id=? AND trial=?",
                    (key, issued_at, stimulus, float(listen_seconds), rater_id, trial),
                )
            db.execute("UPDATE raters SET active_at=? WHERE rater_id=?", (now, rater_id))
        return key, issued_at

    def issued(self, rater_id: str, trial: int) -> dict | None:
        """What was handed out for a trial (key, shown-at, clip, listening time, played-at), None if nothing."""
        with self._transaction(write=False) as db:
            db.row_factory = sqlite3.Row
            row = db.execute(
                "SELECT issued_key, issued_at, issued_stimulus, listen_seconds, played_at FROM assignments "
                "WHERE rater_id=? AND trial=? AND issued_key IS NOT NULL",
                (rater_id, trial),
            ).fetchone()
        return dict(row) if row else None

    def mark_played(self, rater_id: str, trial: int, key: str, now: float | None = None) -> float:
        """Record that the trial's clips were played; refused for a trial not issued with this key, or
        sooner after the issue than the clips last. Returns the stored played-at time."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            row = self._issued_row(db, rater_id, trial, key)
            issued_at, listen, played = row
            if played is not None:
                return played
            elapsed = now - issued_at
            if elapsed + PLAY_SLACK_SECONDS < (listen or 0.0):
                raise StudyRefusal(
                    f"trial {trial}'s clips last {listen:.1f} s, but it was shown only {elapsed:.1f} s ago: "
                    "play them to the end first"
                )
            db.execute("UPDATE assignments SET played_at=? WHERE rater_id=? AND trial=?", (now, rater_id, trial))
            db.execute("UPDATE raters SET active_at=? WHERE rater_id=?", (now, rater_id))
        return now

    @staticmethod
    def _issued_row(db, rater_id: str, trial: int, key: str) -> tuple:
        row = db.execute(
            "SELECT issued_key, issued_at, listen_seconds, played_at FROM assignments WHERE rater_id=? AND trial=?",
            (rater_id, trial),
        ).fetchone()
        if row is None:
            raise StudyRefusal(f"rater {rater_id!r} has no trial {trial}; start the study first")
        issued_key, *rest = row
        if issued_key is None:
            raise StudyRefusal(f"trial {trial} was never shown to this rater: fetch it first")
        if not isinstance(key, str) or not hmac.compare_digest(key.encode(), issued_key.encode()):
            raise StudyRefusal(f"this key was not issued for trial {trial}: submit with the key it was shown with")
        return tuple(rest)

    # --- ratings ---------------------------------------------------------------------------------

    def submit(self, rating: Rating) -> bool:
        """Record `rating` as given, in one transaction; False when its key (or its trial) was already recorded.

        For trusted callers only (tests, imports): it takes the rating's shown-at time and listened
        flag as they are. What raters send goes through `submit_issued`.
        """
        with self._transaction() as db:
            planned = db.execute(
                "SELECT 1 FROM assignments WHERE rater_id=? AND trial=? AND study_id=?",
                (rating.rater_id, rating.trial, rating.study_id),
            ).fetchone()
            if not planned:
                raise ValueError(
                    f"rater {rating.rater_id!r} has no trial {rating.trial} in study {rating.study_id!r}; "
                    "start the study first"
                )
            return self._insert(db, rating)

    def submit_issued(self, rating: Rating, min_interval: float = 0.0, now: float | None = None) -> bool:
        """Record a rater's submission only as the server handed it out, in one transaction.

        Refused (`StudyRefusal`, nothing stored) unless the trial was issued to this rater and the
        rating carries the key it was issued with. The stored shown-at time is the issue's, the
        submitted-at time is `now`, and `listened` is whether the server saw the clips played
        (`mark_played`), whatever the rating says. False (a duplicate) only when this rater's rating
        of this very trial is already stored. A rater's new rating less than `min_interval` seconds
        after their previous one is refused (`RateLimited`).
        """
        now = time.time() if now is None else now
        with self._transaction() as db:
            issued_at, _, played = self._issued_row(db, rating.rater_id, rating.trial, rating.idempotency_key)
            if db.execute(
                "SELECT 1 FROM ratings WHERE rater_id=? AND trial=?", (rating.rater_id, rating.trial)
            ).fetchone():
                return False
            (last,) = db.execute(
                "SELECT MAX(submitted_at) FROM ratings WHERE rater_id=?", (rating.rater_id,)
            ).fetchone()
            if last is not None and now - last < min_interval:
                raise RateLimited(
                    f"too fast: one rating every {min_interval:g} s per rater; try again in "
                    f"{min_interval - (now - last):.1f} s"
                )
            rating = replace(rating, shown_at=float(issued_at), submitted_at=now, listened=played is not None)
            stored = self._insert(db, rating)
            if not stored:  # only a key from an older database could collide; say so, reveal nothing
                raise StudyRefusal(f"this key was already used for another rating than trial {rating.trial}")
            db.execute("UPDATE raters SET active_at=? WHERE rater_id=?", (now, rating.rater_id))
            return True

    @staticmethod
    def _insert(db, rating: Rating) -> bool:
        row = {
            **asdict(rating),
            "winner": rating.winner,
            "rating_seconds": round(rating.submitted_at - rating.shown_at, 3),
        }
        names = ", ".join(row)
        cursor = db.execute(
            f"INSERT INTO ratings ({names}) VALUES ({', '.join('?' * len(row))}) ON CONFLICT DO NOTHING",
            [_sql(v) for v in row.values()],
        )
        return cursor.rowcount == 1

    def has_rating(self, rater_id: str, trial: int) -> bool:
        with self._transaction(write=False) as db:
            return bool(db.execute("SELECT 1 FROM ratings WHERE rater_id=? AND trial=?", (rater_id, trial)).fetchone())

    def submitted_trials(self, rater_id: str) -> set[int]:
        with self._transaction(write=False) as db:
            return {t for (t,) in db.execute("SELECT trial FROM ratings WHERE rater_id=?", (rater_id,))}

    def ratings(self, study_id: str | None = None) -> list[dict]:
        """Every stored rating (of one study, or all), oldest first, as export rows."""
        with self._transaction(write=False) as db:
            db.row_factory = sqlite3.Row
            where, args = ("WHERE study_id=?", (study_id,)) if study_id else ("", ())
            rows = db.execute(f"SELECT {', '.join(EXPORT_COLUMNS)} FROM ratings {where} ORDER BY id", args).fetchall()
        return [dict(r) for r in rows]

    def key_counts(self) -> dict[str, int]:
        """How many rows each idempotency key has (1 each, by the unique constraint)."""
        with self._transaction(write=False) as db:
            return dict(db.execute("SELECT idempotency_key, COUNT(*) FROM ratings GROUP BY idempotency_key"))

    def export_csv(self, out: str | Path, study_id: str | None = None) -> int:
        """Write every rating to a CSV file (one row per trial); returns the number of rows."""
        rows = self.ratings(study_id)
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, EXPORT_COLUMNS)
            writer.writeheader()
            writer.writerows({k: _cell(v) for k, v in r.items()} for r in rows)
        os.replace(tmp, out)  # readers (and an uploader) never see half a file
        return len(rows)


def _cell(value):
    """A CSV cell that a spreadsheet will not run as a formula (OWASP CSV injection): raters type the reasons."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _sql(value):
    return int(value) if isinstance(value, bool) else value

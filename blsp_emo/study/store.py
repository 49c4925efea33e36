"""Ratings that are never lost: SQLite in WAL mode, one transaction per submission, versioned schema.

Every write is one `BEGIN IMMEDIATE … COMMIT` on its own connection, with `synchronous=FULL`, so a
rating is on disk before the rater sees it acknowledged, and a killed server loses nothing that
was acknowledged. The idempotency key (and one rating per rater and trial) make a double click, a
retried request or a resubmitted page record once.
"""

from __future__ import annotations

import csv
import os
import random
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from blsp_emo.study.assign import Condition, Trial, plan_trials
from blsp_emo.study.config import PREFERENCES, SCALE, StudyConfig

SCHEMA_VERSION = 1
DEFAULT_DB = Path("runs") / "study" / "ratings.sqlite"
DB_ENV = "BLSP_EMO_STUDY_DB"

_SCHEMA = """
CREATE TABLE raters (
    rater_id TEXT PRIMARY KEY,
    study_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    consent_audio INTEGER NOT NULL CHECK (consent_audio IN (0, 1))
);
CREATE TABLE assignments (
    rater_id TEXT NOT NULL REFERENCES raters(rater_id),
    trial INTEGER NOT NULL,
    study_id TEXT NOT NULL,
    stimulus TEXT NOT NULL,
    pair_first TEXT NOT NULL,
    pair_second TEXT NOT NULL,
    swapped INTEGER NOT NULL CHECK (swapped IN (0, 1)),
    PRIMARY KEY (rater_id, trial)
);
CREATE INDEX assignments_by_study ON assignments (study_id);
CREATE TABLE ratings (
    id INTEGER PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    study_id TEXT NOT NULL,
    rater_id TEXT NOT NULL REFERENCES raters(rater_id),
    trial INTEGER NOT NULL,
    stimulus TEXT NOT NULL,
    system_a TEXT NOT NULL,
    system_b TEXT NOT NULL,
    swapped INTEGER NOT NULL,
    empathy_a INTEGER NOT NULL CHECK (empathy_a BETWEEN 0 AND 10),
    quality_a INTEGER NOT NULL CHECK (quality_a BETWEEN 0 AND 10),
    empathy_b INTEGER NOT NULL CHECK (empathy_b BETWEEN 0 AND 10),
    quality_b INTEGER NOT NULL CHECK (quality_b BETWEEN 0 AND 10),
    preference TEXT NOT NULL CHECK (preference IN ('A', 'B', 'tie', 'both-bad')),
    winner TEXT NOT NULL,
    reason TEXT NOT NULL,
    reply_a TEXT NOT NULL,
    reply_b TEXT NOT NULL,
    revision_a TEXT NOT NULL,
    revision_b TEXT NOT NULL,
    shown_at REAL NOT NULL,
    submitted_at REAL NOT NULL,
    rating_seconds REAL NOT NULL,
    listened INTEGER NOT NULL,
    audio_path TEXT,
    UNIQUE (rater_id, trial)
);
CREATE INDEX ratings_by_study ON ratings (study_id);
"""


class StudyStoreError(RuntimeError):
    """A database this code cannot use (newer schema, unwritable path); the message says which and why."""


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
                self._migrate(db)
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

    def _migrate(self, db: sqlite3.Connection) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StudyStoreError(
                f"schema version {version} was written by a newer blsp_emo (this one reads "
                f"≤ {SCHEMA_VERSION}); upgrade, or use another --study-db"
            )
        if version == 0:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def schema_version(self) -> int:
        with self._transaction(write=False) as db:
            return db.execute("PRAGMA user_version").fetchone()[0]

    # --- raters and their plans ------------------------------------------------------------------

    def begin_rater(
        self, config: StudyConfig, rater_id: str, consent_audio: bool, rng: random.Random | None = None
    ) -> list[Trial]:
        """Register a rater and store their plan, counted against every earlier plan in one transaction."""
        rng = rng or random.Random()
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM raters WHERE rater_id=?", (rater_id,)).fetchone():
                return self._plan(db, rater_id)
            conditions, stimuli = self._usage(db, config.id)
            trials = plan_trials(config, conditions, stimuli, rng)
            db.execute("INSERT INTO raters VALUES (?, ?, ?, ?)", (rater_id, config.id, time.time(), int(consent_audio)))
            db.executemany(
                "INSERT INTO assignments VALUES (?, ?, ?, ?, ?, ?, ?)",
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
    def _usage(db, study_id: str) -> tuple[dict[Condition, int], dict]:
        conditions = {
            ((a, b), bool(w)): n
            for a, b, w, n in db.execute(
                "SELECT pair_first, pair_second, swapped, COUNT(*) FROM assignments WHERE study_id=? "
                "GROUP BY pair_first, pair_second, swapped",
                (study_id,),
            )
        }
        stimuli = {
            ((a, b), s): n
            for a, b, s, n in db.execute(
                "SELECT pair_first, pair_second, stimulus, COUNT(*) FROM assignments WHERE study_id=? "
                "GROUP BY pair_first, pair_second, stimulus",
                (study_id,),
            )
        }
        return conditions, stimuli

    def assignment_counts(self, study_id: str) -> dict[Condition, int]:
        with self._transaction(write=False) as db:
            return self._usage(db, study_id)[0]

    # --- ratings ---------------------------------------------------------------------------------

    def submit(self, rating: Rating) -> bool:
        """Record `rating` in one transaction; False when its key (or its trial) was already recorded."""
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

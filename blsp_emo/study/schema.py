"""The ratings database's layout: the schema, and its migrations from older versions.

Migrations only add (columns, tables); nothing is ever dropped, so a database written by an older
version opens with every rating it holds.
"""

from __future__ import annotations

import sqlite3

SCHEMA_VERSION = 2


class StudyStoreError(RuntimeError):
    """A database this code cannot use (newer schema, unwritable path); the message says which and why."""


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
# Version 1 -> 2: what the server handed out (never data dropped; older rows get NULLs, i.e. "not issued").
_MIGRATE_2 = """
ALTER TABLE raters ADD COLUMN active_at REAL;
UPDATE raters SET active_at = MAX(created_at, COALESCE((SELECT MAX(submitted_at) FROM ratings g
    WHERE g.rater_id = raters.rater_id), 0));
ALTER TABLE assignments ADD COLUMN issued_key TEXT;
ALTER TABLE assignments ADD COLUMN issued_at REAL;
ALTER TABLE assignments ADD COLUMN issued_stimulus TEXT;
ALTER TABLE assignments ADD COLUMN listen_seconds REAL;
ALTER TABLE assignments ADD COLUMN played_at REAL;
"""


def migrate(db: sqlite3.Connection) -> None:
    """Bring `db` to SCHEMA_VERSION inside the caller's transaction: all of it or none."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StudyStoreError(
            f"schema version {version} was written by a newer blsp_emo (this one reads "
            f"≤ {SCHEMA_VERSION}); upgrade, or use another --study-db"
        )
    if version == 0:
        _run(db, _SCHEMA)
        version = 1
    if version == 1:
        _run(db, _MIGRATE_2)  # in the same transaction: all of it or none
        version = 2
    db.execute(f"PRAGMA user_version={version}")


def _run(db: sqlite3.Connection, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)

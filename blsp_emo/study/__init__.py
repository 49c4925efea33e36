"""Blind rating studies: configuration, balanced assignment, storage that loses nothing, analysis.

    config = StudyConfig.load("assets/studies/example.json")
    runner = StudyRunner(config, systems, StudyStore.from_env())   # what the Rate tab calls
    write_report(StudyStore("ratings.sqlite").ratings(), "report/")  # what `study report` writes

Modules, in the order data flows: config (the study file), assign (who compares what), runner
(consent, trials, submissions), store and schema (SQLite), analysis and report (numbers and plots),
access (the admin token), upload (optional hub copy), cli (`python -m blsp_emo study`); the load
test is `blsp_emo.bench.study_load`.
"""

from blsp_emo.study.access import ADMIN_TOKEN_ENV, AdminTokenError, check_admin
from blsp_emo.study.assign import OWN_RECORDING, Trial, balance, plan_trials
from blsp_emo.study.config import DEFAULT_STUDY, StudyConfig, StudyConfigError
from blsp_emo.study.report import Report, write_report
from blsp_emo.study.runner import INVITE_ENV, ReplyCache, StudyLimits, StudyRunner, Submitted, TrialView
from blsp_emo.study.schema import SCHEMA_VERSION, StudyStoreError
from blsp_emo.study.store import (
    ABANDON_SECONDS,
    DB_ENV,
    DEFAULT_DB,
    RateLimited,
    Rating,
    StudyRefusal,
    StudyStore,
)
from blsp_emo.study.upload import UploadSettings, start_upload

__all__ = [
    "ABANDON_SECONDS",
    "ADMIN_TOKEN_ENV",
    "AdminTokenError",
    "DB_ENV",
    "DEFAULT_DB",
    "DEFAULT_STUDY",
    "INVITE_ENV",
    "OWN_RECORDING",
    "RateLimited",
    "Rating",
    "ReplyCache",
    "Report",
    "SCHEMA_VERSION",
    "StudyConfig",
    "StudyConfigError",
    "StudyLimits",
    "StudyRefusal",
    "StudyRunner",
    "StudyStore",
    "StudyStoreError",
    "Submitted",
    "Trial",
    "TrialView",
    "UploadSettings",
    "balance",
    "check_admin",
    "plan_trials",
    "start_upload",
    "write_report",
]

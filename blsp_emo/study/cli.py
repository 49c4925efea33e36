"""`python -m blsp_emo study check|export|report|loadtest`: the study from the command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from blsp_emo.study.access import ADMIN_TOKEN_ENV, AdminTokenError, check_admin
from blsp_emo.study.config import DEFAULT_STUDY, StudyConfig, StudyConfigError
from blsp_emo.study.store import DB_ENV, DEFAULT_DB, StudyStore


def _db(args) -> StudyStore:
    path = Path(args.db or os.environ.get(DB_ENV) or DEFAULT_DB)
    if not path.is_file():  # reading: never create an empty database by mistake
        raise ValueError(f"--db {path}: no such database; give the file the app wrote (--study-db / ${DB_ENV})")
    return StudyStore(path)


def _admin(args) -> None:
    check_admin(args.token if args.token is not None else os.environ.get(ADMIN_TOKEN_ENV))


def cmd_check(args) -> int:
    config = StudyConfig.load(args.config)
    print(
        f"{config.path}: study {config.id!r}, {len(config.stimuli)} clips, systems {list(config.systems)}, "
        f"{len(config.pairs)} pairs × 2 orders, {config.trials_per_rater} trials per rater"
    )
    return 0


def cmd_export(args) -> int:
    _admin(args)
    n = _db(args).export_csv(args.out, args.study)
    print(f"{n} ratings -> {args.out}")
    return 0


def cmd_report(args) -> int:
    from blsp_emo.study.assign import balance
    from blsp_emo.study.report import write_report

    _admin(args)
    store = _db(args)
    rows = store.ratings(args.study)
    assignment = None
    if args.config:
        config = StudyConfig.load(args.config)
        assignment = balance(store.assignment_counts(config.id), config)
    report = write_report(
        rows, args.out, args.bootstrap, args.seed, assignment=assignment, include_unplayed=args.include_unplayed
    )
    print(report.markdown)
    print(f"wrote {', '.join(p.name for p in (*report.tables, *report.plots))} in {args.out}", file=sys.stderr)
    return 0


def cmd_loadtest(args) -> int:
    from blsp_emo.bench.study_load import run_load

    token = args.token if args.token is not None else os.environ.get(ADMIN_TOKEN_ENV)
    result = run_load(args.url, args.raters, token, timeout_s=args.timeout, seed=args.seed)
    print(json.dumps(result, indent=2))
    ok = result["finished"] == args.raters and result["error_count"] == 0 and not result.get("lost")
    return 0 if ok else 1


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add `study` and its sub-commands to the `python -m blsp_emo` parser."""
    study = sub.add_parser("study", help="blind rating study: check a config, export, report, load test")
    cmds = study.add_subparsers(dest="study_command", required=True)
    p = cmds.add_parser("check", help="validate a study file (clips exist, systems known)")
    p.add_argument("config", nargs="?", default=str(DEFAULT_STUDY))
    p.set_defaults(func=_guarded(cmd_check))
    token_help = f"admin token (default: ${ADMIN_TOKEN_ENV})"
    p = cmds.add_parser("export", help="every rating as CSV (needs the admin token)")
    p.add_argument("--db", help=f"ratings database (default: ${DB_ENV}, else {DEFAULT_DB})")
    p.add_argument("--out", required=True, help="CSV file to write")
    p.add_argument("--study", help="only this study id")
    p.add_argument("--token", help=token_help)
    p.set_defaults(func=_guarded(cmd_export))
    p = cmds.add_parser(
        "report", help="tables, Bradley–Terry, agreement and PNG plots into a folder (needs the admin token)"
    )
    p.add_argument("--db", help=f"ratings database (default: ${DB_ENV}, else {DEFAULT_DB})")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--study", help="only this study id")
    p.add_argument("--config", help="the study file, to report how balanced the assignment was")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--include-unplayed",
        action="store_true",
        help="also count ratings whose audio the server never saw played (left out by default)",
    )
    p.add_argument("--token", help=token_help)
    p.set_defaults(func=_guarded(cmd_report))
    p = cmds.add_parser("loadtest", help="N simulated raters through a running app's study at once (loopback)")
    p.add_argument("--url", required=True, help="the app, e.g. http://127.0.0.1:7860/")
    p.add_argument("--raters", type=int, default=50)
    p.add_argument("--timeout", type=float, default=300, help="give up after this many seconds (default 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--token", help=token_help + "; needed to check the database")
    p.set_defaults(func=_guarded(cmd_loadtest))


def _guarded(func):
    """The command, with expected failures as one line on stderr and exit status 2."""

    def run(args) -> int:
        try:
            return func(args)
        except (StudyConfigError, AdminTokenError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    return run

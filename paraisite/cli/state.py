"""``paraisite state save|restore``: carry interrupted full-budget jobs across machines in a committable folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from paraisite.safety import check_writable_folder


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``state``."""
    parser = subparsers.add_parser("state", help="save or restore the resume state of a sweep's interrupted jobs")
    actions = parser.add_subparsers(dest="action", required=True)
    save = actions.add_parser("save", help="copy what resumes each interrupted job exactly into a folder")
    save.add_argument("sweep_dir", type=Path, help="the sweep's directory (<log_dir>/<group>)")
    save.add_argument("state_dir", type=Path, help="where to put it, e.g. experiments/<group>/state")
    save.set_defaults(func=run_save)
    restore = actions.add_parser("restore", help="put a saved state back; never over a job that got further")
    restore.add_argument("state_dir", type=Path, help="a folder written by `paraisite state save`")
    restore.add_argument("sweep_dir", type=Path, help="the sweep's directory to resume in")
    restore.set_defaults(func=run_restore)


def run_save(args: argparse.Namespace) -> int:
    """Save; print each job with its epoch and size.

    A missing sweep folder, or a state folder that cannot be written into, is an error (exit 1).
    """
    from paraisite.training.resume_state import ResumeStateError, save_resume_state  # torch: only when run

    if not args.sweep_dir.is_dir():
        print(f"paraisite state save: error: {args.sweep_dir}: no such sweep folder", file=sys.stderr)
        return 1
    check_writable_folder(args.state_dir, what=f"state save into {args.state_dir}", create=True)
    try:
        saved = save_resume_state(args.sweep_dir, args.state_dir)
    except ResumeStateError as error:
        print(f"error: {error}")
        return 1
    for job in saved:
        size = sum((args.state_dir / f).stat().st_size for f in job.files)
        print(f"saved {job.relative}: resumes at epoch {job.epoch} ({len(job.files)} files, {size / 1e6:.1f} MB)")
    if not saved:
        print(f"{args.sweep_dir}: no interrupted job with a last.ckpt; nothing saved")
    return 0


def run_restore(args: argparse.Namespace) -> int:
    """Restore; print what was restored, skipped and refused.

    Exit 1 for a wrong state, a sweep folder that cannot be written into, or any refused job.
    """
    from paraisite.training.resume_state import ResumeStateError, restore_resume_state

    check_writable_folder(args.sweep_dir, what=f"state restore into {args.sweep_dir}", create=True)
    try:
        report = restore_resume_state(args.state_dir, args.sweep_dir)
    except ResumeStateError as error:
        print(f"paraisite state restore: error: {error}", file=sys.stderr)
        return 1
    for job in report.restored:
        print(f"restored {job.relative}: resumes at epoch {job.epoch}")
    for reason in report.skipped:
        print(f"skipped {reason}")
    for reason in report.refused:
        print(f"paraisite state restore: refused {reason}", file=sys.stderr)
    return 1 if report.refused else 0

"""Fail when a file git tracks (or has staged) is larger than the limit and not on the allow-list.

Usage: ``python .ci/check_file_sizes.py [--root DIR] [--limit-mb 5] [--allow .ci/large-files.txt]``; run by
``make check``. The allow-list holds one glob per line (``#`` comments), matched against the path in the repository;
an entry needs an issue that budgets it (the shipped models: ``tests/test_shipping.py`` holds them to 25 MB in all).
Resume states and sweep outputs travel outside git (``paraisite state save``).
"""

from __future__ import annotations

import argparse
import fnmatch
import subprocess
import sys
from pathlib import Path

LIMIT_MB = 5.0


def tracked_files(root: Path) -> list[str]:
    """Paths git tracks or has staged under ``root`` (deleted files left out)."""
    listing = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--cached"], capture_output=True, check=True
    ).stdout.decode()
    return [path for path in listing.split("\0") if path and (root / path).is_file()]


def allowed_patterns(path: Path) -> list[str]:
    """The globs of the allow-list at ``path`` (none if it does not exist)."""
    if not path.is_file():
        return []
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def too_large(root: Path, limit_bytes: int, patterns: list[str]) -> list[tuple[str, int]]:
    """(path, size) of the tracked files over ``limit_bytes`` that no pattern allows, largest first."""
    found = []
    for path in tracked_files(root):
        size = (root / path).stat().st_size
        if size > limit_bytes and not any(fnmatch.fnmatch(path, pattern) for pattern in patterns):
            found.append((path, size))
    return sorted(found, key=lambda item: -item[1])


def main(argv: list[str] | None = None) -> int:
    """Check; print what is too large and exit 1, or say all is well and exit 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--limit-mb", type=float, default=LIMIT_MB)
    parser.add_argument("--allow", type=Path, help="allow-list (default: ROOT/.ci/large-files.txt)")
    args = parser.parse_args(argv)
    allow = args.allow or args.root / ".ci" / "large-files.txt"
    if not (args.root / ".git").exists():
        print(f"{args.root}: not a git checkout; nothing to check")
        return 0
    found = too_large(args.root, int(args.limit_mb * 1e6), allowed_patterns(allow))
    for path, size in found:
        print(f"{path}: {size / 1e6:.1f} MB, over the {args.limit_mb:g} MB limit and not in {allow}", file=sys.stderr)
    if found:
        print(
            "Keep large files out of git: resume states with `paraisite state save` to a folder or archive elsewhere, "
            "sweep outputs under logs/ (ignored). A file an issue budgets goes on the allow-list.",
            file=sys.stderr,
        )
        return 1
    print(f"no tracked file over {args.limit_mb:g} MB outside {allow.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

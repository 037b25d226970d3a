"""``paraisite`` command: one sub-command per module, each registered by ``add_parser(subparsers)``."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import os
import sys
from collections.abc import Sequence

from paraisite.cli import baseline as baseline_cli
from paraisite.cli import data as data_cli
from paraisite.cli import kappa as kappa_cli
from paraisite.cli import predict as predict_cli
from paraisite.cli import state as state_cli
from paraisite.cli import status as status_cli
from paraisite.cli import table as table_cli
from paraisite.cli import zoo as zoo_cli

#: Modules that contribute sub-commands; each has ``add_parser(subparsers)`` that sets ``func``.
COMMAND_MODULES = [data_cli, table_cli, status_cli, state_cli, zoo_cli, predict_cli, baseline_cli, kappa_cli]


def build_parser() -> argparse.ArgumentParser:
    """The top-level argument parser."""
    parser = argparse.ArgumentParser(prog="paraisite", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``paraisite`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except Exception as error:  # one clear line for users; -v shows the traceback
        if args.verbose:
            raise
        print(f"paraisite {args.command}: error: {error}", file=sys.stderr)
        return 1


def run() -> None:
    """The console script: :func:`main`, then exit without tearing down the interpreter.

    The exit handlers run and the standard streams are flushed, as in a normal exit; only the interpreter's own
    finalisation is skipped, which takes about 0.9 s once torch_geometric (and with it torch._dynamo) is imported,
    a sixth of predicting 1,000 CIFs with a CGCNN model.
    """
    code = main()
    atexit._run_exitfuncs()  # logging.shutdown, multiprocessing's clean-up, ...
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BrokenPipeError, ValueError):  # a closed pipe (`| head`) or stream
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    run()

"""``paraisite`` command: one sub-command per module, each registered by ``add_parser(subparsers)``.

A failure prints one line (``paraisite <command>: error: ...``) and exits 1; ``--debug`` or ``HYDRA_FULL_ERROR=1``
shows the traceback instead.
"""

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
from paraisite.cli import plot as plot_cli
from paraisite.cli import predict as predict_cli
from paraisite.cli import state as state_cli
from paraisite.cli import status as status_cli
from paraisite.cli import table as table_cli
from paraisite.cli import zoo as zoo_cli

#: Modules that contribute sub-commands; each has ``add_parser(subparsers)`` that sets ``func``.
COMMAND_MODULES = [data_cli, table_cli, status_cli, state_cli, zoo_cli, predict_cli, baseline_cli, plot_cli, kappa_cli]


#: What ``paraisite --help`` says first: for users, not developers.
DESCRIPTION = """\
Predict and screen crystals with trained models, and inspect what training produced.

Training is the other command, paraisite-train (paraisite-train --help): it trains one model or a sweep
and writes each run's metrics.json under logs/. This command works on what it wrote and on the model zoo.
"""

#: The end of ``paraisite --help``: first steps and where to find more.
EPILOG = """\
first steps:
  paraisite zoo list                                     the pretrained models
  paraisite predict --model ltc-step2-mix cifs/ -o ltc.csv   predict structure files (works offline)
  paraisite scan --model ltc-step2-dataset2 big/ -o ranking.csv   many files, resumable, ranked
  paraisite status logs/<group>                          which runs of a sweep are done
  paraisite table logs/<group>                           the paper's table from a sweep
  paraisite plot parity logs/<group>/train/Dataset2/seed1   predicted vs true of a run
  paraisite data fetch --all                             download the upstream data (or set PARAISITE_MIRROR)

A failure prints one line and exits 1; --debug (or HYDRA_FULL_ERROR=1) shows the traceback.
`paraisite COMMAND --help` describes each command.
"""

#: The environment variable that, set to 1, shows tracebacks (Hydra's name, so one switch serves both commands).
FULL_ERROR_VARIABLE = "HYDRA_FULL_ERROR"


def build_parser() -> argparse.ArgumentParser:
    """The top-level argument parser."""
    parser = argparse.ArgumentParser(
        prog="paraisite",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--debug", action="store_true", help=f"show the traceback of a failure (or {FULL_ERROR_VARIABLE}=1)"
    )
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
    except Exception as error:  # one clear line for users; --debug shows the traceback
        if args.debug or os.environ.get(FULL_ERROR_VARIABLE) == "1":
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

"""``paraisite kappa``: lattice thermal conductivity of structure files from a universal potential and phono3py.

Every file is read first (a bad one stops the command before any work, naming it). Each crystal is then relaxed
with its symmetry kept, given fc3 and fc2 by finite displacements and solved for kappa(T) (see
:mod:`paraisite.kappa`); its result is cached, so an interrupted batch resumes and a repeated one is free. The CSV
(``-o``, one row per crystal and temperature, :data:`paraisite.kappa.pipeline.CSV_COLUMNS`) is rewritten atomically
after each crystal. A refused crystal (its space group changed in relaxation, the relaxation did not converge) gets
a row with its error, and the command exits 1.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``kappa``."""
    parser = subparsers.add_parser(
        "kappa", help="lattice thermal conductivity from a universal potential and phono3py (needs paraisite[kappa])"
    )
    parser.add_argument("paths", nargs="+", metavar="STRUCTURE", help="structure files (CIF, POSCAR, ...)")
    parser.add_argument(
        "--potential",
        default="TensorNet-MatPES-PBE-v2025.1-PES",
        help="registered potential: TensorNet-MatPES-PBE-v2025.1-PES (default), M3GNet-MatPES-PBE-v2025.1-PES, "
        "or their aliases tensornet-matpes, m3gnet-matpes; or your model file as KIND:PATH (mace:PATH, needs "
        "mace-torch), its sha256 in every row",
    )
    parser.add_argument(
        "--trust-potential-file",
        action="store_true",
        help="read a pickled model file (MACE's): reading it runs any code it holds, so it is refused without this",
    )
    parser.add_argument("-o", "--output", default="kappa.csv", help="CSV to write (default kappa.csv)")
    parser.add_argument(
        "--protocol",
        default="default",
        help="settings: a conf/kappa option (default, quick) or a YAML file of settings (paraisite/kappa/settings.py)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting (repeat for more), e.g. --set method=LBTE --set temperatures=[300,600]",
    )
    parser.add_argument("--lbte", action="store_true", help="solve the LBTE directly instead of RTA (method=LBTE)")
    parser.add_argument("--isotopes", action="store_true", help="add isotope scattering (isotopes=true)")
    parser.add_argument(
        "--cache-dir", default=None, help="folder of the per-crystal result cache (default <paraisite cache>/kappa)"
    )
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the result cache")
    parser.set_defaults(func=run_kappa)


def _write_csv(path: Path, rows: list[dict]) -> None:
    from paraisite.kappa.pipeline import CSV_COLUMNS
    from paraisite.safety import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def run_kappa(args: argparse.Namespace) -> int:
    """Run the protocol on every file; 1 if any crystal was refused."""
    from paraisite.kappa.settings import require_kappa_extra

    require_kappa_extra()
    from paraisite.data.inputs import read_input_structure
    from paraisite.kappa.cache import default_cache_dir
    from paraisite.kappa.force_constants import SupercellTooLargeError
    from paraisite.kappa.pipeline import KappaRunner, error_row, result_rows
    from paraisite.kappa.relax import RelaxationError, SymmetryChangedError, to_atoms
    from paraisite.kappa.settings import load_settings

    overrides = list(args.overrides)
    overrides += ["method=LBTE"] if args.lbte else []
    overrides += ["isotopes=true"] if args.isotopes else []
    settings = load_settings(args.protocol, overrides)
    output = Path(args.output)
    paths = [Path(path) for path in args.paths]
    if any(output.resolve() == path.resolve() for path in paths):
        raise ValueError(f"{output}: the output would overwrite an input")
    # every file read before any work, with the bounds and checks of predict's reader (and its structure: one cache)
    crystals = [(str(path), to_atoms(read_input_structure(path))) for path in paths]
    cache = None if args.no_cache else Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    runner = KappaRunner(args.potential, settings, cache, trust_potential_file=args.trust_potential_file)
    log.info("kappa: %d crystal(s) with %s (sha256 %s…)", len(crystals), runner.potential, runner.potential_sha256[:12])
    rows: list[dict] = []
    refused = 0
    for index, (name, atoms) in enumerate(crystals, 1):
        log.info("[%d/%d] %s", index, len(crystals), name)
        try:
            rows += result_rows(runner.run(atoms, name))
        except (SymmetryChangedError, RelaxationError, SupercellTooLargeError) as error:
            refused += 1
            print(f"paraisite kappa: {name}: refused: {error}", file=sys.stderr)
            rows.append(error_row(name, error))
        _write_csv(output, rows)
    log.info("kappa: wrote %s (%d crystal(s), %d refused)", output, len(crystals), refused)
    return 1 if refused else 0

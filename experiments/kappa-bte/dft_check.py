"""The kappa stage checked against DFT: phono3py's own example force sets, through `paraisite.kappa.conductivity`.

`paraisite kappa` differs from a DFT phono3py calculation only in where the forces come from. This script feeds the
DFT (VASP) displacement-force datasets that phono3py publishes in its repository's ``example/`` folder through the
same code path as `paraisite kappa` (force constants from phono3py's loader, then
:func:`paraisite.kappa.conductivity.thermal_conductivity` with its mesh-length rule, RTA at 300 K, and the
imaginary-mode check) and compares with the values those examples' READMEs state. The example files are not in
this repository: pass a phono3py checkout's ``example/`` folder (https://github.com/phonopy/phono3py).

    OMP_NUM_THREADS=1 nice -n 19 python experiments/kappa-bte/dft_check.py --examples PHONO3PY/example \
        > experiments/kappa-bte/dft-check.md
"""

from __future__ import annotations

import argparse
import contextlib
import lzma
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import phono3py

from paraisite.kappa.conductivity import thermal_conductivity
from paraisite.kappa.force_constants import ForceConstants, imaginary_modes
from paraisite.kappa.settings import KappaSettings

#: example folder -> (description, phono3py.load arguments, mesh_length, published kappa at 300 K as {component: W/mK},
#: where the README states it).
CASES = {
    "Si-PBE": (
        "Si, VASP PBE, fc3 and fc2 in 2x2x2 conventional, systematic displacements, 19x19x19",
        {"phono3py_yaml": "phono3py_disp.yaml", "forces_fc3_filename": "FORCES_FC3"},
        60.0,
        {"xx": 130.1},
    ),
    "NaCl-rd": (
        (
            "NaCl, VASP (Togo & Seko, J. Chem. Phys. 160, 211001 (2024)), fc3 2x2x2 / fc2 4x4x4 conventional, "
            "random displacements fitted by symfc, NAC, --mesh 50"
        ),
        {"phono3py_yaml": "phono3py_params_NaCl.yaml.xz", "fc_calculator": "symfc"},
        50.0,
        {"xx": 8.2},
    ),
    "zb-ZnTe-PBEsol": (
        "zincblende ZnTe, VASP PBEsol, 2x2x2 supercell, NAC, --mesh 50 (14x14x14)",
        {"phono3py_yaml": "phono3py_params_ZnTe.yaml.xz"},
        50.0,
        {"xx": 46.5},
    ),
    "AlN-LDA": (
        (
            "wurtzite AlN, VASP LDA, fc3 and fc2 in 3x3x2, systematic displacements (phono3py's own solver), NAC, "
            "--mesh 40"
        ),
        {"phono3py_yaml": "phono3py_disp.yaml", "forces_fc3_filename": "FORCES_FC3", "born_filename": "BORN"},
        40.0,
        {"xx": 251.2, "zz": 233.4},
    ),
}
COMPONENT = {"xx": 0, "yy": 1, "zz": 2}


@contextlib.contextmanager
def inside(folder: Path):
    """Work in a temporary copy of ``folder`` (``.xz`` force files decompressed there)."""
    previous = Path.cwd()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / folder.name
        shutil.copytree(folder, work)
        for packed in work.glob("FORCES_FC*.xz"):
            packed.with_suffix("").write_bytes(lzma.decompress(packed.read_bytes()))
        os.chdir(work)
        try:
            yield work
        finally:
            os.chdir(previous)


def main() -> None:
    """Print a markdown table: published kappa against this code path's, per example."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=Path, required=True, help="a phono3py checkout's example/ folder")
    args = parser.parse_args()
    print(f"phono3py {phono3py.__version__}; RTA, 300 K, no isotopes; kappa in W/mK\n")
    print("| example | what | mesh | published | paraisite.kappa | ratio | imaginary modes | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (what, load_args, mesh_length, published) in CASES.items():
        started = time.perf_counter()
        with inside(args.examples.resolve() / name):
            loaded = phono3py.load(**load_args, log_level=0)
        force_constants = ForceConstants(loaded, (0, 0, 0), (0, 0, 0), 0, 0, {})
        settings = replace(KappaSettings(), mesh_length=mesh_length)
        result = thermal_conductivity(force_constants, settings)
        modes = imaginary_modes(force_constants, result.mesh, settings.imaginary_tolerance_thz)
        seconds = time.perf_counter() - started
        for component, value in published.items():
            ours = float(result.tensors[0][COMPONENT[component]])
            print(
                f"| {name} | {what} | {'x'.join(map(str, result.mesh))} | {component} {value} | {ours:.1f} | "
                f"{ours / value:.3f} | {modes.count} | {seconds:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()

"""Screening speed side by side: the original CGCNN ``predict.py`` and ``paraisite predict`` on the same CIFs.

Each side is a whole process, files to CSV, timed from start to exit, ``--runs`` times, on the first ``--files``
AFLOW CIFs of the registry (sorted by name; through the registry: set ``PARAISITE_MIRROR``/``PARAISITE_CACHE``
offline). Sides:

- ``original CGCNN``: ``predict.py`` of ``txie-93/cgcnn`` with its published ``formation-energy-per-atom`` model, in
  its own environment (its code needs only torch, numpy, pymatgen and scikit-learn), batch 256, 0 workers (its
  defaults), reading a folder with ``id_prop.csv`` and ``atom_init.json`` as its README asks;
- ``paraisite CGCNN``: ``paraisite predict --model cgcnn-formation-energy-per-atom`` (default workers);
- ``paraisite LTC ensemble``: ``paraisite predict --model ltc-step2-mix`` (9 MEGNet members; the original
  ParAIsite scan path needs DGL, which does not install beside torch 2.13: no side-by-side figure for it here);
- both paraisite sides again with ``--workers 0`` (one process, torch's own threads), to show what the worker
  processes buy at this size.

The original's code is not part of this repository. Build its side once::

    git --git-dir=<cgcnn snapshot> archive f42ab233 | tar -x -C /tmp/cgcnn-orig     # the registry's pinned commit
    python3 -m venv /tmp/cgcnn-venv && /tmp/cgcnn-venv/bin/pip install torch==2.13.0 pymatgen scikit-learn

Usage: python benchmarks/screening_side_by_side.py --cgcnn-src /tmp/cgcnn-orig --cgcnn-python
/tmp/cgcnn-venv/bin/python [--files 500] [--runs 3] [--out FILE]

``predict.py`` loads its checkpoint with ``torch.load`` defaults of its time (full unpickling): on torch >= 2.6 it
runs with ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``, for that trusted, pinned file only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from paraisite.data import registry
from paraisite.data.cgcnn_graph import CGCNN_REPO

AFLOW_CIFS = ("liudakl/ParAIsite", "main/src/aflow_cif/*.cif")


def input_folder(root: Path, count: int) -> Path:
    """``count`` AFLOW CIFs in a folder laid out for ``predict.py`` (``id_prop.csv``, ``atom_init.json``)."""
    folder = root / "cifs"
    folder.mkdir()
    entries = sorted(registry.select(*AFLOW_CIFS), key=lambda entry: entry.path)[:count]
    ids = []
    for entry in entries:
        source = registry.fetch_entry(entry)
        shutil.copyfile(source, folder / source.name)
        ids.append(source.stem)
    (folder / "id_prop.csv").write_text("".join(f"{name},0\n" for name in ids))
    atom_init = registry.fetch(CGCNN_REPO, "data/sample-regression/atom_init.json")
    shutil.copyfile(atom_init, folder / "atom_init.json")
    return folder


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Seconds from start to exit of one process (refused if it fails)."""
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


VERSIONS = (
    "import sys, numpy, torch, pymatgen.core as p; "
    "print(sys.version.split()[0], numpy.__version__, torch.__version__, p.__version__)"
)


def package_versions(python: str | Path) -> dict[str, str]:
    """Python, numpy, torch and pymatgen versions of an environment (the original's speed depends on them)."""
    output = subprocess.run([str(python), "-c", VERSIONS], capture_output=True, text=True, check=True).stdout
    return dict(zip(("python", "numpy", "torch", "pymatgen"), output.split(), strict=True))


def main() -> None:
    """Run every side ``--runs`` times (interleaved), print structures/s and ratios, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cgcnn-src", type=Path, required=True, help="work tree of txie-93/cgcnn at f42ab233")
    parser.add_argument("--cgcnn-python", type=Path, required=True, help="python of the original's environment")
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/screening_side_by_side.json"))
    parser.add_argument("--note", default="", help="conditions to record with the figures (e.g. machine load)")
    args = parser.parse_args()
    paraisite = str(Path(sys.executable).with_name("paraisite"))
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = input_folder(root, args.files)
        original_env = {**env, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
        model = args.cgcnn_src / "pre-trained" / "formation-energy-per-atom.pth.tar"
        sides = {
            "original CGCNN predict.py": (
                [str(args.cgcnn_python), "predict.py", str(model), str(folder)],
                args.cgcnn_src,
                original_env,
            ),
            "paraisite CGCNN": (
                [paraisite, "predict", "--model", "cgcnn-formation-energy-per-atom", str(folder), "-o", "c.csv"],
                root,
                env,
            ),
            "paraisite LTC ensemble (9 MEGNet)": (
                [paraisite, "predict", "--model", "ltc-step2-mix", str(folder), "-o", "l.csv"],
                root,
                env,
            ),
        }
        for name in ("paraisite CGCNN", "paraisite LTC ensemble (9 MEGNet)"):
            command, cwd, side_env = sides[name]
            sides[f"{name}, --workers 0"] = ([*command, "--workers", "0"], cwd, side_env)
        seconds: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(args.runs):
            for name, (command, cwd, side_env) in sides.items():
                seconds[name].append(timed(command, cwd, side_env))
        (args.cgcnn_src / "test_results.csv").unlink(missing_ok=True)
    rates = {name: args.files / statistics.median(values) for name, values in seconds.items()}
    report = {
        "files": args.files,
        "runs": args.runs,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "note": args.note,
        "environments": {
            "original": package_versions(args.cgcnn_python),
            "paraisite": package_versions(sys.executable),
        },
        "seconds": {name: [round(v, 2) for v in values] for name, values in seconds.items()},
        "structures_per_s_median": {name: round(rate, 1) for name, rate in rates.items()},
        "paraisite_cgcnn_over_original": round(rates["paraisite CGCNN"] / rates["original CGCNN predict.py"], 2),
    }
    for name, rate in rates.items():
        print(f"{name}: {rate:.1f} structures/s (runs: {', '.join(f'{v:.1f} s' for v in seconds[name])})")
    print(f"paraisite CGCNN / original CGCNN: {report['paraisite_cgcnn_over_original']:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

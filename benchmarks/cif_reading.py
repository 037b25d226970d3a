"""CIF reading: pymatgen's ``Structure.from_file`` against paraisite's readers; print and write JSON.

Usage: ``python benchmarks/cif_reading.py [--aflow 5578] [--out cif_reading.json]``. Files come from the registry
(set ``PARAISITE_MIRROR`` / ``PARAISITE_CACHE`` offline): the 10 CGCNN sample CIFs (full space-group symmetry, where
the symmetry expansion dominates) and AFLOW CIFs (mostly low symmetry). For every file the two structures are
compared exactly (lattice, species, labels, fractional coordinates, site properties); the count of differences is
part of the output and should be 0. ``paraisite_input`` times what ``paraisite predict`` does per file
(:func:`~paraisite.data.inputs.read_input_structure`: file checks, reading, validation).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import numpy as np
from pymatgen.core import Structure

from paraisite.data import registry
from paraisite.data.inputs import read_input_structure
from paraisite.data.sources import StructureFileError, read_structure


def identical(ours: Structure, theirs: Structure) -> bool:
    """Same lattice, species, labels, fractional coordinates (bit for bit) and site properties."""
    return (
        ours.lattice == theirs.lattice
        and [site.species for site in ours] == [site.species for site in theirs]
        and [site.label for site in ours] == [site.label for site in theirs]
        and np.array_equal(ours.frac_coords, theirs.frac_coords)
        and ours.site_properties == theirs.site_properties
    )


def read_input(path: Path) -> Structure | None:
    """``paraisite predict``'s reader; None for a file it refuses."""
    try:
        return read_input_structure(path)
    except StructureFileError:
        return None


def compare(paths: list[Path], repeats: int) -> dict:
    """Best-of-``repeats`` ms per file for each reader, and the number of differing structures."""
    timings = {"pymatgen": np.inf, "paraisite": np.inf, "paraisite_input": np.inf}
    readers = {"pymatgen": Structure.from_file, "paraisite": read_structure, "paraisite_input": read_input}
    for _ in range(repeats):
        for label, reader in readers.items():
            start = time.perf_counter()
            for path in paths:
                reader(path)
            timings[label] = min(timings[label], (time.perf_counter() - start) / len(paths) * 1000)
    differing = [str(path) for path in paths if not identical(read_structure(path), Structure.from_file(path))]
    inputs = [(path, read_input(path)) for path in paths]
    refused = [str(path) for path, structure in inputs if structure is None]
    differing_input = [
        str(path)
        for path, structure in inputs
        if structure is not None and not identical(structure, Structure.from_file(path))
    ]
    return {
        "files": len(paths),
        "pymatgen_ms_per_file": round(timings["pymatgen"], 2),
        "paraisite_ms_per_file": round(timings["paraisite"], 2),
        "paraisite_input_ms_per_file": round(timings["paraisite_input"], 2),
        "speedup": round(timings["pymatgen"] / timings["paraisite"], 2),
        "differing_structures": len(differing),
        "differing_files": differing[:20],
        "differing_input_structures": len(differing_input),
        "refused_by_input_reader": refused[:20],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aflow", type=int, default=5578, help="number of AFLOW CIFs to read")
    parser.add_argument("--out", type=Path, default=Path("cif_reading.json"))
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    samples = [registry.fetch_entry(e) for e in registry.select("txie-93/cgcnn", "data/sample-regression/*.cif")]
    aflow = registry.select("liudakl/ParAIsite", "main/src/aflow_cif/*.cif")[: args.aflow]
    results = {
        "machine": platform.processor() or platform.machine(),
        "cgcnn_samples": compare(samples, repeats=10),
        "aflow": compare([registry.fetch_entry(entry) for entry in aflow], repeats=1),
    }
    print(json.dumps(results, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""``validate_structure``'s quick overlap check: it may only clear structures pymatgen's neighbour search clears."""

from __future__ import annotations

import numpy as np
from pymatgen.core import Lattice, Structure

from paraisite.data.inputs import MIN_DISTANCE, _may_overlap


def test_quick_overlap_check_never_clears_a_structure_with_close_atoms():
    rng = np.random.default_rng(0)
    cleared = 0
    for _ in range(400):
        lattice = Lattice.from_parameters(*rng.uniform(0.6, 6, 3), *rng.uniform(40, 140, 3))
        if not np.isfinite(lattice.matrix).all() or lattice.volume < 0.5:
            continue
        count = int(rng.integers(1, 10))
        structure = Structure(lattice, ["H"] * count, rng.uniform(-1.5, 2.5, (count, 3)))  # skewed, unwrapped
        close = len(structure.get_neighbor_list(MIN_DISTANCE)[3]) > 0
        quick = _may_overlap(structure)
        assert quick or not close
        cleared += not quick
    assert cleared > 50  # it does clear most sound structures


def test_quick_overlap_check_sees_periodic_images_and_large_structures_take_the_search():
    thin = Structure(Lattice.from_parameters(0.45, 5, 5, 90, 90, 90), ["Na"], [[0, 0, 0]])
    assert _may_overlap(thin)
    assert len(thin.get_neighbor_list(MIN_DISTANCE)[3])
    sound = Structure(Lattice.cubic(4.2), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert not _may_overlap(sound)
    assert _may_overlap(sound * (30, 30, 2))  # past MAX_OVERLAP_TABLE: left to pymatgen's search

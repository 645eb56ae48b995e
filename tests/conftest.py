"""Shared pytest fixtures: small structures and hand-built operators (no torch, no DFT)."""
from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded random generator (same numbers in every run)."""
    return np.random.default_rng(20240531)


@pytest.fixture(scope="session")
def si_atoms():
    """Diamond silicon, 2-atom primitive fcc cell, a = 5.43 A (ase.build.bulk)."""
    return bulk("Si", "diamond", a=5.43)


@pytest.fixture(scope="session")
def si_sk_operators(si_atoms):
    """(atoms, H, S) of the default sp3 Slater-Koster silicon model (8 orbitals, 8 electrons)."""
    from ase_slem.tightbinding import slater_koster_operators

    H, S = slater_koster_operators(si_atoms)
    return si_atoms, H, S

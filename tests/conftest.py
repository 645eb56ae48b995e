"""Shared pytest fixtures: small structures and hand-built operators; tiny model files (torch and
PySCF are imported only by the fixtures that need them)."""
from __future__ import annotations

import os

# One BLAS thread (unless the caller chose): on a small, busy machine OpenBLAS threads next to
# torch's OpenMP pool made each small eigensolve ~100x slower (measured: 26x26 complex, 0.2 ms
# alone, 10-200 ms with torch imported and 2 loaded cores).  Must precede the numpy import.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from ase.build import bulk  # noqa: E402


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


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """Tiny untrained SLEM model files predicting H, S and D: ``"si"`` (gth-dzvp-molopt-sr 2s2p1d,
    periodic, gth-pbe: 4 valence electrons per atom, float64), ``"water"`` (sto-3g, molecular,
    all electron), and ``"si_hs"`` (1s1p, H and S only, no radial functions or electron counts)."""
    from _train_helpers import export_untrained

    root = tmp_path_factory.mktemp("calc_models")
    return {
        "si": export_untrained(root / "si_tiny.pt", {"Si": [0, 0, 1, 1, 2]}, True, "gth-dzvp-molopt-sr",
                               {"code": "pyscf", "basis": "gth-dzvp-molopt-sr", "pseudo": "gth-pbe"}, dtype="float64"),
        "water": export_untrained(root / "water_tiny.pt", {"O": [0, 0, 1], "H": [0]}, False, "sto-3g",
                                  {"code": "pyscf", "basis": "sto-3g", "pseudo": None}),
        "si_hs": export_untrained(root / "si_hs.pt", {"Si": [0, 1]}, True, settings={"code": "slater-koster"},
                                  operators=["hamiltonian", "overlap"]),
    }


@pytest.fixture(scope="session")
def trained_water(tmp_path_factory):
    """A tiny SLEM trained for a few steps on PySCF water (sto-3g: H, S, D) and exported with its
    test/validation MAE in the metadata (see _train_helpers.train_water_model)."""
    import torch

    from _train_helpers import train_water_model

    torch.set_num_threads(1)
    return train_water_model(tmp_path_factory.mktemp("trained_water"))


@pytest.fixture(scope="session")
def benchmark_script():
    """Import a script of ``benchmarks/`` (or of ``folder``, e.g. ``scripts``) by name
    (``benchmark_script("model_accuracy")``): they are scripts, not a package, so they are loaded
    from their file."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    loaded = {}

    def load(name: str, folder: str = "benchmarks"):
        if (folder, name) not in loaded:
            spec = importlib.util.spec_from_file_location(name, root / folder / f"{name}.py")
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            loaded[folder, name] = mod
        return loaded[folder, name]

    return load

"""ase_slem: DFT-quality electronic structure from SLEM machine-learned operators, inside ASE.

Post-processing (operators, k-space, bands, DOS) is plain numpy/scipy; the model side
(``ase_slem.nn``, ``SLEMCalculator``) imports torch only when used.
"""
from __future__ import annotations

from .basis import Basis, OrbitalLabel
from .operators import NonHermitianError, OperatorError, RealSpaceOperator
from .solvers import band_energies, eigs_near, generalized_eigh, solve_k
from .bands import band_path, band_structure
from .dos import band_gap, dos, fermi_level
from .kmesh import monkhorst_pack

__version__ = "0.1.0"

__all__ = [
    "Basis",
    "OrbitalLabel",
    "RealSpaceOperator",
    "OperatorError",
    "NonHermitianError",
    "band_energies",
    "solve_k",
    "generalized_eigh",
    "eigs_near",
    "band_path",
    "band_structure",
    "dos",
    "fermi_level",
    "band_gap",
    "monkhorst_pack",
    "SLEMCalculator",
]


def __getattr__(name: str):
    if name == "SLEMCalculator":  # imports torch; keep the post-processing import light
        from .calculator import SLEMCalculator

        return SLEMCalculator
    raise AttributeError(f"module 'ase_slem' has no attribute {name!r}")

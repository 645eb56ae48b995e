"""A physics baseline H0 for the Hamiltonian of a molecule: the Kohn–Sham matrix of superposed atoms.

A model trained with a baseline (Δ-learning) predicts H - H0; the calculator adds H0 back.  The
baseline here is the Kohn–Sham (Fock) matrix built once, without self-consistency, from PySCF's
``"minao"`` initial-guess density: spherical free-atom densities, projected from a minimal
atomic basis and superposed.  H0 already holds what makes H change most from one geometry to
the next (kinetic energy, the nuclear attraction of every atom, and the Hartree and
exchange-correlation potentials of neutral atoms, all as exact integrals of the basis); what is
left for the network is the response of the density to bonding, an order of magnitude smaller
and smoother (for ethanol the spread over geometries of the shell-pair blocks falls from 543 to
59 meV).  The cost is one Fock build on PySCF's integration grid: 1.4 s for ethanol in def2-svp
on one core, against 7.5 s for the converged SCF and 0.04 s for the network
(``benchmarks/molecule_speed.py``).

The settings (functional, basis, grid level) are stored in the model file
(``metadata["hamiltonian_baseline"]``) and must equal those of the reference SCF; the training
data store H0 beside H (``hamiltonian_baseline`` in each frame).  Units: positions Å, H0 in eV.
Needs PySCF; molecules only.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
from ase import Atoms
from ase.units import Hartree

from .basis import Basis
from .operators import RealSpaceOperator

__all__ = ["BASELINE_KINDS", "BaselineError", "baseline_settings", "hamiltonian_baseline"]

BASELINE_KINDS = ("minao",)


class BaselineError(ValueError):
    """A baseline that cannot be computed for this structure or with these settings."""


def _check_kind(kind) -> None:
    if kind not in BASELINE_KINDS:
        raise BaselineError(f"unknown Hamiltonian baseline {kind!r}; known: {', '.join(BASELINE_KINDS)}")


def baseline_settings(kind: str, xc: str, basis: str, grids_level: int | None = None) -> dict:
    """The settings dict that names a baseline (stored in frames and model files)."""
    _check_kind(kind)
    return {"kind": kind, "code": "pyscf", "xc": str(xc), "basis": str(basis),
            "grids_level": None if grids_level is None else int(grids_level)}


def hamiltonian_baseline(atoms: Atoms, settings: Mapping) -> RealSpaceOperator:
    """H0 (eV) of the molecule ``atoms`` (Å) in our orbital order, every atom pair (R = 0).

    ``settings``: from :func:`baseline_settings` (``kind``, ``xc``, ``basis``, ``grids_level``).
    """
    kind = settings.get("kind")
    _check_kind(kind)
    if len(atoms) == 0:
        raise BaselineError("the structure has no atoms")
    if np.any(atoms.pbc):
        raise BaselineError(f"the {kind!r} Hamiltonian baseline is for molecules; this structure is periodic "
                            f"(pbc {atoms.pbc.tolist()}): set atoms.pbc = False for a molecule")
    try:
        from pyscf import dft
    except ImportError:
        raise BaselineError("this model adds a PySCF Hamiltonian baseline to its prediction and PySCF is not "
                            "installed: pip install 'ase_slem[dft]'") from None
    from .io.pyscf import atoms_to_mole

    mol = atoms_to_mole(atoms, settings["basis"])
    mf = dft.RKS(mol)
    mf.xc = settings["xc"]
    mf.verbose = 0
    if settings.get("grids_level") is not None:
        mf.grids.level = int(settings["grids_level"])
    fock = mf.get_fock(dm=mf.get_init_guess(key=kind))
    bas = Basis.from_pyscf(mol)
    symbols = atoms.get_chemical_symbols()
    conv = bas.structure_converter(symbols, "pyscf")
    return RealSpaceOperator.from_dense(bas.orbital_counts(symbols), conv @ (fock * Hartree) @ conv.T,
                                        periodic=False, name="hamiltonian_baseline", basis=bas, symbols=symbols)

"""Structures for training sets: strained and thermally rattled crystals, distorted molecules.

Two physical models of thermal displacements, both classical (equipartition):

* crystals, :func:`einstein_displacements`: every atom an independent 3D harmonic oscillator
  of frequency ``nu`` (an Einstein solid), so each Cartesian displacement is Gaussian with
  variance ``k_B T / (m (2 pi nu)^2)``.  For silicon nu = 12 THz (between the acoustic and the
  optical zone-boundary phonons) gives 0.043 Å rms per axis at 300 K, close to the measured
  Debye-Waller value (B = 0.46 Å^2 at 295 K, i.e. <u_x^2>^1/2 = 0.076 Å in 3D / sqrt(3)).
* molecules, :func:`normal_mode_displacements`: the harmonic normal modes of a Hessian at the
  equilibrium geometry, each mode's amplitude Gaussian with variance ``k_B T / omega^2`` (mass
  weighted), so bond stretches move less than soft torsions, as at temperature ``T``.

:func:`random_strain` draws a symmetric strain with components in ``[-max, max]``;
:func:`random_rotation` a uniformly random proper rotation (reflections are a symmetry of the
model and need no sampling).  All take a ``numpy.random.Generator`` so sets are reproducible
from a seed.
"""
from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.units import kB, _amu, _e

__all__ = [
    "einstein_displacements",
    "random_strain",
    "random_rotation",
    "normal_mode_displacements",
    "harmonic_modes",
]

#: (eV/Å^2) per (amu * THz^2): m (2 pi nu)^2 in eV/Å^2
_SPRING = _amu * (2 * np.pi * 1e12) ** 2 / _e * 1e-20


def einstein_displacements(atoms: Atoms, temperature: float, rng: np.random.Generator,
                           frequency_thz: float = 12.0) -> np.ndarray:
    """Gaussian displacements (natoms, 3), Å, of an Einstein solid at ``temperature`` (K)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 K, got {temperature}")
    k = atoms.get_masses() * frequency_thz ** 2 * _SPRING  # eV/Å^2 per atom
    sigma = np.sqrt(kB * temperature / k)
    return rng.normal(size=(len(atoms), 3)) * sigma[:, None]


def random_strain(rng: np.random.Generator, max_strain: float = 0.03) -> np.ndarray:
    """Deformation 1 + eps (3, 3) with eps symmetric, components uniform in [-max, max]."""
    eps = rng.uniform(-max_strain, max_strain, size=(3, 3))
    eps = np.triu(eps) + np.triu(eps, 1).T
    return np.eye(3) + eps


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random proper rotation matrix (3, 3) (QR of a Gaussian matrix)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def harmonic_modes(hessian: np.ndarray, masses: np.ndarray, n_zero: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Vibrational modes of a Cartesian Hessian.

    Parameters
    ----------
    hessian: (3N, 3N) second derivatives of the energy, eV/Å^2.
    masses: (N,) amu.
    n_zero: translations and rotations to drop (6 for a non-linear molecule, 5 for a linear one).

    Returns
    -------
    ``(k, modes)``: mass-weighted force constants (n_modes,), eV/(Å^2 amu), and the
    mass-weighted eigenvectors (3N, n_modes), orthonormal; the modes with the ``n_zero``
    smallest |eigenvalues| are dropped.
    """
    m3 = np.repeat(np.asarray(masses, dtype=float), 3)
    hw = hessian / np.sqrt(np.outer(m3, m3))
    hw = 0.5 * (hw + hw.T)
    w, v = np.linalg.eigh(hw)
    keep = np.sort(np.argsort(np.abs(w))[n_zero:])
    if np.any(w[keep] <= 0):
        raise ValueError(
            f"the Hessian has {int(np.sum(w[keep] <= 0))} negative curvature mode(s): the geometry is not a minimum; "
            "optimize it first"
        )
    return w[keep], v[:, keep]


def normal_mode_displacements(masses: np.ndarray, k: np.ndarray, modes: np.ndarray, temperature: float,
                              rng: np.random.Generator) -> np.ndarray:
    """Cartesian displacements (N, 3), Å, with every normal mode thermally populated (classical).

    ``k`` and ``modes`` as returned by :func:`harmonic_modes`.  Mode amplitudes q (mass-weighted,
    Å amu^1/2) are Gaussian with variance k_B T / k, so the mean potential energy per mode is
    k_B T / 2.
    """
    q = rng.normal(size=len(k)) * np.sqrt(kB * temperature / k)
    m3 = np.repeat(np.asarray(masses, dtype=float), 3)
    return ((modes @ q) / np.sqrt(m3)).reshape(-1, 3)

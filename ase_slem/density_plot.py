"""Pictures of grid densities: filled contours on a plane through the grid (matplotlib).

The numbers come from :func:`ase_slem.density.density_on_plane`; this module only draws.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .density import DensityGrid, PlaneSlice, density_on_plane

__all__ = ["plot_density_slice"]


def plot_density_slice(
    rho,
    box: np.ndarray | None = None,
    plane="(110)",
    *,
    normal: Sequence[float] | None = None,
    offset: float = 0.0,
    origin: Sequence[float] | None = None,
    periodic: bool | None = None,
    extent: float | tuple[float, float] | None = None,
    resolution: float = 0.05,
    atoms=None,
    atom_distance: float = 0.5,
    levels: int | Sequence[float] = 24,
    log: bool = False,
    cmap: str = "viridis",
    unit: str = "e/Å³",
    ax=None,
    title: str | None = None,
):
    """Filled contour map of a grid density on a plane; returns the matplotlib Axes.

    Parameters
    ----------
    rho, box:
        the grid (nx, ny, nz) per Å^3 and its box (3, 3) Å, or a
        :class:`~ase_slem.density.DensityGrid` alone (box, origin and periodicity from it).
    plane, normal, offset:
        the plane ``p . n_hat = offset`` (Cartesian, Å), with ``n`` from Miller indices
        ``plane`` relative to the box (``"(110)"``) or a Cartesian ``normal``.
    extent, resolution:
        window size (Å; default: the box's projection) and sampling step (Å).
    atoms:
        if given, atoms within ``atom_distance`` Å of the plane (and their periodic images for
        periodic grids) are marked with their symbols.
    levels, log, cmap, unit:
        contour levels (count or values), log10 of the density (4 decades below the peak),
        colormap, colorbar unit label.
    ax:
        an existing Axes to draw into (a new figure otherwise).
    """
    import matplotlib.pyplot as plt

    if isinstance(rho, DensityGrid):
        periodic = rho.periodic if periodic is None else periodic
    sl: PlaneSlice = density_on_plane(
        rho, box, plane, normal=normal, offset=offset, origin=origin, periodic=periodic,
        extent=extent, resolution=resolution,
    )
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 4.5))
    vals = sl.values.T  # rows = v, columns = u
    label = f"density ({unit})"
    if log:
        peak = vals.max()
        floor = peak * 1e-4 if peak > 0 else 1e-12
        vals = np.log10(np.maximum(vals, floor))
        label = f"log10 density ({unit})"
    cs = ax.contourf(sl.u, sl.v, vals, levels=levels, cmap=cmap)
    ax.figure.colorbar(cs, ax=ax, label=label)
    if atoms is not None:
        _mark_atoms(ax, sl, atoms, atom_distance, bool(periodic) if periodic is not None else True)
    ax.set_aspect("equal")
    ax.set_xlabel("u (Å)")
    ax.set_ylabel("v (Å)")
    n = sl.normal
    ax.set_title(title if title is not None else
                 (f"plane {plane}, offset {offset:.2f} Å" if normal is None else
                  f"normal ({n[0]:.2f}, {n[1]:.2f}, {n[2]:.2f}), offset {offset:.2f} Å"))
    return ax


def _mark_atoms(ax, sl: PlaneSlice, atoms, distance: float, periodic: bool) -> None:
    pos = atoms.get_positions()
    syms = np.array(atoms.get_chemical_symbols())
    if periodic and np.asarray(atoms.pbc).any():
        cell = np.asarray(atoms.cell.array)
        reach = max(np.abs(sl.u).max(), np.abs(sl.v).max()) * np.sqrt(2) + distance
        heights = 1.0 / np.linalg.norm(np.linalg.inv(cell), axis=0)
        n = np.where(atoms.pbc, np.ceil(reach / heights).astype(int) + 1, 0)
        shifts = np.array([(a, b, c) for a in range(-n[0], n[0] + 1) for b in range(-n[1], n[1] + 1)
                           for c in range(-n[2], n[2] + 1)])
        pos = (pos[:, None, :] + (shifts @ cell)[None, :, :]).reshape(-1, 3)
        syms = np.repeat(syms, len(shifts))
    rel = pos - sl.center
    near = np.abs(rel @ sl.normal) <= distance
    u, v = rel[near] @ sl.e1, rel[near] @ sl.e2
    inside = (u >= sl.u[0]) & (u <= sl.u[-1]) & (v >= sl.v[0]) & (v <= sl.v[-1])
    ax.scatter(u[inside], v[inside], s=18, c="white", edgecolors="black", linewidths=0.6, zorder=3)
    for x, y, s in zip(u[inside], v[inside], syms[near][inside]):
        ax.annotate(s, (x, y), xytext=(3, 3), textcoords="offset points", color="white", fontsize=7)

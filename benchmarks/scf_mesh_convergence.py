"""Is a crystal frame's DFT reference converged in its SCF k-mesh?

    python benchmarks/scf_mesh_convergence.py --data ../data/si_pbe_dzvp --frames frame.000010 --meshes 3 4 6 8
    python benchmarks/scf_mesh_convergence.py --data ../data/si_pbe_dzvp --frames frame.000044 --meshes 8 --smearing 0.01 0.05

Each frame's structure is computed again with the DFT settings it records (functional, basis,
pseudopotential, FFT cutoff, convergence threshold), once per n in ``--meshes`` (an n x n x n
Gamma-centred SCF mesh, the Fock matrix rebuilt on the larger of that and the frame's own
dense mesh) and per ``--smearing`` width (eV; Fermi-Dirac; "none" for integer occupations).
Printed per run, on the frame's seekpath path (40 points), valence bands plus the 4 lowest
conduction bands: the band MAE against the stored frame and against the last run of the list
(put the densest mesh last), both absolute and with each side's valence-band maximum as zero,
and the band overlap (top of the last valence band minus bottom of the first conduction band:
positive for a (semi)metal). Takes minutes per run on one core (8x8x8 for 2-atom silicon: ~5 min).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def _compare(e: np.ndarray, ref: np.ndarray, nval: int) -> tuple[float, float]:
    """(MAE, MAE with each side's VBM as zero), meV."""
    rel = (e - e[:, nval - 1].max()) - (ref - ref[:, nval - 1].max())
    return 1000 * float(np.abs(e - ref).mean()), 1000 * float(np.abs(rel).mean())


def recompute(frame, mesh: int, smearing: float | None):
    """The frame's structure with its own settings on an SCF mesh of ``mesh`` per axis."""
    from ase_slem.io.pyscf import periodic_operators

    s = frame.settings
    dense = max(mesh, *(s.get("dense_kmesh") or [0]))
    return periodic_operators(frame.atoms, s["xc"], s["basis"], s["pseudo"], (mesh,) * 3, dense_kmesh=(dense,) * 3,
                              density_fit=bool(s.get("density_fit")), ke_cutoff=s.get("ke_cutoff"),
                              conv_tol=s.get("conv_tol", 1e-9), smearing=smearing)


def main(argv=None) -> int:
    from ase_slem import band_energies
    from ase_slem.bands import band_path
    from ase_slem.io.dataset import read_frame

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--frames", nargs="+", required=True, help="frame folder names")
    p.add_argument("--meshes", type=int, nargs="+", required=True, help="SCF mesh sizes n (n x n x n), densest last")
    p.add_argument("--smearing", nargs="+", default=["none"], help="Fermi-Dirac widths in eV, or none")
    args = p.parse_args(argv)
    widths = [None if w.lower() == "none" else float(w) for w in args.smearing]
    print("| frame | SCF mesh | smearing (eV) | vs stored: MAE / relative to VBM (meV) | vs last run (meV) | band overlap (meV) | s |")
    print("|---|---|---|---|---|---|---|")
    for name in args.frames:
        fr = read_frame(Path(args.data) / name)
        if fr.settings.get("code") != "pyscf" or not fr.atoms.pbc.all():
            raise SystemExit(f"{name}: not a periodic PySCF frame; nothing to recompute")
        nval = int(fr.results["nelectron"]) // 2
        k = band_path(fr.atoms, npoints=40).kpts
        stored = band_energies(fr.operators["hamiltonian"], fr.operators["overlap"], k)[:, :nval + 4]
        runs = []
        for mesh in args.meshes:
            for w in widths:
                t0 = time.perf_counter()
                new = recompute(fr, mesh, w)
                e = band_energies(new.operators["hamiltonian"], new.operators["overlap"], k)[:, :nval + 4]
                runs.append((mesh, w, e, time.perf_counter() - t0, new.results["converged"]))
        last = runs[-1][2]
        for mesh, w, e, sec, conv in runs:
            a, b = _compare(e, stored, nval)
            c, d = _compare(e, last, nval)
            overlap = 1000 * float(e[:, nval - 1].max() - e[:, nval].min())
            print(f"| {name} | {mesh}x{mesh}x{mesh}{'' if conv else ' (not converged)'} | {w or 'none'} | {a:.2f} / {b:.2f} | "
                  f"{c:.2f} / {d:.2f} | {overlap:+.0f} | {sec:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the PySCF speed options cost in accuracy and gain in time, side by side on one structure.

    python benchmarks/pyscf_scf_speed.py --data ../data/converged/si_pbe_dzvp --frame frame.000007 --mesh 4
    python benchmarks/pyscf_scf_speed.py --data ../data/converged/si_pbe_dzvp --frame frame.000007 --mesh 8

The frame's structure is computed three times with the DFT settings it records (functional,
basis, pseudopotential, FFT cutoff, convergence threshold, smearing) on an n x n x n
Gamma-centred SCF mesh:

1. every k-point, J and Vxc on PySCF's one uniform grid (the baseline);
2. one of each pair k, -k (``kpoint_symmetry="time_reversal"``);
3. that and PySCF's multigrid J and Vxc (``multigrid=True``).

Printed per run: seconds of the SCF and of the whole frame, the ratio to the baseline, the largest
|H difference| from the baseline (meV) and the band MAE / largest difference from the baseline's
bands (valence plus 4 conduction bands, 40 points of the seekpath path; meV). Runs one after the
other on one thread each (OMP_NUM_THREADS), so the ratios compare like with like; an 8x8x8 mesh
for two-atom silicon takes ~10 minutes in all.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

VARIANTS = (("every k, uniform grid", {}),
            ("time reversal", {"kpoint_symmetry": "time_reversal"}),
            ("time reversal + multigrid", {"kpoint_symmetry": "time_reversal", "multigrid": True}))


def run(frame, mesh: int, options: dict):
    """The frame's structure with its own settings on an n x n x n SCF mesh and ``options``."""
    from ase_slem.io.pyscf import periodic_operators

    s = frame.settings
    return periodic_operators(frame.atoms, s["xc"], s["basis"], s["pseudo"], (mesh,) * 3,
                              density_fit=bool(s.get("density_fit")), ke_cutoff=s.get("ke_cutoff"),
                              conv_tol=s.get("conv_tol", 1e-9), smearing=s.get("smearing"), **options)


def main(argv=None) -> int:
    from ase_slem import band_energies
    from ase_slem.bands import band_path
    from ase_slem.io.dataset import read_frame

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--frame", required=True, help="frame folder name (a periodic PySCF frame)")
    p.add_argument("--mesh", type=int, default=4, help="SCF mesh size n (n x n x n), default 4")
    args = p.parse_args(argv)
    fr = read_frame(Path(args.data) / args.frame)
    if fr.settings.get("code") != "pyscf" or not fr.atoms.pbc.all():
        raise SystemExit(f"{args.frame}: not a periodic PySCF frame; nothing to recompute")
    nval = int(fr.results["nelectron"]) // 2
    k = band_path(fr.atoms, npoints=40).kpts
    print(f"{args.frame} ({len(fr.atoms)} atoms), {args.mesh}x{args.mesh}x{args.mesh} SCF mesh, "
          f"smearing {fr.settings.get('smearing')} eV\n")
    print("| run | SCF s | frame s | frame time / baseline | max abs H difference (meV) | bands MAE / max (meV) |")
    print("|---|---|---|---|---|---|")
    base = base_e = base_t = None
    for label, options in VARIANTS:
        new = run(fr, args.mesh, options)
        t = new.results["timings"]
        total = float(sum(t.values()))
        e = band_energies(new.operators["hamiltonian"], new.operators["overlap"], k)[:, :nval + 4]
        if base is None:
            base, base_e, base_t = new, e, total
        dh = 1000 * new.operators["hamiltonian"].max_abs_difference(base.operators["hamiltonian"])
        de = 1000 * np.abs(e - base_e)
        print(f"| {label} | {t['scf']:.0f} | {total:.0f} | {total / base_t:.2f} | {dh:.3f} | "
              f"{de.mean():.3f} / {de.max():.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

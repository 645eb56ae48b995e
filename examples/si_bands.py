"""Band structure of silicon, written to a PNG (and the numbers to JSON).

With the shipped model (models/si_pbe_dzvp.pt) present, the bands come from SLEM's predicted
H and S.  Until then -- or with ``--source pyscf`` -- the script runs a small PBE calculation
itself through PySCF (gth-dzvp-molopt-sr, gth-pbe; SCF on a 3x3x3 mesh, Fock matrix rebuilt on a
6x6x6 mesh so that H(R), S(R) reproduce PySCF's bands everywhere, about 1-3 minutes on 2 cores),
and draws the bands of those real-space operators along seekpath's path.

    python examples/si_bands.py [-o si_bands.png] [--source auto|model|pyscf]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from ase.build import bulk  # noqa: E402

from ase_slem import band_structure  # noqa: E402
from ase_slem.plotting import plot_bands  # noqa: E402

MODEL = Path(__file__).resolve().parents[1] / "models" / "si_pbe_dzvp.pt"


def operators_from_pyscf(atoms):
    from ase_slem.io.pyscf import periodic_operators

    frame = periodic_operators(
        atoms, xc="pbe", basis="gth-dzvp-molopt-sr", pseudo="gth-pbe",
        kmesh=(3, 3, 3), dense_kmesh=(6, 6, 6), density_fit=False, ke_cutoff=40.0,
    )
    return frame.operators["hamiltonian"], frame.operators["overlap"], "PySCF PBE/gth-dzvp (3x3x3 SCF, 6x6x6 Fock)"


def operators_from_model(atoms):
    from ase_slem import SLEMCalculator

    calc = SLEMCalculator(str(MODEL))
    return calc.get_hamiltonian(atoms), calc.get_overlap(atoms), f"SLEM model {MODEL.name}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", default="si_bands.png")
    p.add_argument("--source", choices=["auto", "model", "pyscf"], default="auto")
    args = p.parse_args()

    atoms = bulk("Si", "diamond", a=5.431)
    use_model = args.source == "model" or (args.source == "auto" and MODEL.exists())
    t0 = time.perf_counter()
    print("computing H and S with", "the SLEM model" if use_model else "PySCF (about 1-3 minutes) ...", flush=True)
    H, S, label = (operators_from_model if use_model else operators_from_pyscf)(atoms)
    t1 = time.perf_counter()
    bs = band_structure(H, S, atoms, npoints=200, reference="fermi", n_electrons=8)
    t2 = time.perf_counter()
    ax = plot_bands(bs, emin=-13, emax=8, title=f"Si bands: {label}")
    out = Path(args.output)
    ax.figure.savefig(out, dpi=150, bbox_inches="tight")
    e = bs.energies[0] - bs.reference
    gap = e[:, 4].min() - e[:, 3].max()
    out.with_suffix(".json").write_text(json.dumps({"source": label, "fermi_level_eV": float(bs.reference), "gap_on_path_eV": float(gap), "energies_minus_EF_eV": e.tolist()}))
    print(f"operators {t1 - t0:.1f} s, bands {t2 - t1:.2f} s; gap on the path {gap:.3f} eV; wrote {out}")


if __name__ == "__main__":
    main()

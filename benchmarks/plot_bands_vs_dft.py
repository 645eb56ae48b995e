"""Bands of a shipped model against the DFT bands of a held-out frame, in one picture.

    python benchmarks/plot_bands_vs_dft.py models/si_pbe_dzvp.pt --data ../data/si_pbe_dzvp -o docs/si_bands_model_vs_dft.png

The frame is the first of the model's recorded test split (or ``--frame NAME``): a strained,
thermally rattled cell training never saw.  DFT: the frame's own H(R), S(R) (PySCF KRKS,
reproducing PySCF's bands off the mesh to 0.01 meV); model: SLEMCalculator on the same
structure.  Both along seekpath's path for that cell, both relative to the DFT valence-band
maximum; the MAE over valence + 4 conduction bands is printed and written in the title.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402

from ase_slem import SLEMCalculator, band_structure  # noqa: E402
from ase_slem.bands import band_path  # noqa: E402
from ase_slem.io.dataset import read_frame  # noqa: E402
from ase_slem.model_file import read_metadata  # noqa: E402
from ase_slem.plotting import plot_bands  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--data", required=True)
    p.add_argument("--frame", help="frame folder name (default: first test frame)")
    p.add_argument("-o", "--output", default="bands_vs_dft.png")
    args = p.parse_args(argv)
    name = args.frame or read_metadata(args.model)["training"]["split"]["test"][0]
    fr = read_frame(Path(args.data) / name)
    atoms = fr.atoms
    nel = int(fr.results["nelectron"])
    path = band_path(atoms, npoints=150)
    dft = band_structure(fr.operators["hamiltonian"], fr.operators["overlap"], atoms, path=path, reference=None)
    calc = SLEMCalculator(args.model)
    pred = band_structure(calc.get_hamiltonian(atoms), calc.get_overlap(atoms), atoms, path=path, reference=None)
    nb = nel // 2 + 4
    vbm = dft.energies[0][:, nel // 2 - 1].max()
    mae = 1000 * np.abs(pred.energies[0][:, :nb] - dft.energies[0][:, :nb]).mean()
    ax = plot_bands(dft, reference=vbm, emin=-13, emax=6, color="black")
    plot_bands(pred, ax=ax, reference=vbm, emin=-13, emax=6, color="tab:red")
    for line in ax.get_lines():
        if line.get_color() == "tab:red":
            line.set_linestyle("--")
    ax.plot([], [], color="black", label="DFT (PySCF PBE)")
    ax.plot([], [], color="tab:red", ls="--", label=f"SLEM {Path(args.model).stem}")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{atoms.get_chemical_formula()} held-out {name}: band MAE {mae:.1f} meV", fontsize=9)
    ax.set_ylabel("E - VBM(DFT) (eV)")
    ax.figure.savefig(args.output, dpi=150, bbox_inches="tight")
    print(f"{name}: MAE {mae:.2f} meV over {nb} bands x {len(path.kpts)} k; wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

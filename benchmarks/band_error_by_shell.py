"""Which distance shell of a crystal model's Hamiltonian its band errors come from.

    python benchmarks/band_error_by_shell.py models/si_pbe_dzvp.pt --data ../data/si_pbe_dzvp
    python benchmarks/band_error_by_shell.py models/si_pbe_dzvp.pt --data ../data/si_pbe_dzvp --split val \\
        --shells 0 2.5 4 6 10

For each cell of the split (the model file's recorded split, or ``--frames``) and each shell of
atom-pair distances (onsite blocks, then the intervals between consecutive ``--shells`` edges,
Å), the bands of

    H_DFT with only this shell's blocks replaced by the model's   ("only this shell predicted")

against those of H_DFT, with the DFT overlap, on the seekpath path of the cell. Printed per cell
and shell: the error of the valence-band maximum (meV, signed) and the band MAE (meV, valence
bands and the 4 lowest conduction bands). The first column pair is the whole predicted H.
To first order in the errors the shells' VBM errors add up to the whole model's; shells whose
errors are large and of opposite sign compensate each other, which a band-energy loss allows
but an element-wise one does not.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def _bands(hk: np.ndarray, sk: np.ndarray, nb: int) -> np.ndarray:
    from scipy.linalg import eigh

    return np.array([eigh(h, s, eigvals_only=True, subset_by_index=(0, nb - 1)) for h, s in zip(hk, sk)])


def shell_errors(model_path: str, frames, edges: list[float], n_extra: int = 4, npath: int = 40) -> dict:
    """{"shells": names, "cells": [(name, natoms, [(vbm_meV, mae_meV) whole model, then per shell])]}."""
    from ase_slem import SLEMCalculator
    from ase_slem.bands import band_path

    calc = SLEMCalculator(str(model_path), overlap="exact")
    bounds = [(None, 1e-3)] + [(max(lo, 1e-3), hi) for lo, hi in zip(edges[:-1], edges[1:])]
    names = ["onsite"] + [f"{lo:g}-{hi:g} Å" for lo, hi in zip(edges[:-1], edges[1:])]
    cells = []
    for name, fr in frames:
        atoms = fr.atoms
        nval = int(round(fr.results.get("nelectron") or calc.get_number_of_electrons(atoms))) // 2
        nb = nval + n_extra
        k = band_path(atoms, npoints=npath).kpts
        H, S = fr.operators["hamiltonian"], fr.operators["overlap"]
        h_pred = calc.get_hamiltonian(atoms)
        sk, hk_ref = S.bloch(k), H.bloch(k)
        ref = _bands(hk_ref, sk, nb)

        def vbm_mae(hk):
            e = _bands(hk, sk, nb)
            return 1000 * (e[:, nval - 1].max() - ref[:, nval - 1].max()), 1000 * float(np.abs(e - ref).mean())

        row = [vbm_mae(h_pred.bloch(k))]
        for lo, hi in bounds:
            row.append(vbm_mae(hk_ref + h_pred.within_distance(atoms, hi, lo).bloch(k)
                               - H.within_distance(atoms, hi, lo).bloch(k)))
        cells.append((name, len(atoms), row))
        print(f"{name} ({len(atoms)} atoms): " + "  ".join(f"{v:+.1f}/{m:.1f}" for v, m in row), file=sys.stderr, flush=True)
    return {"shells": names, "cells": cells}


def markdown(res: dict) -> str:
    head = ["cell", "whole model"] + [f"only {s}" for s in res["shells"]]
    lines = ["VBM error (meV, signed) / band MAE (meV), bands of the DFT H with the named blocks predicted", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, natoms, row in res["cells"]:
        lines.append(f"| {name} ({natoms}) | " + " | ".join(f"{v:+.1f} / {m:.1f}" for v, m in row) + " |")
    a = np.array([[x for pair in row for x in pair] for _, _, row in res["cells"]])
    mean = np.abs(a).mean(0).reshape(-1, 2)
    lines.append("| mean of \\|VBM error\\| / MAE | " + " | ".join(f"{v:.1f} / {m:.1f}" for v, m in mean) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from ase_slem.io.dataset import read_frame
    from ase_slem.model_file import read_metadata

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--data", required=True, help="the dataset folder the model was trained on")
    p.add_argument("--split", default="test", choices=["test", "val", "train"])
    p.add_argument("--frames", nargs="*", help="frame folder names instead of a recorded split")
    p.add_argument("--shells", type=float, nargs="+", default=[0.0, 2.7, 4.2, 5.0, 7.0, 10.0],
                   help="shell edges in Å (ascending; onsite blocks are always their own shell)")
    args = p.parse_args(argv)
    meta = read_metadata(args.model)
    if not meta.get("periodic"):
        raise SystemExit(f"{args.model} is a molecular model; band shells need a crystal model")
    if sorted(args.shells) != args.shells or len(args.shells) < 2:
        raise SystemExit(f"--shells needs at least two ascending edges in Å, got {args.shells}")
    names = args.frames or meta.get("training", {}).get("split", {}).get(args.split)
    if not names:
        raise SystemExit(f"{args.model} records no {args.split!r} split; pass --frames")
    frames = [(n, read_frame(Path(args.data) / n)) for n in names]
    print(markdown(shell_errors(args.model, frames, args.shells)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

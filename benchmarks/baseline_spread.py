"""How much of a molecule's H and D a physics baseline takes away: the spread over geometries.

    python benchmarks/baseline_spread.py --data ../data/ethanol_pbe_svp [--frames 12]

For each of PySCF's initial guesses (``minao``, ``atom``, ``huckel``, ``sap``) the baseline is the
guess density D0 and the Kohn–Sham matrix H0 built once from it (one Fock build, the frame's own
functional, basis and grid).  What a network has to learn is X - X0, and what makes that hard is
how much it changes from one geometry to the next.  Per frame, every shell pair (a, b) of the
molecule gives a rotation-invariant number, the Frobenius norm of its block; the table gives the
standard deviation of that number over the frames, averaged over the shell pairs, for X and for
X - X0 (same atom order in every frame), and the baseline's cost per molecule (one thread).
The frames are the first ``--frames`` of the set; each is computed with the settings in its
info.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from ase.units import Hartree  # noqa: E402

GUESSES = ("minao", "atom", "huckel", "sap")


def shell_norms(m: np.ndarray, shells) -> np.ndarray:
    """Frobenius norm of every (shell a, shell b) block of the square matrix ``m``."""
    return np.array([np.linalg.norm(m[a:a + na, b:b + nb]) for a, na in shells for b, nb in shells])


def measure(data: str, n_frames: int) -> dict:
    from pyscf import dft

    from ase_slem.basis import Basis
    from ase_slem.io.dataset import frame_paths, read_frame
    from ase_slem.io.pyscf import atoms_to_mole

    norms = {("reference", op): [] for op in ("H", "D")}
    cost = {g: 0.0 for g in GUESSES}
    paths = frame_paths(data)[:n_frames]
    for path in paths:
        fr = read_frame(path)
        s = fr.settings
        mol = atoms_to_mole(fr.atoms, s["basis"])
        symbols = fr.atoms.get_chemical_symbols()
        bas = Basis.from_pyscf(mol)
        conv = bas.structure_converter(symbols, "pyscf")
        shells, start = [], 0
        for el in symbols:
            for l in bas.shells(el):
                shells.append((start, 2 * l + 1))
                start += 2 * l + 1
        h = fr.operators["hamiltonian"].to_sparse().toarray()
        d = fr.operators["density_matrix"].to_sparse().toarray()
        norms["reference", "H"].append(shell_norms(h, shells))
        norms["reference", "D"].append(shell_norms(d, shells))
        for guess in GUESSES:
            t0 = time.perf_counter()
            mf = dft.RKS(mol)
            mf.xc, mf.verbose = s["xc"], 0
            if s.get("grids_level") is not None:
                mf.grids.level = int(s["grids_level"])
            d0 = mf.get_init_guess(key=guess)
            h0 = mf.get_fock(dm=d0) * Hartree
            cost[guess] += time.perf_counter() - t0
            norms.setdefault((guess, "H"), []).append(shell_norms(h - conv @ h0 @ conv.T, shells))
            norms.setdefault((guess, "D"), []).append(shell_norms(d - conv @ d0 @ conv.T, shells))
    spread = {k: float(np.array(v).std(axis=0).mean()) for k, v in norms.items()}
    size = {k: float(np.abs(np.array(v)).mean()) for k, v in norms.items()}
    return {"frames": len(paths), "spread": spread, "size": size, "seconds": {g: cost[g] / len(paths) for g in GUESSES}}


def markdown(res: dict) -> str:
    sp, sz = res["spread"], res["size"]
    lines = [f"Spread over {res['frames']} geometries of the shell-pair block norms (mean over shell pairs)", "",
             "| baseline X0 | H - H0 spread | H - H0 size | D - D0 spread | D - D0 size | cost per molecule |",
             "|---|---|---|---|---|---|",
             f"| none (X itself) | {1000 * sp['reference', 'H']:.1f} meV | {1000 * sz['reference', 'H']:.0f} meV | "
             f"{sp['reference', 'D']:.5f} | {sz['reference', 'D']:.4f} | |"]
    for g in GUESSES:
        lines.append(f"| {g} | {1000 * sp[g, 'H']:.1f} meV | {1000 * sz[g, 'H']:.0f} meV | {sp[g, 'D']:.5f} | "
                     f"{sz[g, 'D']:.4f} | {res['seconds'][g]:.2f} s |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="a molecular dataset (frames with H, S and D)")
    p.add_argument("--frames", type=int, default=12, help="how many frames (the first ones of the set)")
    args = p.parse_args(argv)
    print(markdown(measure(args.data, args.frames)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

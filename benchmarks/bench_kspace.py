"""Bloch sum + generalized eigensolve per k-point against raw LAPACK and sisl.

For silicon cells of 64, 216 and 512 atoms with a 2s2p1d-sized basis (13 orbitals per atom,
blocks for every pair within 7 Å: the reach of gth-dzvp Gaussians), time per k-point:

- ours:   RealSpaceOperator.bloch (H and S) + ase_slem.generalized_eigh (LAPACK potrf/hegst/heevd)
- LAPACK: scipy.linalg.eigh(Hk, Sk) on prebuilt dense matrices (the floor: no Bloch sum at all)
- sisl:   sisl.Hamiltonian (non-orthogonal) .eigh(k) on the same H and S, where sisl is installed

and print the ratio to LAPACK (goal: ours <= 1.10).  Block values are synthetic (random,
decaying with distance; S diagonally dominant), the sparsity is that of real silicon.

    python benchmarks/bench_kspace.py [--sizes 64 216 512] [--vectors] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import scipy.linalg as sl
from ase.build import bulk
from ase.neighborlist import neighbor_list

from ase_slem import RealSpaceOperator, generalized_eigh

NORB = 13  # 2s2p1d
CUTOFF = 7.0  # Å


def silicon_operators(natoms: int, seed: int = 0):
    """Synthetic H, S with the block sparsity of a rattled diamond silicon cell of ``natoms``."""
    reps = {64: (2, 2, 2), 216: (3, 3, 3), 512: (4, 4, 4)}[natoms]
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(reps)
    rng = np.random.default_rng(seed)
    atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
    i, j, d, shifts = neighbor_list("ijdS", atoms, CUTOFF)
    upper = i < j
    i, j, d, shifts = i[upper], j[upper], d[upper], shifts[upper]
    nb = len(i)
    hb = rng.normal(size=(nb, NORB, NORB)) * np.exp(-d)[:, None, None] * 5.0
    sb = rng.normal(size=(nb, NORB, NORB)) * np.exp(-d)[:, None, None] * (0.3 / (NORB * 40))
    onsite_h = rng.normal(size=(natoms, NORB, NORB))
    onsite_h = onsite_h + onsite_h.transpose(0, 2, 1)
    onsite_s = np.broadcast_to(np.eye(NORB), (natoms, NORB, NORB))
    ii = np.concatenate([i, np.arange(natoms)])
    jj = np.concatenate([j, np.arange(natoms)])
    RR = np.concatenate([shifts, np.zeros((natoms, 3), int)])
    counts = [NORB] * natoms
    H = RealSpaceOperator.from_blocks(counts, ii, jj, RR, list(np.concatenate([hb, onsite_h])), name="H")
    S = RealSpaceOperator.from_blocks(counts, ii, jj, RR, list(np.concatenate([sb, onsite_s])), name="S")
    return atoms, H, S


def to_sisl(atoms, H, S):
    """The same operators as a non-orthogonal sisl.Hamiltonian (supercell sparse layout)."""
    import scipy.sparse as sp
    import sisl

    nsc = 2 * np.abs(H.cell_shifts).max(axis=0) + 1
    geom = sisl.Geometry(atoms.positions, atoms=sisl.Atom(14, [sisl.Orbital(2.5)] * NORB), lattice=sisl.Lattice(atoms.cell[:], nsc=nsc))
    no = H.norb
    mats = []
    for op in (H, S):
        rows, cols, vals = [], [], []
        for r in op.cell_shifts:
            m = op.to_sparse(r).tocoo()
            isc = geom.lattice.sc_index(r)
            rows.append(m.row), cols.append(m.col + isc * no), vals.append(m.data)
        mats.append(sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(no, no * geom.n_s)))
    return sisl.Hamiltonian.fromsp(geom, mats[0], S=mats[1])


def best_of(fn, repeat):
    """(shortest wall time of ``repeat`` calls, the last call's result)."""
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def run(sizes, vectors: bool, repeat: int):
    k = np.array([0.1, 0.2, 0.3])
    rows = []
    for n in sizes:
        atoms, H, S = silicon_operators(n)
        hk, sk = H.bloch(k), S.bloch(k)
        t_bloch, _ = best_of(lambda: (H.bloch(k), S.bloch(k)), repeat)
        t_ours, w_ours = best_of(lambda: generalized_eigh(H.bloch(k), S.bloch(k), eigvals_only=not vectors), repeat)
        t_lapack, w_ref = best_of(lambda: sl.eigh(hk, sk, eigvals_only=not vectors, driver="gvd"), repeat)
        if vectors:
            w_ours, w_ref = w_ours[0], w_ref[0]
        row = {
            "atoms": n, "orbitals": H.norb, "blocks": H.nblocks, "bloch_s": t_bloch, "ours_s": t_ours,
            "lapack_s": t_lapack, "ratio_ours": t_ours / t_lapack, "max_dE_eV": float(np.abs(w_ours - w_ref).max()),
        }
        try:
            hs = to_sisl(atoms, H, S)
            row["sisl_s"], w_sisl = best_of(lambda: hs.eigh(k=k, eigvals_only=not vectors), repeat)
            w_sisl = w_sisl if not vectors else w_sisl[0]
            row["sisl_dE_eV"] = float(np.abs(np.sort(w_sisl) - w_ref).max())
            row["ratio_sisl"] = row["sisl_s"] / t_lapack
        except ImportError:
            row["sisl_s"] = None
        rows.append(row)
        print_row(row)
    return rows


def print_header(vectors):
    what = "eigenvalues+vectors" if vectors else "eigenvalues only"
    print(f"# per k-point, complex k=(0.1,0.2,0.3), {what}; best of repeats; machine: {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores")
    print(f"{'atoms':>5} {'norb':>5} {'blocks':>7} {'bloch(H,S) s':>12} {'ours s':>9} {'LAPACK s':>9} {'ours/LAPACK':>11} {'sisl s':>9} {'sisl/LAPACK':>11} {'max|dE| eV':>10}")


def print_row(r):
    sisl_s = f"{r['sisl_s']:9.3f}" if r.get("sisl_s") else f"{'n/a':>9}"
    sisl_r = f"{r['ratio_sisl']:11.3f}" if r.get("sisl_s") else f"{'n/a':>11}"
    print(f"{r['atoms']:5d} {r['orbitals']:5d} {r['blocks']:7d} {r['bloch_s']:12.4f} {r['ours_s']:9.3f} {r['lapack_s']:9.3f} {r['ratio_ours']:11.3f} {sisl_s} {sisl_r} {r['max_dE_eV']:10.1e}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 216, 512], choices=[64, 216, 512])
    p.add_argument("--vectors", action="store_true", help="also compute eigenvectors")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", help="write the table as JSON here")
    args = p.parse_args()
    print_header(args.vectors)
    rows = run(args.sizes, args.vectors, args.repeat)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"vectors": args.vectors, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()

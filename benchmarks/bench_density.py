"""Electron density on a real-space grid: time and peak memory for 8-, 64- and 216-atom silicon.

Two radial bases (both 2s2p1d, 13 orbitals per atom):

- ``siesta``: SIESTA DZP numerical orbitals (cutoffs 2.0-3.6 Å) of the silicon run in
  ``../shared/data/external/siesta-si-deeph``, with SIESTA's own density matrix copied onto the
  conventional supercells (``ase_slem.density.supercell_operator``): a real density, so the
  table also shows the electron count on the grid against Tr(D S) = 4 per atom.
- ``gth``: PySCF's gth-dzvp-molopt-sr Gaussians (the si_pbe_dzvp model's basis; cut at 1e-8 of
  each shell's peak: 6.9-8.2 Å) with a synthetic density matrix of the right sparsity (random
  blocks decaying with distance, pairs within 2 x cutoff, at most 9 Å): timing only.

``--tolerance`` is electron_density's (default 1e-6: orbitals cut at 1e-6 of their peaks, which
shortens the Gaussians to 5.7-7.1 Å; ``none``: the basis' own cutoffs).

    python benchmarks/bench_density.py [--sizes 8 64 216] [--basis siesta gth] [--spacing 0.15]
                                       [--tolerance 1e-6 none] [--chunk 1024] [--json out.json]

Peak memory is the largest amount of memory numpy/Python allocated during the density call
(tracemalloc), beyond what was held before it.  Wall and CPU time of the call are both shown:
on a shared machine the CPU time is the steadier figure.  Single-threaded BLAS is recommended for
comparable numbers: ``OMP_NUM_THREADS=1``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
import tracemalloc
from pathlib import Path

import numpy as np
from ase.build import make_supercell
from ase.neighborlist import neighbor_list

from ase_slem.density import DEFAULT_CHUNK, DEFAULT_TOLERANCE, electron_density, supercell_operator
from ase_slem.operators import RealSpaceOperator
from ase_slem.orbitals import truncated_radial_basis

SIESTA_RUN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "external" / "siesta-si-deeph" / "siesta_data"
REPEATS = {8: 1, 64: 2, 216: 3, 512: 4}
TO_CUBIC = [[-1, 1, 1], [1, -1, 1], [1, 1, -1]]  # fcc primitive -> conventional cell


def primitive_silicon():
    """(atoms, D, S, radial) of the SIESTA run, or the bare primitive cell if the data are absent."""
    if SIESTA_RUN.is_dir():
        from ase_slem.io import siesta

        atoms, ops = siesta.read(SIESTA_RUN)
        return atoms, ops["density_matrix"], ops["overlap"], siesta.read_radial_basis(SIESTA_RUN)
    from ase.build import bulk

    return bulk("Si", "diamond", a=5.43), None, None, None


def gth_radial(atoms, tolerance):
    from ase_slem.io.pyscf import atoms_to_cell
    from ase_slem.orbitals import radial_basis_from_pyscf

    return radial_basis_from_pyscf(atoms_to_cell(atoms, basis="gth-dzvp-molopt-sr"), tolerance=tolerance)


def synthetic_density_matrix(atoms, norb: int, reach: float, seed: int = 0) -> RealSpaceOperator:
    """Random symmetric blocks decaying with distance, for every pair within ``reach`` Å."""
    rng = np.random.default_rng(seed)
    i, j, d, S = neighbor_list("ijdS", atoms, reach)
    keep = i < j
    i, j, d, S = i[keep], j[keep], d[keep], S[keep]
    blocks = rng.normal(size=(len(i), norb, norb)) * np.exp(-d)[:, None, None]
    onsite = rng.normal(size=(len(atoms), norb, norb))
    onsite = onsite + onsite.transpose(0, 2, 1)
    n = len(atoms)
    return RealSpaceOperator.from_blocks(
        [norb] * n, np.concatenate([i, np.arange(n)]), np.concatenate([j, np.arange(n)]),
        np.concatenate([S, np.zeros((n, 3), int)]), list(np.concatenate([blocks, onsite])), name="D",
    )


def run_case(natoms: int, basis: str, spacing: float, tolerance: float | None, chunk: int, prim) -> dict:
    atoms0, D0, S0, radial0 = prim
    cell = make_supercell(atoms0, TO_CUBIC).repeat(REPEATS[natoms])
    assert len(cell) == natoms
    if basis == "siesta":
        if D0 is None:
            raise SystemExit(f"--basis siesta needs {SIESTA_RUN}")
        radial = radial0
        D, S = supercell_operator(D0, atoms0, cell), supercell_operator(S0, atoms0, cell)
        expected = D.trace_product(S)
    else:
        radial = gth_radial(atoms0, 1e-8)
        reach = 2 * max(s.cutoff for s in radial.functions["Si"])
        D, expected = synthetic_density_matrix(cell, 13, min(reach, 9.0)), None
    used = radial if tolerance is None else truncated_radial_basis(radial, tolerance)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    grid = electron_density(D, cell, radial, spacing=spacing, tolerance=tolerance, chunk=chunk)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    npts = int(np.prod(grid.rho.shape))
    row = {
        "natoms": natoms, "basis": basis, "tolerance": tolerance, "spacing": spacing, "chunk": chunk,
        "grid": list(grid.rho.shape), "points": npts,
        "max_cutoff": max(s.cutoff for s in used.functions["Si"]),
        "seconds": wall, "cpu_seconds": cpu, "us_per_point": 1e6 * wall / npts, "peak_MB": peak / 2**20,
        "grid_MB": grid.rho.nbytes / 2**20, "electrons_grid": grid.integral, "electrons_TrDS": expected,
    }
    if expected is not None:
        row["electron_error"] = grid.integral / expected - 1.0
    return row


def _tolerance(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 64, 216], choices=sorted(REPEATS))
    ap.add_argument("--basis", nargs="+", default=["siesta", "gth"], choices=["siesta", "gth"])
    ap.add_argument("--spacing", type=float, default=0.15, help="grid spacing, Å")
    ap.add_argument("--tolerance", type=_tolerance, nargs="+", default=[DEFAULT_TOLERANCE],
                    help="electron_density's tolerance: cut shells at this fraction of their peak, or "
                         f"'none' for the basis' own cutoffs (default {DEFAULT_TOLERANCE:g})")
    ap.add_argument("--chunk", type=int, default=DEFAULT_CHUNK)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    prim = primitive_silicon()
    rows = []
    head = (f"{'atoms':>5} {'basis':>6} {'tol':>7} {'rc(Å)':>6} {'grid':>13} {'points':>9} {'wall(s)':>8} {'cpu(s)':>7} "
            f"{'µs/pt':>6} {'peak MB':>8} {'N_e grid':>10} {'Tr(DS)':>8} {'err':>9}")
    print(head)
    print("-" * len(head))
    for basis in args.basis:
        for tol in args.tolerance:
            for n in args.sizes:
                r = run_case(n, basis, args.spacing, tol, args.chunk, prim)
                rows.append(r)
                trds = f"{r['electrons_TrDS']:8.2f}" if r["electrons_TrDS"] is not None else f"{'-':>8}"
                err = f"{r['electron_error']:9.1e}" if "electron_error" in r else f"{'-':>9}"
                tol_s = f"{tol:7.0e}" if tol is not None else f"{'basis':>7}"
                print(f"{n:5d} {basis:>6} {tol_s} {r['max_cutoff']:6.2f} {'x'.join(map(str, r['grid'])):>13} "
                      f"{r['points']:9d} {r['seconds']:8.2f} {r['cpu_seconds']:7.2f} {r['us_per_point']:6.1f} {r['peak_MB']:8.1f} "
                      f"{r['electrons_grid']:10.4f} {trds} {err}", flush=True)
    if args.json:
        meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "python": platform.python_version(),
                "numpy": np.__version__}
        args.json.write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
        print(f"wrote {args.json}")
    return rows


if __name__ == "__main__":
    main()

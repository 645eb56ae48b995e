"""States near the gap of a large rattled silicon supercell (> 1000 atoms) from SLEM's H and S.

Dense diagonalization of a 1200-atom gth-dzvp cell (15 600 orbitals) takes minutes and ~4 GB per
matrix; SLEM gives the sparse real-space H and S in chunks of bounded memory, and shift-invert
(``ase_slem.eigs_near``: sparse LU of H - sigma S, ARPACK) finds the few states around the gap.
The energy sigma is the middle of the gap of the perfect 2-atom cell (same model, k-mesh), unless
``--sigma`` is given.  Timings and the process's peak memory are printed (and written with
``--json PATH``).

    python examples/large_si_supercell.py                    # models/si_pbe_dzvp.pt, 5x5x6 cubic cells = 1200 atoms
    python examples/large_si_supercell.py --model my.pt --reps 3 3 3 --nev 8

Needs the shipped model (or ``--model PATH``); without it the script says so and exits with
status 2.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

from ase.build import bulk

MODEL = Path(__file__).resolve().parents[1] / "models" / "si_pbe_dzvp.pt"


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MB (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help=f"model file (default {MODEL})")
    p.add_argument("--reps", type=int, nargs=3, default=(5, 5, 6), help="repetitions of the 8-atom cubic cell")
    p.add_argument("--rattle", type=float, default=0.05, help="random displacements, Å (standard deviation)")
    p.add_argument("--nev", type=int, default=12, help="states to find around sigma")
    p.add_argument("--sigma", type=float, default=None, help="target energy, eV (default: gap centre of bulk Si)")
    p.add_argument("--max-edges", type=int, default=None,
                   help="graph edges per network call (memory bound; default: the calculator's, 20,000)")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = p.parse_args()

    model = Path(args.model) if args.model else MODEL
    if not model.is_file():
        print(f"error: no model file {model}. The shipped silicon model (models/si_pbe_dzvp.pt) is not in this "
              "checkout yet; train/export one (ase-slem train / ase-slem export) and pass --model PATH.",
              file=sys.stderr)
        return 2

    from ase_slem import SLEMCalculator, eigs_near

    timings: dict[str, float] = {}
    atoms = bulk("Si", "diamond", a=5.431, cubic=True) * tuple(args.reps)
    atoms.rattle(args.rattle, seed=42)
    print(f"structure: {len(atoms)} Si atoms ({'x'.join(map(str, args.reps))} cubic cells, rattled "
          f"{args.rattle} Å)", flush=True)

    t = time.perf_counter()
    # exact overlap (the model's recommendation) for the pairs within the range of H only
    calc = SLEMCalculator(str(model), overlap_cutoff="r_bond",
                          **({} if args.max_edges is None else {"max_edges": args.max_edges}))
    timings["load_model"] = time.perf_counter() - t
    base_mb = peak_rss_mb()  # torch and the model loaded

    sigma = args.sigma
    if sigma is None:
        t = time.perf_counter()
        prim = bulk("Si", "diamond", a=5.431)
        pcalc = SLEMCalculator(str(model), kpts=(6, 6, 6))
        prim.calc = pcalc
        sigma = pcalc.get_fermi_level()
        timings["sigma_from_primitive_cell"] = time.perf_counter() - t
        print(f"sigma = {sigma:.4f} eV (Fermi level / gap centre of the 2-atom cell, 6x6x6 mesh)", flush=True)

    t = time.perf_counter()
    H = calc.get_hamiltonian(atoms)
    S = calc.get_overlap(atoms)
    timings["predict_H_S"] = time.perf_counter() - t
    mem_predict = peak_rss_mb()
    print(f"predicted H and S in {timings['predict_H_S']:.2f} s: {H.norb} orbitals, {H.nblocks} blocks per "
          f"operator (one triangle); peak memory {mem_predict:.0f} MB (+{mem_predict - base_mb:.0f} MB over the "
          "loaded model)", flush=True)

    t = time.perf_counter()
    e = eigs_near(H, S, sigma, nev=args.nev)
    timings["shift_invert"] = time.perf_counter() - t
    mem_total = peak_rss_mb()
    below, above = e[e <= sigma], e[e > sigma]
    print(f"{args.nev} states nearest {sigma:.3f} eV at Gamma by shift-invert in {timings['shift_invert']:.2f} s "
          f"(peak memory {mem_total:.0f} MB):")
    print("  " + " ".join(f"{x:.4f}" for x in e))
    gap = float(above.min() - below.max()) if len(below) and len(above) else None
    if gap is not None:
        print(f"  highest below sigma {below.max():.4f} eV, lowest above {above.min():.4f} eV: gap {gap:.4f} eV")
    for k, v in timings.items():
        print(f"  {k:28s} {v:8.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "atoms": len(atoms), "orbitals": int(H.norb), "blocks": int(H.nblocks), "model": str(model),
            "sigma_eV": float(sigma), "eigenvalues_eV": e.tolist(), "gap_eV": gap, "timings_s": timings,
            "peak_rss_mb": {"model_loaded": base_mb, "after_prediction": mem_predict, "end": mem_total},
        }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Density of states of bulk silicon, total and projected on s, p and d, from a SLEM model.

The shipped model (``si_pbe_dzvp``: PBE, gth-dzvp-molopt-sr, gth-pbe, 4 valence electrons per
atom) predicts H(R) and S(R) of the 2-atom diamond cell; the bands are solved on a k-point mesh
reduced by symmetry (spglib) and the DOS is integrated with the linear tetrahedron method on the
full mesh, so the integrated DOS counts electrons exactly.  PDOS per angular momentum uses
Mulliken weights (they add up to the total DOS).

Printed: the Fermi level (mid-gap for an insulator), the band gap on the mesh (VBM, CBM and the
k-points where they sit) and along seekpath's band path (the conduction-band minimum of silicon
lies on Gamma-X, between mesh points), the electron count below E_F from the integrated DOS,
and the time of each step.  Written: the figure (``-o``, PNG) and, beside it with the suffix
``.json``, the numbers (energies in eV, DOS in states/eV per 2-atom cell, spin included).

    python examples/si_dos.py -o si_dos.png
    python examples/si_dos.py --mesh 16 16 16 --emin -6 --emax 6 -o si_dos_fine.png
    python examples/si_dos.py --model path/to/my_model.pt --overlap exact -o si_dos.png

The model is looked up by name in $ASE_SLEM_MODELS and then in models/ (or give a path).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from ase.build import bulk  # noqa: E402

from ase_slem import dos  # noqa: E402
from ase_slem.plotting import plot_dos  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", default="si_dos.png",
                   help="figure to write (PNG); the numbers go to the same name with .json (default si_dos.png)")
    p.add_argument("--model", default="si_pbe_dzvp",
                   help="shipped model name or path to a .pt model file (default si_pbe_dzvp)")
    p.add_argument("--lattice", type=float, default=5.431,
                   help="cubic lattice constant of diamond Si, Å (default 5.431)")
    p.add_argument("--mesh", type=int, nargs=3, default=(12, 12, 12), metavar=("N1", "N2", "N3"),
                   help="k-point mesh along the reciprocal vectors of the primitive cell (default 12 12 12)")
    p.add_argument("--shift", choices=["gamma", "monkhorst-pack"], default="gamma",
                   help="Gamma-centred mesh (default: contains Gamma, where the VBM is) or shifted Monkhorst-Pack")
    p.add_argument("--npts", type=int, default=1201, help="points of the DOS energy grid (default 1201)")
    p.add_argument("--emin", type=float, default=-13.0, help="lower end of the plotted window, eV relative to E_F")
    p.add_argument("--emax", type=float, default=8.0, help="upper end of the plotted window, eV relative to E_F")
    p.add_argument("--overlap", choices=["model", "exact"], default="model",
                   help="the model's overlap, or exact two-centre integrals of its Gaussian basis (PySCF)")
    return p.parse_args(argv)


def gap_along_path(calc, n_electrons: float, npoints: int = 200) -> dict[str, Any]:
    """Band edges along seekpath's path: {"gap_eV", "vbm_eV", "cbm_eV", "k_vbm", "k_cbm"} (k fractional)."""
    from ase_slem import band_gap

    bs = calc.band_structure(npoints=npoints)
    g = band_gap(bs.energies[0], n_electrons)
    kpts = bs.path.kpts
    return {"gap_eV": float(g.gap), "direct_gap_eV": float(g.direct_gap), "vbm_eV": float(g.vbm),
            "cbm_eV": float(g.cbm), "k_vbm": kpts[g.k_vbm].tolist(), "k_cbm": kpts[g.k_cbm].tolist(),
            "npoints": npoints}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from ase_slem import SLEMCalculator
    from ase_slem.model_file import ModelFileError

    timings: dict[str, float] = {}
    t = time.perf_counter()
    try:
        calc = SLEMCalculator(args.model, overlap=args.overlap)
    except ModelFileError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    timings["load_model"] = time.perf_counter() - t
    atoms = bulk("Si", "diamond", a=args.lattice)
    atoms.calc = calc

    t = time.perf_counter()
    H, S = calc.get_hamiltonian(), calc.get_overlap()
    n_el = calc.get_number_of_electrons()
    timings["predict_H_S"] = time.perf_counter() - t
    print(f"model {calc.model.path}: {H.norb} orbitals per cell, {H.nblocks} blocks of H (one triangle), "
          f"{n_el:g} valence electrons", flush=True)

    t = time.perf_counter()
    res = dos(H, S, atoms, mesh=tuple(args.mesh), shift=args.shift, method="tetrahedron", npts=args.npts,
              n_electrons=n_el, pdos="l")
    timings["dos_pdos_tetrahedron"] = time.perf_counter() - t
    km, gap, ef = res.kmesh, res.gap, float(res.fermi_level)
    n_below = float(np.interp(ef, res.egrid, res.idos))
    pdos_sum = sum(res.pdos.values())
    print(f"{'x'.join(map(str, km.mesh))} mesh ({args.shift}): {km.nirr} irreducible of {km.nk} k-points, "
          f"tetrahedron DOS on {len(res.egrid)} energies")
    print(f"Fermi level {ef:.4f} eV; electrons below it from the integrated DOS {n_below:.4f} (of {n_el:g})")
    print(f"gap on the mesh {gap.gap:.4f} eV ({'direct' if gap.direct else 'indirect'}; direct gap "
          f"{gap.direct_gap:.4f} eV): VBM {gap.vbm:.4f} eV at k = {np.round(km.kpts[gap.k_vbm], 4).tolist()}, "
          f"CBM {gap.cbm:.4f} eV at k = {np.round(km.kpts[gap.k_cbm], 4).tolist()}")

    t = time.perf_counter()
    path_gap = gap_along_path(calc, n_el)
    timings["gap_along_path"] = time.perf_counter() - t
    print(f"gap along the seekpath path {path_gap['gap_eV']:.4f} eV: VBM at k = "
          f"{np.round(path_gap['k_vbm'], 4).tolist()}, CBM at k = {np.round(path_gap['k_cbm'], 4).tolist()}")

    t = time.perf_counter()
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    label = calc.model.metadata.get("name", calc.model.path.stem)
    ax = plot_dos(res.egrid, res.dos, res.pdos, reference=ef, emin=args.emin, emax=args.emax,
                  title=f"Si DOS / PDOS: SLEM {label}, {'x'.join(map(str, km.mesh))} mesh, tetrahedron")
    ax.figure.savefig(out, dpi=150, bbox_inches="tight")
    timings["plot"] = time.perf_counter() - t

    numbers = {
        "model": str(calc.model.path), "model_name": label, "overlap": args.overlap,
        "lattice_constant_A": args.lattice, "n_electrons": n_el,
        "kmesh": {"mesh": [int(n) for n in km.mesh], "shift": args.shift, "n_irreducible": int(km.nirr),
                  "n_full": int(km.nk)},
        "method": res.method, "fermi_level_eV": ef, "electrons_below_fermi": n_below,
        "gap": {"gap_eV": float(gap.gap), "direct_gap_eV": float(gap.direct_gap), "direct": bool(gap.direct),
                "vbm_eV": float(gap.vbm), "cbm_eV": float(gap.cbm),
                "k_vbm": km.kpts[gap.k_vbm].tolist(), "k_cbm": km.kpts[gap.k_cbm].tolist()},
        "gap_along_path": path_gap,
        "units": {"energy": "eV", "dos": "states/eV per cell (2 atoms), spin degeneracy included",
                  "k": "fractional, reciprocal lattice of the primitive cell"},
        "energies_eV": res.egrid.tolist(), "dos": res.dos.tolist(), "idos": res.idos.tolist(),
        "pdos": {name: curve.tolist() for name, curve in res.pdos.items()},
        "pdos_sum_minus_total_max": float(np.abs(pdos_sum - res.dos).max()),
        "timings_s": timings,
    }
    json_path = out.with_suffix(".json")
    json_path.write_text(json.dumps(numbers, indent=1))
    print(f"wrote {out} and {json_path}")
    for k, v in timings.items():
        print(f"  {k:24s} {v:8.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

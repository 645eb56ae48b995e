"""Time to a molecule's Hamiltonian: a model's prediction against the PySCF SCF it replaces.

    python benchmarks/molecule_speed.py models/ethanol_pbe_svp.pt --data ../data/ethanol_pbe_svp --frames 5

For each of the first ``--frames`` test frames of the model's split (one thread, each step
timed after one warm-up frame), side by side:

1. the network alone (graph, forward pass, blocks to operators);
2. the Hamiltonian baseline H0 where the model has one (one PySCF Fock build of superposed atoms);
3. the model's H as the calculator returns it (1 + 2) and its exact overlap (PySCF integrals);
4. PySCF RKS to convergence with the frame's own settings (functional, basis, grid, conv_tol).

Printed: median seconds per molecule and each step's speed-up over the SCF (SCF time / step time).
``--json PATH`` writes the same figures.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def measure(model_path: str, data: str, n_frames: int) -> dict:
    from ase_slem.exact_overlap import exact_overlap
    from ase_slem.hamiltonian_baseline import hamiltonian_baseline
    from ase_slem.io.dataset import read_frame
    from ase_slem.io.pyscf import molecular_operators
    from ase_slem.model_file import load_model, predict
    from ase_slem.orbitals import radial_basis_from_dict

    torch.set_num_threads(1)
    model = load_model(model_path)
    meta = model.metadata
    baseline = meta.get("hamiltonian_baseline")
    radial = radial_basis_from_dict(meta["basis"]["radial"])
    names = meta["training"]["split"]["test"][: n_frames + 1]
    rows = {"network": [], "baseline": [], "overlap (exact)": [], "SCF (PySCF)": []}
    for k, name in enumerate(names):
        fr = read_frame(Path(data) / name)
        s = fr.settings
        _, t_net = _timed(lambda: predict(model, fr.atoms, baseline=False))
        t_base = _timed(lambda: hamiltonian_baseline(fr.atoms, baseline))[1] if baseline else 0.0
        _, t_ovl = _timed(lambda: exact_overlap(fr.atoms, radial, basis=model.basis))
        _, t_scf = _timed(lambda: molecular_operators(fr.atoms, s["xc"], s["basis"], conv_tol=s["conv_tol"],
                                                      grids_level=s.get("grids_level")))
        if k == 0:
            continue  # warm-up: PySCF and TorchScript set themselves up on the first call
        for key, t in zip(rows, (t_net, t_base, t_ovl, t_scf)):
            rows[key].append(t)
    med = {k: float(np.median(v)) for k, v in rows.items()}
    med["model H (network + baseline)"] = med["network"] + med["baseline"]
    return {"model": str(model_path), "frames": len(rows["network"]), "baseline": baseline,
            "median_seconds": med, "threads": 1}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--data", required=True)
    ap.add_argument("--frames", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    res = measure(args.model, args.data, args.frames)
    med = res["median_seconds"]
    scf = med["SCF (PySCF)"]
    print(f"{res['model']}: {res['frames']} test molecules, one thread, median seconds per molecule")
    print(f"{'step':32s} {'seconds':>9s} {'SCF / step':>11s}")
    for key in ("network", "baseline", "model H (network + baseline)", "overlap (exact)", "SCF (PySCF)"):
        if key == "baseline" and not res["baseline"]:
            continue
        print(f"{key:32s} {med[key]:9.3f} {scf / med[key]:11.1f}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

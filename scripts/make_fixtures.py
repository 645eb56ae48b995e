"""Write tests/fixtures/<model>.json: held-out structures with their DFT reference energies.

    python scripts/make_fixtures.py si_pbe_dzvp --data ../data/si_pbe_dzvp [--n 3]

Takes the first ``n`` frames of the model's recorded test split (frames training never saw) and
stores, per frame, the structure and the DFT energies of its own operators: for crystals the
band energies (eV) at the seekpath path's special points plus 8 random k, for molecules the
orbital energies (eV).  A few kB instead of the frames' megabytes, and enough for
``tests/test_shipped_models.py`` to check the shipped model against DFT.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def fixture(model: str, data: str, n: int) -> dict:
    from ase_slem import band_energies
    from ase_slem.bands import band_path
    from ase_slem.io.dataset import read_frame
    from ase_slem.model_file import read_metadata, resolve_model_path

    meta = read_metadata(resolve_model_path(model))
    names = meta["training"]["split"]["test"][:n]
    rng = np.random.default_rng(0)
    out = {"model": meta["name"], "dft_settings": meta.get("dft_settings", {}), "frames": []}
    for name in names:
        fr = read_frame(Path(data) / name)
        a = fr.atoms
        if a.pbc.any():
            path = band_path(a, npoints=2)
            special = np.array(list(path.special_points.values()))
            k = np.concatenate([special, rng.uniform(-0.5, 0.5, (8, 3))])
        else:
            k = np.zeros((1, 3))
        e = band_energies(fr.operators["hamiltonian"], fr.operators["overlap"], k)
        out["frames"].append({
            "name": name, "symbols": a.get_chemical_symbols(), "positions": a.positions.tolist(),
            "cell": np.asarray(a.cell[:]).tolist(), "pbc": a.pbc.tolist(), "nelectron": int(fr.results["nelectron"]),
            "kpts": k.tolist(), "energies_eV": e.tolist(),
        })
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--data", required=True)
    p.add_argument("--n", type=int, default=3)
    args = p.parse_args(argv)
    res = fixture(args.model, args.data, args.n)
    dest = ROOT / "tests" / "fixtures" / f"{res['model']}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    tmp.write_text(json.dumps(res))
    tmp.replace(dest)
    print(f"wrote {dest} ({len(res['frames'])} frames)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

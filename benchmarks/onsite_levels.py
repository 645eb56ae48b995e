"""How an atom's onsite level follows its bonds, in the DFT references and in a model.

    python benchmarks/onsite_levels.py models/si_pbe_dzvp.pt --data ../data/converged/si_pbe_dzvp \\
        --frames frame.000149 frame.000155 frame.000161 frame.000167 frame.000144 frame.000145

An atom's *onsite level* is the mean of the diagonal of its onsite Hamiltonian block (eV); its
*bond length* is the mean distance to its nearest neighbours (those within ``--shell`` times its
shortest distance, Å).  Per group of cells of one size, printed for the DFT references and for the
model's predicted H:

* across cells: the slope (eV/Å) of each cell's mean level against its mean bond length;
* within cells: the slope of each atom's level minus its cell's mean against its bond length
  minus its cell's mean, and the R² of that straight line through the DFT levels;
* the MAE (meV) of the model's levels, and of their deviations from their cell's mean.

Why: the energy zero of a periodic Kohn-Sham Hamiltonian is the cell-averaged potential, so when
a whole cell is compressed its levels move one way, while in a rattled cell an atom with short
bonds moves the other way relative to its neighbours.  A model that learned the first from
strained small cells can miss the second (silicon, 2026-12-05: +6.1 eV/Å within rattled cubes
against -7.1 eV/Å across strained two-atom cells).
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np


def bond_lengths(atoms, shell: float = 1.15) -> np.ndarray:
    """Mean distance (Å) from each atom to its neighbours within ``shell`` times its shortest
    distance; ``(N,)``.  Periodic images count (ase.neighborlist)."""
    from ase.neighborlist import neighbor_list

    pos = atoms.get_positions()
    span = np.ptp(pos, axis=0).max() if len(atoms) > 1 else 0.0
    cutoff = 6.0 if atoms.pbc.any() else max(6.0, span + 1.0)
    i, d = neighbor_list("id", atoms, cutoff)
    if len(i) == 0 or len(np.unique(i)) < len(atoms):
        raise ValueError(f"an atom has no neighbour within {cutoff} Å; bond lengths need neighbours")
    nearest = np.full(len(atoms), np.inf)
    np.minimum.at(nearest, i, d)
    inner = d <= shell * nearest[i]
    return np.bincount(i[inner], weights=d[inner], minlength=len(atoms)) / np.bincount(i[inner], minlength=len(atoms))


def onsite_levels(blocks: np.ndarray, norb: np.ndarray) -> np.ndarray:
    """Mean diagonal element of each onsite block: ``blocks`` ``(N, M, M)`` padded to M,
    ``norb`` ``(N,)`` real orbitals of each atom; returns ``(N,)`` in the blocks' unit."""
    diag = np.diagonal(blocks, axis1=1, axis2=2)
    real = np.arange(blocks.shape[1])[None, :] < np.asarray(norb)[:, None]
    return (diag * real).sum(1) / real.sum(1)


def line_fit(x: np.ndarray, y: np.ndarray, tol: float = 1e-8) -> tuple[float, float]:
    """(slope, R²) of the least-squares line y = a x + b (nan when x varies by less than ``tol``:
    the atoms of a symmetric cell have equal bond lengths up to rounding)."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    if len(x) < 2 or np.ptp(x) < tol:
        return float("nan"), float("nan")
    a, b = np.polyfit(x, y, 1)
    res = y - (a * x + b)
    var = y.var()
    return float(a), float(1.0 - res.var() / var) if var > 0 else float("nan")


def summarize(cells: list[dict]) -> dict:
    """Per cell size: slopes and errors (see the module docstring) from ``cells``, each
    ``{"r": (N,) Å, "dft": (N,) eV, "model": (N,) eV}``."""
    out: dict = {}
    for n in sorted({len(c["r"]) for c in cells}):
        group = [c for c in cells if len(c["r"]) == n]
        mean = {k: np.array([c[k].mean() for c in group]) for k in ("r", "dft", "model")}
        dev = {k: np.concatenate([c[k] - c[k].mean() for c in group]) for k in ("r", "dft", "model")}
        allv = {k: np.concatenate([c[k] for c in group]) for k in ("dft", "model")}
        within_dft, r2 = line_fit(dev["r"], dev["dft"]) if n > 1 else (float("nan"), float("nan"))
        out[n] = {
            "cells": len(group),
            "across slope dft": line_fit(mean["r"], mean["dft"])[0],
            "across slope model": line_fit(mean["r"], mean["model"])[0],
            "within slope dft": within_dft,
            "within R2 dft": r2,
            "within slope model": line_fit(dev["r"], dev["model"])[0] if n > 1 else float("nan"),
            "level MAE meV": float(np.abs(allv["model"] - allv["dft"]).mean() * 1e3),
            "deviation MAE meV": float(np.abs(dev["model"] - dev["dft"]).mean() * 1e3) if n > 1 else float("nan"),
        }
    return out


def collect(model_path: str, data: str, names: list[str], shell: float = 1.15) -> list[dict]:
    """``{"name", "r", "dft", "model"}`` per frame: bond lengths and onsite levels (eV)."""
    import torch

    from ase_slem.io.dataset import read_frame
    from ase_slem.model_file import load_model
    from ase_slem.train.data import make_sample

    model = load_model(model_path)
    if "hamiltonian" not in model.operators:
        raise SystemExit(f"{model_path} does not predict the hamiltonian")
    cells = []
    for name in names:
        frame = read_frame(Path(data) / name)
        s = make_sample(frame, name, model.symbols, model.max_norb, model.r_graph, model.r_bond,
                        model.operators, model.torch_dtype)
        with torch.no_grad():
            pred = model.module(*s.inputs())["hamiltonian_onsite"].double().numpy()
        norb = np.array([model.orbital_counts[el] for el in frame.atoms.get_chemical_symbols()])
        target = s.targets["hamiltonian"][0].double().numpy()
        cells.append({"name": name, "r": bond_lengths(frame.atoms, shell),
                      "dft": onsite_levels(target, norb), "model": onsite_levels(pred, norb)})
    return cells


def markdown(summary: dict) -> str:
    rows = [("cells", "cells", "{:d}"),
            ("across cells: slope of the mean level, DFT / model (eV/Å)", ("across slope dft", "across slope model"), "{:+.2f} / {:+.2f}"),
            ("within cells: slope of an atom's level, DFT / model (eV/Å)", ("within slope dft", "within slope model"), "{:+.2f} / {:+.2f}"),
            ("within cells: R² of the DFT line", "within R2 dft", "{:.3f}"),
            ("MAE of the model's levels (meV)", "level MAE meV", "{:.1f}"),
            ("MAE of their deviations from the cell mean (meV)", "deviation MAE meV", "{:.1f}")]
    sizes = list(summary)
    lines = ["| quantity | " + " | ".join(f"{n}-atom cells" for n in sizes) + " |",
             "|---|" + "---|" * len(sizes)]
    for label, key, fmt in rows:
        vals = []
        for n in sizes:
            s = summary[n]
            v = fmt.format(*(s[k] for k in key)) if isinstance(key, tuple) else fmt.format(s[key])
            vals.append(re.sub(r"[+-]?nan", "—", v))
        lines.append(f"| {label} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--data", required=True, help="dataset folder of frames")
    p.add_argument("--frames", nargs="+", required=True, help="frame folder names (cells of any sizes)")
    p.add_argument("--shell", type=float, default=1.15,
                   help="nearest neighbours: within this factor of an atom's shortest distance (default 1.15)")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    print(markdown(summarize(collect(a.model, a.data, a.frames, a.shell))))
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Regenerate the training sets of the shipped models (DESIGN.md settings), resumably.

    python scripts/make_training_sets.py si        [--out ../data] [--workers 2]
    python scripts/make_training_sets.py water     [--frames 500]
    python scripts/make_training_sets.py ethanol
    python scripts/make_training_sets.py all
    python scripts/make_training_sets.py si --frames 144 --kinds primitive2_strained   # only the 2-atom cells
    python scripts/make_training_sets.py si --settings configs/data/si_pbe_dzvp_converged.yaml --out ../data/converged
    python scripts/make_training_sets.py si --frames 168 --only 2 4 10 144-148   # only these (frame numbers kept)

Each set is ``OUT/<model name>/``: ``structures.extxyz`` (the sampled geometries, written once
from a fixed seed, so a rerun computes the same frames), ``frame.NNNNNN/`` (one per structure,
written atomically; existing frames are skipped, so an interrupted run continues where it
stopped), ``generation.jsonl`` (time per frame) and ``failed.jsonl``.  DFT settings are read
from ``configs/data/<model name>.yaml``.

Structures:

* ``si_pbe_dzvp``: 2-atom primitive diamond cells (a0 = 5.431 Å) under a random symmetric strain
  (components within +-3%) rattled as an Einstein solid at 300-900 K, plus 8-atom cubic cells
  (unstrained, a0) rattled at 300-900 K; every sixth structure is a cubic cell.
* ``water_pbe_svp`` / ``ethanol_pbe_svp``: the PBE/def2-svp equilibrium geometry (pinned in
  ``configs/data/NAME.equilibrium.json`` with its Hessian where that file exists, else relaxed
  once and cached as ``equilibrium.json``), distorted along all normal modes at a classical
  temperature drawn from 100-1000 K, then rotated at random.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk, molecule
from ase.io import read, write

from ase_slem.io.generate import generate_dataset, load_settings
from ase_slem.io.sampling import (einstein_displacements, harmonic_modes, normal_mode_displacements,
                                  random_rotation, random_strain)

ROOT = Path(__file__).resolve().parents[1]
SETS = {"si": "si_pbe_dzvp", "water": "water_pbe_svp", "ethanol": "ethanol_pbe_svp"}
DEFAULT_FRAMES = {"si_pbe_dzvp": 72, "water_pbe_svp": 500, "ethanol_pbe_svp": 500}
SEEDS = {"si_pbe_dzvp": 20261202, "water_pbe_svp": 1, "ethanol_pbe_svp": 2}
A0_SI = 5.431


def silicon_structures(n: int, seed: int) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        cubic = k % 6 == 5
        a = bulk("Si", "diamond", a=A0_SI, cubic=cubic)
        if not cubic:
            a.set_cell(a.cell[:] @ random_strain(rng, 0.03), scale_atoms=True)
        t = rng.uniform(300.0, 900.0)
        a.positions += einstein_displacements(a, t, rng)
        a.wrap()
        a.info["temperature_K"] = float(t)
        a.info["kind"] = "cubic8" if cubic else "primitive2_strained"
        out.append(a)
    return out


def equilibrium(name: str, folder: Path, settings) -> tuple[Atoms, np.ndarray]:
    """The PBE/def2-svp minimum and its Hessian: the pinned copy in ``configs/data/NAME.equilibrium.json``
    when there is one (so every regeneration samples the same structures: a fresh BFGS relaxation
    lands a few 1e-4 Å elsewhere, and that moves every sampled frame), else the dataset's cached
    one, else a new relaxation."""
    from ase_slem.io.pyscf import molecular_minimum

    pinned = ROOT / "configs" / "data" / f"{name}.equilibrium.json"
    cache = folder / "equilibrium.json"
    for source in (pinned, cache):
        if source.is_file():
            d = json.loads(source.read_text())
            return Atoms(d["symbols"], positions=d["positions"]), np.asarray(d["hessian_eV_per_A2"])
    start = molecule({"water_pbe_svp": "H2O", "ethanol_pbe_svp": "CH3CH2OH"}[name])
    print(f"{name}: relaxing the {start.get_chemical_formula()} geometry and computing its Hessian (PBE/def2-svp) ...",
          flush=True)
    atoms, hess = molecular_minimum(start, settings.xc, settings.basis)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps({"symbols": atoms.get_chemical_symbols(), "positions": atoms.positions.tolist(),
                               "hessian_eV_per_A2": hess.tolist()}))
    tmp.replace(cache)
    return atoms, hess


def molecule_structures(eq: Atoms, hess: np.ndarray, n: int, seed: int) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    masses = eq.get_masses()
    k, modes = harmonic_modes(hess, masses)
    out = []
    for _ in range(n):
        t = rng.uniform(100.0, 1000.0)
        pos = eq.positions + normal_mode_displacements(masses, k, modes, t, rng)
        pos = (pos - pos.mean(axis=0)) @ random_rotation(rng).T
        a = Atoms(eq.get_chemical_symbols(), positions=pos)
        a.info["temperature_K"] = float(t)
        out.append(a)
    return out


def make(name: str, out_root: Path, n_frames: int | None, workers: int, threads: int | None = None,
         kinds: list[str] | None = None, retry_failed: bool = False, settings_file: Path | None = None,
         only: list[int] | None = None) -> None:
    settings = load_settings(settings_file or ROOT / "configs" / "data" / f"{name}.yaml")
    folder = out_root / name
    structures_file = folder / "structures.extxyz"
    n = n_frames or DEFAULT_FRAMES[name]
    if structures_file.is_file():
        structures = read(structures_file, ":")
        if len(structures) < n:  # extend with the same seed: the first structures stay the same
            structures = None
    else:
        structures = None
    if structures is None:
        if name == "si_pbe_dzvp":
            structures = silicon_structures(n, SEEDS[name])
        else:
            eq, hess = equilibrium(name, folder, settings)
            structures = molecule_structures(eq, hess, n, SEEDS[name])
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / ".structures.extxyz"
        write(tmp, structures, format="extxyz")
        tmp.replace(structures_file)
    structures = structures[:n]
    indices = None
    if kinds:
        have = sorted({a.info.get("kind", "") for a in structures})
        unknown = sorted(set(kinds) - set(have))
        if unknown:
            raise SystemExit(f"{name}: no structures of kind {unknown}; its kinds are {have}")
        indices = [k for k, a in enumerate(structures) if a.info.get("kind") in kinds]
    if only is not None:
        outside = sorted(k for k in only if not 0 <= k < len(structures))
        if outside:
            raise SystemExit(f"{name}: --only {outside[:5]} outside the {len(structures)} structures "
                             f"(0..{len(structures) - 1}); raise --frames")
        indices = sorted(set(only) & set(indices if indices is not None else range(len(structures))))
    report = generate_dataset(structures, settings, folder, workers=workers, threads_per_worker=threads,
                              indices=indices, retry_failed=retry_failed)
    print(f"{name}: {len(report.written)} frames written, {len(report.skipped)} already there, "
          f"{len(report.failed)} failed, {report.seconds:.0f} s -> {folder}", flush=True)


def frame_numbers(text: str) -> list[int]:
    """Structure numbers from ``"2,4 10-12"``: ``[2, 4, 10, 11, 12]`` (ranges inclusive)."""
    out = []
    for part in text.replace(",", " ").split():
        lo, _, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not a structure number or range N-M") from None
        if b < a:
            raise argparse.ArgumentTypeError(f"range {part!r} runs backwards; write {b}-{a}")
        out.extend(range(a, b + 1))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("which", choices=[*SETS, "all"])
    p.add_argument("--out", default=str(ROOT.parent / "data"), help="folder holding the datasets (default ../data)")
    p.add_argument("--frames", type=int, help="number of frames (default: si 72, molecules 500)")
    p.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    p.add_argument("--threads", type=int, help="threads per process (default: cores / workers); with other jobs "
                                                "running, 1 avoids OpenMP oversubscription")
    p.add_argument("--kinds", nargs="+", metavar="KIND",
                   help="compute only structures of these kinds (si: primitive2_strained, cubic8); the others "
                        "keep their frame numbers and can be filled in by a later run")
    p.add_argument("--only", type=frame_numbers, nargs="+", metavar="N[-M]",
                   help="compute only these structures (numbers and inclusive ranges, e.g. '2 4 144-167'); "
                        "with --kinds, those of them of these kinds")
    p.add_argument("--retry-failed", action="store_true",
                   help="compute again the structures failed.jsonl records (left out by default)")
    p.add_argument("--settings", type=Path,
                   help="DFT settings file instead of configs/data/<name>.yaml (one set only; write to another "
                        "--out so that frames of different settings never share a folder)")
    args = p.parse_args(argv)
    names = list(SETS.values()) if args.which == "all" else [SETS[args.which]]
    if args.settings and len(names) > 1:
        raise SystemExit("--settings applies to one set; name it (si, water or ethanol) instead of 'all'")
    if args.settings and Path(args.out).resolve() == (ROOT.parent / "data").resolve():
        raise SystemExit(f"--settings {args.settings} with the default --out would mix its frames into the shipped "
                         "sets' folders; pass --out (e.g. ../data/converged)")
    for name in names:
        make(name, Path(args.out), args.frames, args.workers, args.threads, args.kinds, args.retry_failed,
             args.settings, [n for part in args.only for n in part] if args.only else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())

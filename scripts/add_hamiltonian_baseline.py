"""Add the Hamiltonian baseline H0 (``ase_slem.hamiltonian_baseline``) to every frame of a molecular dataset.

    python scripts/add_hamiltonian_baseline.py ../data/ethanol_pbe_svp [--kind minao] [--workers 2]

H0 is computed with each frame's own DFT settings (functional, basis, grid level, from its
info.json) and written as ``hamiltonian_baselines.h5`` in the frame folder, atomically.  Frames
that already have the file are skipped, so an interrupted run continues where it stopped.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm


def _one(folder: str, kind: str) -> float:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from ase_slem.hamiltonian_baseline import baseline_settings, hamiltonian_baseline
    from ase_slem.io.deeptb import add_operator
    from ase_slem.io.dataset import read_frame

    t0 = time.perf_counter()
    frame = read_frame(folder)
    s = frame.settings
    settings = baseline_settings(kind, s["xc"], s["basis"], s.get("grids_level"))
    add_operator(folder, "hamiltonian_baseline", hamiltonian_baseline(frame.atoms, settings))
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--kind", default="minao")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args(argv)
    from ase_slem.io.dataset import frame_paths

    todo = [p for p in frame_paths(args.dataset) if not (p / "hamiltonian_baselines.h5").exists()]
    print(f"{len(todo)} frame(s) of {args.dataset} without a baseline", flush=True)
    times = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        jobs = [pool.submit(_one, str(p), args.kind) for p in todo]
        for job in tqdm(as_completed(jobs), total=len(jobs), mininterval=10):
            times.append(job.result())
    if times:
        print(f"done: {len(times)} frames, {sum(times) / len(times):.2f} s per frame", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Data efficiency: train the same config on 20/40/60/80/100 % of the training frames.

Validation and test frames stay the same for every fraction, and the smaller training sets
are nested in the larger ones (``data.train_fraction``, see ``ase_slem.train.data.split_indices``),
as in the SLEM paper's Table 5.  Each fraction trains in its own run folder
(``<output-root>/<name>_f<percent>``); ``--resume`` continues unfinished runs.  Prints the test
MAE per operator (H in meV, per block type) for each fraction.

    python benchmarks/data_efficiency.py configs/si_pbe_dzvp.yaml [--fractions 0.2 0.4 0.6 0.8 1.0]
        [--steps N] [--threads N] [--output-root runs/data_efficiency] [--resume] [--json out.json]

Full-scale runs take hours on 2 cores: run them with ``nice`` in the background.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ase_slem.train.config import config_from_dict, load_config
from ase_slem.train.loop import load_frames, train


def run(config_path: str, fractions, steps=None, output_root=None, resume=False, progress=False, threads=None):
    base = load_config(config_path)
    frames, names = load_frames(base.data.path, base.data.max_frames, base.data.exclude)
    root = Path(output_root) if output_root else Path(base.output).parent / "data_efficiency"
    rows = []
    for f in fractions:
        d = base.to_dict()
        d["data"]["train_fraction"] = float(f)
        d["output"] = str(root / f"{base.name}_f{round(100 * f):03d}")
        if steps is not None:
            d["train"]["steps"] = int(steps)
            d["train"]["warmup_steps"] = min(d["train"]["warmup_steps"], int(steps) // 10)
        if threads is not None:
            d["train"]["num_threads"] = int(threads)
        d["train"]["progress"] = progress
        cfg = config_from_dict(d)
        done = (Path(cfg.output) / "checkpoints" / "last.pt").exists()
        t0 = time.perf_counter()
        res = train(cfg, frames=frames, frame_names=names, resume=resume and done,
                    log=lambda msg: None)
        from ase_slem.train.checkpoint import load_checkpoint

        state = load_checkpoint(res.checkpoint)
        rows.append({"fraction": f, "train_frames": len(state["dataset"]["split"]["train"]),
                     "test_frames": len(state["dataset"]["split"]["test"]), "steps": res.step,
                     "wall_s": time.perf_counter() - t0, "test": res.test, "validation": res.validation,
                     "run": cfg.output})
        print_row(rows[-1], header=len(rows) == 1)
    return rows


def print_row(r, header=False):
    ops = list(r["test"] or r["validation"])
    if header:
        cols = ["fraction", "train", "steps"]
        for op in ops:
            cols.append(f"{op} [{(r['test'] or r['validation'])[op]['unit']}]")
        print("  ".join(f"{c:>22s}" if k >= 3 else f"{c:>8s}" for k, c in enumerate(cols)))
    res = r["test"] or r["validation"]
    cells = [f"{r['fraction']:8.2f}", f"{r['train_frames']:8d}", f"{r['steps']:8d}"]
    for op in ops:
        cells.append(f"{res[op]['all']:22.4g}")
    print("  ".join(cells), flush=True)
    for op in ops:
        detail = ", ".join(f"{k} {v:.4g}" for k, v in res[op].items() if k not in ("unit", "all"))
        print(f"{'':28s}{op}: {detail}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="training config (.yaml/.toml)")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.2, 0.4, 0.6, 0.8, 1.0])
    p.add_argument("--steps", type=int, help="override train.steps (same for every fraction)")
    p.add_argument("--output-root", help="folder of the runs (default: beside the config's output)")
    p.add_argument("--resume", action="store_true", help="continue runs that have a checkpoint")
    p.add_argument("--progress", action="store_true", help="show progress bars")
    p.add_argument("--threads", type=int, help="override train.num_threads")
    p.add_argument("--json", help="write the table as JSON here")
    args = p.parse_args()
    if any(not 0 < f <= 1 for f in args.fractions):
        p.error("fractions must lie in (0, 1]")
    rows = run(args.config, args.fractions, args.steps, args.output_root, args.resume, args.progress, args.threads)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"config": args.config, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()

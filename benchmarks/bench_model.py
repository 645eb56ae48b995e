"""Training-step and inference cost of the SLEM network on silicon cells.

Untrained model with the ``model`` section of ``configs/si_pbe_dzvp.yaml`` (gth-dzvp-sized
basis 2s2p1d: 13 orbitals per atom, H + S + D heads), rattled diamond silicon (a = 5.43 Å).
For each cell size, in a fresh process (so that peak memory is that of one measurement):

- train step: forward + normalized loss (random targets) + backward + AdamW step
- inference:  ``ase_slem.model_file.predict`` on the exported TorchScript file (graph, network,
  RealSpaceOperators), and the network call alone, with the runtime's runs of EDGE_CHUNK edges
  per layer and (baseline) with all edges at once

wall time (best of ``--repeat``), atoms per second, and peak resident memory added by the
measurement (Linux VmHWM after resetting it).  The inference times of ``--scaling`` sizes are
fitted with t = a + b N and log t = c + s log N: strict locality makes the cost linear in the
number of atoms (s close to 1).  Run on all edges at once, the per-edge cost grows with the
cell (the full-size intermediates outgrow the CPU caches); in runs of edges it does not.

    python benchmarks/bench_model.py [--sizes 64 512] [--scaling 64 128 216 512] [--threads 1]
                                     [--repeat 2] [--no-train] [--large 4096 10648] [--json out.json]

``--large`` cells are measured with ``predict`` alone, once (the network in chunks of at most
``model_file.MAX_EDGES`` edges, as the calculator runs it); they join the scaling fit.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REPS = {8: (1, 1, 1), 16: (2, 1, 1), 32: (2, 2, 1), 64: (2, 2, 2), 128: (4, 2, 2), 216: (3, 3, 3),
        256: (4, 4, 2), 512: (4, 4, 4), 1000: (5, 5, 5), 1728: (6, 6, 6), 4096: (8, 8, 8),
        10648: (11, 11, 11)}
BASIS = {"Si": [0, 0, 1, 1, 2]}


def silicon(natoms: int, seed: int = 0):
    from ase.build import bulk

    if natoms not in REPS:
        raise SystemExit(f"cell size {natoms} not available; choose from {sorted(REPS)}")
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(REPS[natoms])
    atoms.rattle(0.05, seed=seed)
    return atoms


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _measure(fn, repeat: int):
    """(best wall time s, peak extra memory MB) of ``fn()``."""
    times = []
    _reset_peak()
    base = _rss_kb("VmRSS")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    peak = _rss_kb("VmHWM")
    return min(times), max(peak - base, 0) / 1024.0


def _build(config_path: str, natoms_for_stats: int = 64):
    import torch

    from ase_slem.nn.graph import build_graph
    from ase_slem.train.checkpoint import build_model
    from ase_slem.train.config import load_config

    cfg = load_config(config_path)
    m = cfg.model
    g = build_graph(silicon(natoms_for_stats), ["Si"], m.r_cut)
    torch.manual_seed(0)
    args = dict(basis=BASIS, r_cut=m.r_cut, channels=m.channels, lmax=m.lmax, n_layers=m.n_layers,
                num_radial=m.num_radial, latent_dim=m.latent_dim, mlp_hidden=m.mlp_hidden,
                avg_num_neighbors=g.edge_index.shape[1] / natoms_for_stats, res_alpha=m.res_alpha,
                operators=["hamiltonian", "overlap", "density_matrix"])
    return cfg, build_model(args, cfg.train.dtype)


def worker(kind: str, natoms: int, config_path: str, threads: int, repeat: int, queue) -> None:
    """One measurement in a fresh process; puts a result dict on ``queue``."""
    import torch

    torch.set_num_threads(threads)
    try:
        cfg, model = _build(config_path)
        atoms = silicon(natoms)
        res = {"kind": kind, "natoms": natoms, "threads": threads,
               "n_parameters": sum(p.numel() for p in model.parameters())}
        if kind == "train":
            res.update(_train_step(cfg, model, atoms, repeat))
        elif kind == "predict":
            res.update(_predict_only(model, atoms))
        else:
            res.update(_inference(cfg, model, atoms, repeat))
        queue.put(res)
    except Exception as exc:  # noqa: BLE001 - reported in the table
        queue.put({"kind": kind, "natoms": natoms, "error": f"{type(exc).__name__}: {exc}"[:300]})


def _train_step(cfg, model, atoms, repeat):
    import torch

    from ase_slem.nn.graph import build_graph
    from ase_slem.train.checkpoint import default_dtype
    from ase_slem.train.data import OperatorNormalizer, Sample, normalized_loss_terms

    dt = next(model.parameters()).dtype
    g = build_graph(atoms, ["Si"], cfg.model.r_cut, dtype=dt)
    n, p, m = len(atoms), g.bond_index.shape[1], model.max_norb
    gen = torch.Generator().manual_seed(1)
    targets = {}
    for op in model.operators:
        on = torch.randn(n, m, m, generator=gen, dtype=dt)
        targets[op] = (on + on.transpose(1, 2), torch.randn(p, m, m, generator=gen, dtype=dt))
    e = g.bond_index[0]
    sample = Sample("bench", g.positions, g.species, g.edge_index, g.edge_shift, g.bond_index,
                    g.edge_index[0, e], g.edge_index[1, e], targets, {}, [n])
    with default_dtype(dt):
        norms = {op: OperatorNormalizer(BASIS) for op in model.operators}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        out = model(*sample.inputs())
        loss = 0.0
        for op, nm in norms.items():
            mae, mse = normalized_loss_terms(nm, out, sample, op)
            loss = loss + mae + mse
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()

    step()  # warm-up (allocator, first-call overheads)
    t, mem = _measure(step, repeat)
    return {"edges": int(g.edge_index.shape[1]), "bonds": int(p), "time_s": t, "peak_mb": mem,
            "atoms_per_s": len(atoms) / t}


def _inference(cfg, model, atoms, repeat):
    import torch

    from ase_slem.model_file import EDGE_CHUNK, load_model, predict, set_edge_chunk
    from ase_slem.nn.graph import build_graph
    from ase_slem.train.export import export_model, untrained_metadata

    with tempfile.TemporaryDirectory() as tmp:
        path = export_model(model, Path(tmp) / "si.pt", untrained_metadata(model, "bench", periodic=True),
                            check=False)
        loaded = load_model(path)
    g = build_graph(atoms, ["Si"], cfg.model.r_cut, dtype=loaded.torch_dtype)
    args = (g.positions, g.species, g.edge_index, g.edge_shift, g.bond_index)

    def network():
        with torch.inference_mode():
            loaded.module(*args)

    timings = {}
    for chunk in (0, EDGE_CHUNK):  # all edges at once, then the runtime's runs of edges
        set_edge_chunk(loaded, chunk)
        network()  # warm-up (TorchScript profiling runs)
        network()
        timings[chunk] = _measure(network, repeat)
    t, mem = _measure(lambda: predict(loaded, atoms), repeat)  # predict sets EDGE_CHUNK itself
    return {"edges": int(g.edge_index.shape[1]), "bonds": int(g.bond_index.shape[1]), "time_s": t,
            "peak_mb": mem, "network_time_s": timings[EDGE_CHUNK][0], "network_peak_mb": timings[EDGE_CHUNK][1],
            "network_unchunked_time_s": timings[0][0], "network_unchunked_peak_mb": timings[0][1],
            "atoms_per_s": len(atoms) / t}


def _predict_only(model, atoms):
    """``predict`` alone (graph, chunked network, operators), once after two warm-up calls on 8
    atoms: the large-cell measurement, where the all-edges-at-once baseline would not fit."""
    from ase_slem.model_file import load_model, predict
    from ase_slem.train.export import export_model, untrained_metadata

    with tempfile.TemporaryDirectory() as tmp:
        path = export_model(model, Path(tmp) / "si.pt", untrained_metadata(model, "bench", periodic=True),
                            check=False)
        loaded = load_model(path)
    predict(loaded, silicon(8))  # warm-up: TorchScript's first calls profile and optimize the graph
    predict(loaded, silicon(8))
    ops = {}

    def run():
        ops.update(predict(loaded, atoms))

    t, mem = _measure(run, 1)
    process_peak = _rss_kb("VmHWM") / 1024.0  # everything the process held at its peak (torch, model, ...)
    h = ops["hamiltonian"]
    stored = sum(g.data.nbytes for op in ops.values() for g in op.groups)
    return {"edges": 2 * (h.nblocks - len(atoms)), "bonds": h.nblocks - len(atoms), "time_s": t, "peak_mb": mem,
            "operators_mb": stored / 2**20, "process_peak_mb": process_peak, "atoms_per_s": len(atoms) / t}


def run_one(kind, natoms, config, threads, repeat, timeout=3600):
    """Run ``worker`` in a fresh process; a worker that dies (e.g. killed for memory) is
    reported with its exit code instead of being waited for."""
    import queue as queue_mod

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=worker, args=(kind, natoms, config, threads, repeat, q))
    proc.start()
    t0 = time.monotonic()
    res = None
    while res is None:
        try:
            res = q.get(timeout=5)
        except queue_mod.Empty:
            if not proc.is_alive():
                try:  # it may have put its result just before exiting
                    res = q.get(timeout=1)
                except queue_mod.Empty:
                    code = proc.exitcode
                    why = " (killed: out of memory?)" if code == -9 else ""
                    res = {"kind": kind, "natoms": natoms, "error": f"worker exited with code {code}{why}"}
            elif time.monotonic() - t0 > timeout:
                res = {"kind": kind, "natoms": natoms, "error": f"no result after {timeout} s"}
    proc.join(5)
    if proc.is_alive():
        proc.terminate()
    return res


def fit_scaling(rows):
    n = np.array([r["natoms"] for r in rows], float)
    t = np.array([r["time_s"] for r in rows], float)
    slope, _ = np.polyfit(np.log(n), np.log(t), 1)
    b, a = np.polyfit(n, t, 1)
    return {"loglog_slope": float(slope), "per_atom_s": float(b), "offset_s": float(a),
            "sizes": n.astype(int).tolist(), "times_s": t.tolist()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "configs" / "si_pbe_dzvp.yaml"), help="training config (model section)")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 512], help="cells for training and inference")
    p.add_argument("--scaling", type=int, nargs="+", default=[64, 128, 216, 512], help="cells for the inference fit")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--repeat", type=int, default=2, help="best of this many runs")
    p.add_argument("--no-train", action="store_true", help="skip the training-step measurements")
    p.add_argument("--large", type=int, nargs="*", default=[],
                   help="cells measured with predict alone (chunked; no all-at-once baseline), e.g. 4096 10648")
    p.add_argument("--json", help="write the results as JSON here")
    args = p.parse_args()

    rows = []
    print(f"{'what':10s} {'atoms':>6s} {'edges':>7s} {'time s':>9s} {'atoms/s':>9s} {'peak MB':>9s} {'net s':>8s}"
          f" {'net us/edge':>11s} {'unchunked us/edge':>17s} {'speed-up':>8s}")
    kinds = (["train"] if not args.no_train else []) + ["inference"] + (["predict"] if args.large else [])
    sizes = sorted(set(args.sizes) | set(args.scaling))
    todo = {"train": args.sizes, "inference": sizes, "predict": sorted(args.large)}
    for kind in kinds:
        for n in todo[kind]:
            r = run_one(kind, n, args.config, args.threads, args.repeat)
            rows.append(r)
            if "error" in r:
                print(f"{kind:10s} {n:6d}  error: {r['error']}")
                continue
            net = (f"{r['network_time_s']:8.3f} {1e6 * r['network_time_s'] / r['edges']:11.1f}"
                   f" {1e6 * r['network_unchunked_time_s'] / r['edges']:17.1f}"
                   f" {r['network_unchunked_time_s'] / r['network_time_s']:8.2f}"
                   if "network_time_s" in r else "")
            if "operators_mb" in r:
                net = f"  (process peak {r['process_peak_mb']:.0f} MB; H, S, D stored: {r['operators_mb']:.0f} MB)"
            print(f"{kind:10s} {n:6d} {r['edges']:7d} {r['time_s']:9.3f} {r['atoms_per_s']:9.1f} "
                  f"{r['peak_mb']:9.1f} {net}", flush=True)
    inf = [r for r in rows if "error" not in r and ((r.get("kind") == "inference" and r["natoms"] in args.scaling)
                                                    or r.get("kind") == "predict")]
    fit = fit_scaling(inf) if len(inf) >= 2 else None
    if fit:
        print(f"inference scaling over {fit['sizes']} atoms: log-log slope {fit['loglog_slope']:.2f}, "
              f"{1e3 * fit['per_atom_s']:.2f} ms per atom + {fit['offset_s']:.3f} s")
        big = sorted(inf, key=lambda r: r["natoms"])[-3:]
        if len(inf) > 3:  # small cells fit in the CPU caches; the asymptotic slope is that of the largest
            tail = fit_scaling(big)
            fit["largest_three"] = tail
            print(f"  over the largest three {tail['sizes']}: log-log slope {tail['loglog_slope']:.2f}")
    params = next((r["n_parameters"] for r in rows if "n_parameters" in r), None)
    machine = {"platform": platform.platform(), "processor": platform.processor(), "threads": args.threads,
               "cpu_count": mp.cpu_count()}
    print(f"model: {params} parameters ({args.config}); {machine['platform']}, {args.threads} thread(s)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"config": args.config, "n_parameters": params, "machine": machine, "rows": rows,
                       "inference_scaling": fit}, fh, indent=2)


if __name__ == "__main__":
    main()

"""SO(2) convolution vs e3nn's FullyConnectedTensorProduct with spherical-harmonic filters.

Both map ``C x (0e + 1o + 2e + ... + L)`` to the same irreps (``C`` channels per l, default
16); e3nn's tensor product takes the edge's spherical harmonics ``Y_0..Y_L`` as the second
input with shared weights (all l1 x l2 -> l3 paths, channel mixing per path).  Our SO(2)
convolution rotates features into the edge frame (per-edge Wigner matrices included in the
timing), applies the per-|m| edge-frame map with per-edge channel weights, and rotates
back; it corresponds to filters up to l2 = 2L, i.e. it is at least as expressive.

Measured per edge, for a forward + backward pass (gradients w.r.t. inputs and weights):

* time: median of repeated runs, divided by the number of edges; the methods take turns
  in bursts (3 cycles, one untimed warm-up run per burst) so that load from other processes
  affects them alike;
* peak memory: growth of the resident set's high-water mark (VmHWM, reset before each run
  through /proc/self/clear_refs; in a separate process where malloc maps every buffer of
  4 kB or more on its own, so that freed buffers go back to the OS at once) during a run with E2 edges minus that with E1 < E2 edges, divided by
  E2 - E1 (constant overheads cancel).

Two e3nn references: filters ``Y_0..Y_L`` (the usual choice; fewer paths than the SO(2)
convolution) and ``Y_0..Y_2L`` ("e3nn2L": exactly the SO(2) convolution's function class,
same number of weights; e3nn has no Y_l beyond l = 12, so random filter inputs of the right
shape are used there; the cost does not depend on their values).

Fewer edges are used where e3nn is slow (high L); results are per edge.  Prints a table and
log-log slopes (cost ~ L^slope); ``--json PATH`` writes the same figures.

    python benchmarks/bench_so2.py [--lmax 8] [--channels 16] [--threads 1] [--json out.json]
"""

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time

# edges (E2) per method and L; E1 = E2 // 4
E3NN_EDGES = {1: 400, 2: 400, 3: 200, 4: 100, 5: 64, 6: 32, 7: 24, 8: 16}
SO2_EDGES = {1: 1000, 2: 1000, 3: 1000, 4: 1000, 5: 500, 6: 500, 7: 500, 8: 500}


def _build(method: str, lmax: int, channels: int):
    """(inputs(n), step(inputs), timing edges, memory edges, weights, build seconds)."""
    import torch

    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.dirname(here))

    if method == "so2":
        from ase_slem.nn.irreps import Irreps
        from ase_slem.nn.so2 import SO2Conv
        from ase_slem.nn.wigner import EdgeFrame

        irr = Irreps.spherical_harmonics(lmax, channels)
        t0 = time.perf_counter()
        conv = SO2Conv(irr, irr)
        frame = EdgeFrame(lmax)
        build = time.perf_counter() - t0
        n_weights = int(conv.weight_mask.sum().item())

        def inputs(n):
            return (torch.randn(n, 3), torch.randn(n, irr.dim, requires_grad=True),
                    torch.randn(n, irr.num_channels, requires_grad=True))

        def step(inp):
            vec, x, ew = inp
            out = conv(x, frame(vec), ew)  # includes the per-edge Wigner matrices
            out.pow(2).sum().backward()

        e2 = SO2_EDGES.get(lmax, 500)
        e2_mem = 1000
    else:
        from e3nn import o3

        lsh = lmax if method == "e3nn" else 2 * lmax
        irr = o3.Irreps([(channels, (l, (-1) ** l)) for l in range(lmax + 1)])
        sh = o3.Irreps.spherical_harmonics(lsh)
        t0 = time.perf_counter()
        tp = o3.FullyConnectedTensorProduct(irr, sh, irr)
        build = time.perf_counter() - t0
        n_weights = tp.weight_numel

        def inputs(n):
            vec = torch.randn(n, 3)
            return (vec, torch.randn(n, irr.dim, requires_grad=True))

        def step(inp):
            vec, x = inp
            if lsh <= 12:
                y = o3.spherical_harmonics(sh, vec, normalize=True)
            else:  # e3nn has no Y_l beyond l = 12; the cost does not depend on the values
                y = torch.randn(vec.shape[0], sh.dim)
            out = tp(x, y)
            out.pow(2).sum().backward()

        e2 = E3NN_EDGES.get(lmax, 16)
        if method == "e3nn2L":
            e2 = max(8, e2 // 2)
        e2_mem = max(e2, 64)
    return inputs, step, e2, e2_mem, n_weights, build


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def _peak_growth_kb(step, inp) -> float:
    """Growth of the resident set's high-water mark during ``step(inp)`` (kB)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
    except OSError:
        pass
    r0 = _status_kb("VmRSS")
    step(inp)
    return float(_status_kb("VmHWM") - r0)


def worker(methods, lmaxes, channels: int, threads: int, min_time: float, part: str) -> dict:
    """Per L: memory per edge of each method, then their timed runs in alternating bursts
    (so that load from other processes affects all methods alike, with warm caches)."""
    import torch

    torch.set_num_threads(threads)
    results = {}
    for lmax in lmaxes:
        torch.manual_seed(0)
        built = {m: _build(m, lmax, channels) for m in methods}
        res = {}
        for m in methods:
            inputs, step, e2, e2_mem, n_weights, build = built[m]
            res[m] = dict(method=m, lmax=lmax, weights=n_weights, build_s=build)
            if part != "memory":
                continue
            e1_mem = max(1, e2_mem // 4)
            step(inputs(e1_mem))  # warm-up
            grow1 = _peak_growth_kb(step, inputs(e1_mem))
            grow2 = _peak_growth_kb(step, inputs(e2_mem))
            res[m].update(mem_per_edge_kb=max(grow2 - grow1, 0.0) / (e2_mem - e1_mem),
                          memory_edges=[e1_mem, e2_mem])
        if part == "memory":
            results[lmax] = res
            continue
        inp = {m: built[m][0](built[m][2]) for m in methods}  # inputs made outside the timing
        for m in methods:
            built[m][1](inp[m])
        # bursts: each method runs alone for ~min_time/3 s (after one untimed warm-up run),
        # methods take turns for 3 cycles; median over all timed runs
        times = {m: [] for m in methods}
        for _cycle in range(3):
            for m in methods:
                built[m][1](inp[m])
                t_burst = time.perf_counter()
                while True:
                    t0 = time.perf_counter()
                    built[m][1](inp[m])
                    times[m].append(time.perf_counter() - t0)
                    if time.perf_counter() - t_burst > min_time / 3:
                        break
        for m in methods:
            ts = sorted(times[m])
            e = built[m][2]
            res[m].update(edges=e, repeats=len(ts), time_per_edge_us=ts[len(ts) // 2] / e * 1e6)
        results[lmax] = res
        print(f"  L={lmax}: " + ", ".join(f"{m} {res[m]['time_per_edge_us']:.1f} us/edge" for m in methods),
              file=sys.stderr, flush=True)
        del built, inp
    return results


def _slope(ls, vals):
    pts = [(math.log(l), math.log(v)) for l, v in zip(ls, vals) if l >= 2 and v > 0]
    if len(pts) < 2:
        return float("nan")
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    num = sum((x - mx) * (y - my) for x, y in pts)
    den = sum((x - mx) ** 2 for x, _ in pts)
    return num / den


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lmax", type=int, default=8, help="largest l_max (runs 1..lmax)")
    ap.add_argument("--lmin", type=int, default=1)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds of timed runs per point")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--no-equivalent", action="store_true",
                    help="skip e3nn with filters up to 2L (the exact equivalent; slow to build)")
    ap.add_argument("--worker", nargs=2, metavar=("METHODS", "LMAXES"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        part, methods = args.worker[0].split(":")
        methods = methods.split(",")
        lmaxes = [int(v) for v in args.worker[1].split(",")]
        res = worker(methods, lmaxes, args.channels, args.threads, args.min_time, part)
        print("RESULT " + json.dumps(res))
        return

    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(args.threads)
    methods = ["so2", "e3nn"] + ([] if args.no_equivalent else ["e3nn2L"])
    rows = []
    t_all = time.perf_counter()
    lmaxes = list(range(args.lmin, args.lmax + 1))
    # two worker processes: timing with the default malloc, memory with every buffer of
    # 4 kB or more mmapped (freed memory goes back to the OS at once, so the resident
    # set follows the live tensors); the env var must be set before the process starts
    def run_worker(part, extra_env):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", part + ":" + ",".join(methods),
               ",".join(str(v) for v in lmaxes), "--channels", str(args.channels),
               "--threads", str(args.threads), "--min-time", str(args.min_time)]
        proc = subprocess.run(cmd, env=dict(env, **extra_env), stdout=subprocess.PIPE, text=True)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            raise RuntimeError(f"benchmark {part} worker failed (see its error output above)")
        return json.loads(line[0][7:])

    timing = run_worker("time", {})
    memory = run_worker("memory", {"MALLOC_MMAP_THRESHOLD_": "4096", "MALLOC_TRIM_THRESHOLD_": "0"})
    results = {k: {m: dict(memory[k][m], **timing[k][m]) for m in methods} for k in timing}
    for lmax in lmaxes:
        row = {"lmax": lmax}
        row.update(results[str(lmax)])
        t_so2 = row["so2"]["time_per_edge_us"]
        m_so2 = row["so2"]["mem_per_edge_kb"]
        for method in methods[1:]:
            row["speedup_vs_" + method] = row[method]["time_per_edge_us"] / t_so2
            row["memory_ratio_vs_" + method] = (
                row[method]["mem_per_edge_kb"] / m_so2 if m_so2 > 0 else float("nan"))
        rows.append(row)

    ls = [r["lmax"] for r in rows]
    slopes = {}
    for m in methods:
        slopes[m + "_time"] = _slope(ls, [r[m]["time_per_edge_us"] for r in rows])
        slopes[m + "_memory"] = _slope(ls, [r[m]["mem_per_edge_kb"] for r in rows])
    import torch

    machine = dict(
        platform=platform.platform(), processor=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(), torch=torch.__version__, threads=args.threads,
        dtype=str(torch.get_default_dtype()),
    )
    try:
        import e3nn

        machine["e3nn"] = e3nn.__version__
    except ImportError:
        pass

    print(f"SO(2) convolution vs e3nn FullyConnectedTensorProduct(C x [0e+1o+..L], Y, same), "
          f"C = {args.channels}, float32, forward+backward per edge, {args.threads} thread(s)")
    print("  e3nn:   filters Y_0..Y_L (usual setting, fewer paths than the SO(2) conv)")
    if "e3nn2L" in methods:
        print("  e3nn2L: filters Y_0..Y_2L = exactly the SO(2) conv's function class and weight count")
    cols = [("L", 2)]
    hdr = f"{'L':>2} | {'so2 us':>8} | {'e3nn us':>9} | {'speedup':>8}"
    if "e3nn2L" in methods:
        hdr += f" | {'e3nn2L us':>10} | {'speedup':>8}"
    hdr += f" | {'so2 KB':>7} | {'e3nn KB':>8} | {'ratio':>6}"
    if "e3nn2L" in methods:
        hdr += f" | {'e3nn2L KB':>9} | {'ratio':>6}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        line = (f"{r['lmax']:>2} | {r['so2']['time_per_edge_us']:>8.1f} | {r['e3nn']['time_per_edge_us']:>9.1f} | "
                f"{r['speedup_vs_e3nn']:>7.1f}x")
        if "e3nn2L" in methods:
            line += f" | {r['e3nn2L']['time_per_edge_us']:>10.1f} | {r['speedup_vs_e3nn2L']:>7.1f}x"
        line += (f" | {r['so2']['mem_per_edge_kb']:>7.1f} | {r['e3nn']['mem_per_edge_kb']:>8.1f} | "
                 f"{r['memory_ratio_vs_e3nn']:>5.1f}x")
        if "e3nn2L" in methods:
            line += f" | {r['e3nn2L']['mem_per_edge_kb']:>9.1f} | {r['memory_ratio_vs_e3nn2L']:>5.1f}x"
        print(line)
    print("log-log slopes vs L (L >= 2): " + "; ".join(
        f"{m} time {slopes[m + '_time']:.2f} memory {slopes[m + '_memory']:.2f}" for m in methods))
    print(f"total {time.perf_counter() - t_all:.0f} s on {machine['processor']} ({machine['cpu_count']} cores)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "channels": args.channels, "methods": methods,
                       "rows": rows, "slopes": slopes}, f, indent=2)


if __name__ == "__main__":
    main()

"""End-to-end check of the model pipeline: train -> export -> load -> predict -> band energies.

Uses the silicon dataset of the config (``configs/si_pbe_dzvp.yaml``: ``data.path``) when it
exists; otherwise writes a Slater-Koster stand-in dataset first: rattled, strained 8-atom
diamond-silicon cells with a 2s2p1d basis (13 orbitals per atom, like gth-dzvp), interactions
to 5.2 Å, a non-orthogonal overlap, and the density matrix of the 16 lowest bands (32
electrons) from a 4x4x4 k-mesh, transformed to real space with minimal images.  The stand-in
is not DFT; it has the sizes and the structure of the real task and exact targets.

Then it trains the config's model (``--steps`` overrides the number of steps), exports the
checkpoint, loads the model file with the light runtime (``ase_slem.model_file``), predicts
H, S, D for the test frames and compares with the reference operators: block MAE per
operator (H in meV), band-energy MAE of the occupied and lowest empty bands at random
k-points (meV), and the electron count Tr(D S).

    nice python benchmarks/pipeline_check.py [--steps 1500] [--frames 40] [--output runs/pipeline_check]
                                             [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# the Slater-Koster stand-in
# ---------------------------------------------------------------------------------------------
def standin_parameters():
    """A gapped (0.4-0.8 eV when rattled) 2s2p1d Slater-Koster silicon with second-neighbour terms."""
    from ase_slem.tightbinding import BondParameters, SlaterKosterParameters

    return SlaterKosterParameters(
        onsite={"Si": {"s1": -5.0, "s2": 9.0, "p1": 1.5, "p2": 12.0, "d": 14.0}},
        bonds={("Si", "Si"): BondParameters(
            r0=2.35,
            hopping={"s1s1_sigma": -2.0, "s1p1_sigma": 2.2, "p1p1_sigma": 3.0, "p1p1_pi": -1.1,
                     "ss_sigma": -0.8, "sp_sigma": 0.9, "pp_sigma": 1.2, "pp_pi": -0.4,
                     "sd_sigma": -0.6, "pd_sigma": -0.7, "pd_pi": 0.35,
                     "dd_sigma": -0.5, "dd_pi": 0.3, "dd_delta": -0.05},
            overlap={"s1s1_sigma": 0.08, "s1p1_sigma": -0.10, "p1p1_sigma": -0.12, "p1p1_pi": 0.04,
                     "ss_sigma": 0.04, "sp_sigma": -0.05, "pp_sigma": -0.06, "pp_pi": 0.02,
                     "sd_sigma": 0.02, "pd_sigma": 0.025, "pd_pi": -0.01,
                     "dd_sigma": 0.015, "dd_pi": -0.008, "dd_delta": 0.002},
            beta_hopping=4.5, beta_overlap=1.6)},
        cutoff=5.2, cutoff_width=1.0)


def standin_frame(seed: int, kmesh=(4, 4, 4), max_distance: float = 9.0):
    """One stand-in frame: H (eV), S, D (spin-summed, 4 electrons per atom)."""
    from ase.build import bulk

    from ase_slem.io.dataset import Frame
    from ase_slem.io.pyscf import gamma_centred_mesh, realspace_from_kmesh
    from ase_slem.solvers import generalized_eigh
    from ase_slem.tightbinding import slater_koster_operators

    rng = np.random.default_rng(seed)
    atoms = bulk("Si", "diamond", a=5.43 * (1 + rng.uniform(-0.01, 0.01)), cubic=True)
    atoms.rattle(0.07, seed=int(seed) + 1000)
    H, S = slater_koster_operators(atoms, basis={"Si": "2s2p1d"}, params=standin_parameters())
    k = gamma_centred_mesh(kmesh)
    hk, sk = H.bloch(k), S.bloch(k)
    n_occ = 2 * len(atoms)  # 4 electrons per Si, 2 per band
    dk = np.empty_like(hk)
    gaps = []
    for q in range(len(k)):
        e, c = generalized_eigh(hk[q], sk[q])
        gaps.append((e[n_occ - 1], e[n_occ]))
        co = c[:, :n_occ]
        dk[q] = 2.0 * co @ co.conj().T
    D = realspace_from_kmesh(atoms, H.orbital_counts, k, dk, max_distance=max_distance, name="density_matrix",
                             basis=H.basis)
    gaps = np.array(gaps)
    settings = {"code": "slater-koster", "basis": "sk-2s2p1d-standin", "xc": None, "method": "standin",
                "kmesh_density_matrix": list(kmesh)}
    results = {"band_gap_mesh_eV": float(gaps[:, 1].min() - gaps[:, 0].max()), "nelectron": 4 * len(atoms)}
    return Frame(atoms, {"hamiltonian": H, "overlap": S, "density_matrix": D}, H.basis, settings, results)


def write_standin(root: Path, n: int) -> None:
    from ase_slem.io.dataset import frame_paths, write_frame

    if root.is_dir() and len(frame_paths(root)) >= n:
        return
    for k in range(n):
        write_frame(root, standin_frame(k), k, overwrite=True)


# ---------------------------------------------------------------------------------------------
# the check
# ---------------------------------------------------------------------------------------------
def compare(model, frames, names, n_kpts: int = 8, n_empty: int = 4):
    """Per test frame: block MAEs of the prediction and band-energy errors."""
    from ase_slem import band_energies
    from ase_slem.model_file import predict

    rows = []
    for fr, name in zip(frames, names):
        t0 = time.perf_counter()
        ops = predict(model, fr.atoms)
        t_pred = time.perf_counter() - t0
        row = {"frame": name, "predict_s": t_pred}
        for op, pred in ops.items():
            ref = fr.operators[op]
            # errors over the blocks the model predicts (those within r_bond)
            diffs, n = 0.0, 0
            for grp in pred.groups:
                for k in range(grp.stop - grp.start):
                    a, b, R = int(pred.i[grp.start + k]), int(pred.j[grp.start + k]), tuple(pred.R[grp.start + k])
                    diffs += float(np.abs(grp.data[k] - ref.block(a, b, R)).sum())
                    n += grp.data[k].size
            row[f"{op}_mae"] = diffs / max(n, 1) * (1000.0 if op == "hamiltonian" else 1.0)
        kpts = np.random.default_rng(7).random((n_kpts, 3))
        n_occ = int(round(fr.operators["density_matrix"].trace_product(fr.operators["overlap"]) / 2)) \
            if "density_matrix" in fr.operators else 2 * len(fr.atoms)
        nb = n_occ + n_empty
        e_ref = band_energies(fr.operators["hamiltonian"], fr.operators["overlap"], kpts)[:, :nb]
        e_pred = band_energies(ops["hamiltonian"], ops["overlap"], kpts)[:, :nb]
        row["band_mae_meV"] = 1000.0 * float(np.abs(e_pred - e_ref).mean())
        row["band_max_meV"] = 1000.0 * float(np.abs(e_pred - e_ref).max())
        row["occupied_band_mae_meV"] = 1000.0 * float(np.abs(e_pred[:, :n_occ] - e_ref[:, :n_occ]).mean())
        if "density_matrix" in ops:
            row["electrons_pred"] = float(ops["density_matrix"].trace_product(ops["overlap"]))
            row["electrons_ref"] = float(fr.operators["density_matrix"].trace_product(fr.operators["overlap"]))
        rows.append(row)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "configs" / "si_pbe_dzvp.yaml"))
    p.add_argument("--data", help="dataset folder (default: the config's data.path if it exists, else the stand-in)")
    p.add_argument("--frames", type=int, default=40, help="stand-in frames to generate")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--output", default="runs/pipeline_check")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the config's)")
    p.add_argument("--json", help="write the results as JSON here")
    args = p.parse_args()

    from ase_slem.io.dataset import frame_paths
    from ase_slem.model_file import load_model
    from ase_slem.train import config_from_dict, export_checkpoint, load_config, train
    from ase_slem.train.checkpoint import load_checkpoint
    from ase_slem.train.loop import load_frames
    from ase_slem.train.metrics import format_metrics

    out = Path(args.output)
    cfg = load_config(args.config)
    data = Path(args.data) if args.data else Path(cfg.data.path)
    standin = False
    if not (data.is_dir() and frame_paths(data)):
        data, standin = out / "standin_data", True
        t0 = time.perf_counter()
        write_standin(data, args.frames)
        print(f"wrote the Slater-Koster stand-in dataset {data} ({args.frames} frames, "
              f"{time.perf_counter() - t0:.1f} s)", flush=True)
    d = cfg.to_dict()
    d["data"]["path"] = str(data)
    d["output"] = str(out / "run")
    d["train"].update(steps=args.steps, progress=False, eval_every=max(args.steps // 10, 1),
                      checkpoint_every=max(args.steps // 10, 1))
    if args.threads:
        d["train"]["num_threads"] = args.threads
    run_cfg = config_from_dict(d)
    t0 = time.perf_counter()
    resume = (Path(run_cfg.output) / "checkpoints" / "last.pt").exists()
    res = train(run_cfg, resume=resume, log=lambda m: print(m, flush=True))
    t_train = time.perf_counter() - t0
    model_path = export_checkpoint(res.checkpoint, out / "si_pipeline.pt")
    model = load_model(model_path)
    frames, names = load_frames(data)
    state = load_checkpoint(res.checkpoint)
    test_names = state["dataset"]["split"]["test"]
    test = [(f, n) for f, n in zip(frames, names) if n in test_names]
    rows = compare(model, [f for f, _ in test], [n for _, n in test])
    print(format_metrics(res.test, f"test MAE from training ({len(test)} frames):"))
    print(f"{'frame':14s} {'H meV':>8s} {'S':>9s} {'D':>9s} {'bands meV':>10s} {'occ meV':>8s} "
          f"{'max meV':>8s} {'N_e pred':>9s} {'N_e ref':>8s} {'predict s':>9s}")
    for r in rows:
        print(f"{r['frame']:14s} {r['hamiltonian_mae']:8.2f} {r['overlap_mae']:9.2e} "
              f"{r.get('density_matrix_mae', float('nan')):9.2e} {r['band_mae_meV']:10.2f} "
              f"{r['occupied_band_mae_meV']:8.2f} {r['band_max_meV']:8.1f} {r.get('electrons_pred', float('nan')):9.3f} "
              f"{r.get('electrons_ref', float('nan')):8.3f} {r['predict_s']:9.2f}")
    summary = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k not in ("frame",)}
    print(f"mean over test frames: H {summary['hamiltonian_mae']:.2f} meV, band energies "
          f"{summary['band_mae_meV']:.2f} meV (occupied {summary['occupied_band_mae_meV']:.2f} meV); "
          f"training {t_train / 60:.1f} min for {res.step} steps, {state['n_parameters']} parameters")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"data": str(data), "standin": standin, "steps": res.step, "train_minutes": t_train / 60,
                       "n_parameters": state["n_parameters"], "training_metrics": {"validation": res.validation,
                       "test": res.test}, "test_frames": rows, "mean": summary,
                       "model_file": str(model_path)}, fh, indent=2)


if __name__ == "__main__":
    main()

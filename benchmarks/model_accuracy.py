"""Accuracy of an exported model on its held-out frames: block MAE, bands / orbital energies.

    python benchmarks/model_accuracy.py models/si_pbe_dzvp.pt --data ../data/si_pbe_dzvp
    python benchmarks/model_accuracy.py models/water_pbe_svp.pt --data ../data/water_pbe_svp --json acc.json

The test frames are the ones the model file records as its test split (``training.split.test``
in the metadata, the frames training never saw); ``--split val`` or ``--frames frame.000003 ...``
choose others, and ``--split unseen`` the frames of the dataset folder that no split of the model
names (structures generated after the model was trained, so never trained on).  Reported, against the DFT operators of those frames:

* MAE of H (meV), S and D per block type, over the blocks the model predicts (onsite and
  bonds up to r_bond), as during training; with frames of several sizes, the H MAE of each size;
* crystals: band energies of (H_pred, S_pred) against (H_DFT, S_DFT) on the seekpath path
  (80 points) plus 20 random k of each test cell; bands compared: the valence bands and the 4
  lowest conduction bands; also with the exact overlap (``overlap="exact"``) instead of the
  predicted one, and the error of the DFT bands when H, S are cut at the model's r_bond
  (what a perfect model of this range would still miss);
  the same comparison with each cell's energies taken relative to its valence-band maximum
  (over the compared k), as band plots show them: the energy zero of a periodic Kohn-Sham
  Hamiltonian is a convention (the cell-averaged electrostatic potential is set to zero), and
  ``mean signed`` reports how much of the absolute error is a rigid shift of a cell's bands;
  and the couplings |<psi_a|H_pred(k)|psi_b>| between the DFT states of the compared bands
  (the mixing of the states that the band energies see only at second order); when some cells'
  DFT bands overlap on the mesh their H was built on (an insulator's settings applied to what
  the functional makes a semimetal, see ``reference_is_metallic``), the band MAE of those cells
  and of the others, apart;
* molecules: orbital energies HOMO-4 .. LUMO+2 and all occupied ones, the latter split into
  core levels (DFT energy below -100 eV: O 1s, C 1s) and valence ones, and the MAE of each level;
* electrons: Tr(D_pred S_pred) against the DFT electron count.

Prints a Markdown table (for the model card) and writes the numbers as JSON with ``--json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def block_mae(model, frames, names, by_size: bool = False):
    """MAE of every operator per block type over ``frames``; with ``by_size``, also
    ``{"by size": {number of atoms: {"frames": n, "hamiltonian_meV": H MAE}}}`` from the same
    predictions (one network pass per frame)."""
    import torch

    from ase_slem.train.data import make_sample, padded_orbital_mask
    from ase_slem.train.metrics import MAEAccumulator

    mask = padded_orbital_mask([model.orbital_counts[el] for el in model.symbols], model.max_norb)
    acc = MAEAccumulator(model.symbols, mask)
    per_size: dict = {}
    baseline = model.metadata.get("hamiltonian_baseline")  # the network predicts H - H0: compare with that
    for frame, name in zip(frames, names):
        if baseline and "hamiltonian_baseline" not in frame.operators:
            from ase_slem.hamiltonian_baseline import hamiltonian_baseline

            frame.operators["hamiltonian_baseline"] = hamiltonian_baseline(frame.atoms, baseline)
        s = make_sample(frame, name, model.symbols, model.max_norb, model.r_graph, model.r_bond,
                        model.operators, model.torch_dtype, baseline=bool(baseline))
        with torch.no_grad():
            out = model.module(*s.inputs())
        bi = s.species.index_select(0, s.bond_i)
        bj = s.species.index_select(0, s.bond_j)
        accs = [acc]
        if by_size:
            size = per_size.setdefault(len(frame.atoms), [MAEAccumulator(model.symbols, mask), 0])
            size[1] += 1
            accs.append(size[0])
        for a in accs:
            for op in model.operators:
                t_on, t_b = s.targets[op]
                a.add(op, out[op + "_onsite"], t_on, s.species, out[op + "_bond"], t_b, bi, bj)
    res = acc.result()
    if by_size:
        res["by size"] = {n: {"frames": k, "hamiltonian_meV": a.result()["hamiltonian"]["all"]}
                          for n, (a, k) in sorted(per_size.items())}
    return res


def state_couplings(h_ref, s_ref, h_pred, kpts, nb: int, degenerate: float = 1e-3) -> np.ndarray:
    """|<psi_a|H_pred(k)|psi_b>| (eV) between the DFT Bloch states a < b of the lowest ``nb`` bands
    (S-normalized eigenvectors of the DFT H(k), S(k)) whose energies differ by more than
    ``degenerate`` eV, flat: zero when the predicted H does not mix the DFT states (the band
    energies see that mixing only at second order; cf. ``train.band_mixing_weight``)."""
    import scipy.linalg as sl

    hr, sr, hp = h_ref.bloch(kpts), s_ref.bloch(kpts), h_pred.bloch(kpts)
    out = []
    upper = np.triu(np.ones((nb, nb), dtype=bool), k=1)
    for a, b, c in zip(hr, sr, hp):
        e, v = sl.eigh(a, b, subset_by_index=[0, nb - 1])
        m = np.abs(v.conj().T @ c @ v)
        out.append(m[upper & (np.abs(e[:, None] - e[None, :]) > degenerate)])
    return np.concatenate(out)


def band_errors(model_path, frames, n_extra: int = 4, npath: int = 80, nrandom: int = 20, seed: int = 0):
    from ase_slem import SLEMCalculator, band_energies
    from ase_slem.bands import band_path
    from ase_slem.model_file import load_model

    r_bond = load_model(model_path).r_bond
    calc = SLEMCalculator(str(model_path), overlap="model")
    calc_x = SLEMCalculator(str(model_path), overlap="exact")
    rng = np.random.default_rng(seed)
    err, err_x, err_cut, bad_s, n_k = [], [], [], [], []
    err_vbm, err_cut_vbm, shifts, vbm_errors, couplings, metallic = [], [], [], [], [], []
    for fr in frames:
        atoms = fr.atoms
        nval = int(round(fr.results.get("nelectron") or calc.get_number_of_electrons(atoms))) // 2
        nb = nval + n_extra
        k = np.concatenate([band_path(atoms, npoints=npath).kpts, rng.uniform(-0.5, 0.5, (nrandom, 3))])
        H, S = fr.operators["hamiltonian"], fr.operators["overlap"]
        ref = band_energies(H, S, k)[:, :nb]
        h_pred = calc_x.get_hamiltonian(atoms)  # the same H with either overlap
        pred_x = band_energies(h_pred, calc_x.get_overlap(atoms), k)[:, :nb]
        couplings.append(state_couplings(H, S, h_pred, k, nb))
        s_pred = calc.get_overlap(atoms)
        lam = np.linalg.eigvalsh(s_pred.bloch(k))[:, 0]
        bad_s.append(int(np.sum(lam <= 0)))
        n_k.append(len(k))
        pred = np.full_like(pred_x, np.nan)  # k-points where the predicted S(k) is not positive definite stay NaN
        good = lam > 0
        if good.any():
            pred[good] = band_energies(h_pred, s_pred, k[good], overlap_threshold=0.0)[:, :nb]
        cut = band_energies(H.within_distance(atoms, r_bond + 1e-8), S.within_distance(atoms, r_bond + 1e-8), k)[:, :nb]
        metallic.append(reference_is_metallic(fr))
        err.append(np.abs(pred - ref).ravel())
        err_x.append(np.abs(pred_x - ref).ravel())
        err_cut.append(np.abs(cut - ref).ravel())
        vbm = lambda e: e - e[:, nval - 1].max()  # noqa: E731  (energies relative to this cell's VBM)
        err_vbm.append(np.abs(vbm(pred_x) - vbm(ref)).ravel())
        err_cut_vbm.append(np.abs(vbm(cut) - vbm(ref)).ravel())
        shifts.append(float(np.mean(pred_x - ref)))
        vbm_errors.append(float(pred_x[:, nval - 1].max() - ref[:, nval - 1].max()))
    out = {name: {"mae_meV": 1000 * float(np.nanmean(np.concatenate(e))), "max_meV": 1000 * float(np.nanmax(np.concatenate(e)))}
           for name, e in (("predicted H, S", err), ("predicted H, exact S", err_x), (f"DFT H, S cut at {r_bond:g} Å", err_cut))}
    out["predicted H, S"]["k-points with S(k) not positive definite"] = f"{sum(bad_s)} of {sum(n_k)} (left out)"
    for name, e in (("predicted H, exact S, relative to the VBM", err_vbm),
                    (f"DFT H, S cut at {r_bond:g} Å, relative to the VBM", err_cut_vbm)):
        out[name] = {"mae_meV": 1000 * float(np.mean(np.concatenate(e))), "max_meV": 1000 * float(np.max(np.concatenate(e)))}
    for kind, flag in (("insulating", False), ("metallic", True)):
        sel = [e for e, m in zip(err_x, metallic) if m is flag]
        if sel and len(sel) < len(err_x):
            out[f"predicted H, exact S, the {len(sel)} cells whose DFT reference is {kind} on its k-mesh"] = {
                "mae_meV": 1000 * float(np.mean(np.concatenate(sel))), "max_meV": 1000 * float(np.max(np.concatenate(sel)))}
    out["couplings of the DFT states by the predicted H"] = {
        "mae_meV": 1000 * float(np.mean(np.concatenate(couplings))),
        "max_meV": 1000 * float(np.max(np.concatenate(couplings)))}
    out["predicted H, exact S, relative to the VBM"]["mean signed error per cell (meV)"] = \
        " ".join(f"{1000 * x:+.1f}" for x in shifts)
    out["predicted H, exact S, relative to the VBM"]["VBM error per cell (meV)"] = \
        " ".join(f"{1000 * x:+.1f}" for x in vbm_errors)
    return out


def reference_is_metallic(frame) -> bool | None:
    """Whether the frame's DFT bands, on the k-mesh its H was built on (``dense_kmesh`` of a PySCF
    frame, else its SCF ``kmesh``), overlap: the highest filled band of an insulator's count above
    the lowest empty one somewhere (:func:`ase_slem.dos.band_gap` gives no gap). Unless the frame
    records ``smearing``, such a reference was computed with an insulator's settings (integer
    occupations) for what this functional makes a (semi)metal. Frames generated since
    2026-12-05 record the overlap (``results["band_overlap"]``, eV) and it is read from there;
    older ones are diagonalized on their mesh. None when the frame records neither."""
    from ase_slem.dos import band_gap
    from ase_slem.io.pyscf import gamma_centred_mesh
    from ase_slem.solvers import band_energies

    if frame.results.get("band_overlap") is not None:
        return bool(frame.results["band_overlap"] > -1e-6)  # band_gap's touching tolerance
    mesh = frame.settings.get("dense_kmesh") or frame.settings.get("kmesh")
    n_el = frame.results.get("nelectron")
    if not mesh or not n_el:
        return None
    H, S = frame.operators["hamiltonian"], frame.operators["overlap"]
    nb = int(n_el) // 2 + 1
    e = band_energies(H, S, gamma_centred_mesh(mesh))[:, :nb]
    return band_gap(e, n_el).is_metal


CORE_LEVEL_EV = -100.0  # DFT levels below this are core levels (O 1s -510 eV, C 1s -270 eV)


def orbital_errors(model_path, frames):
    """Orbital-energy MAE (meV) at Gamma: HOMO-4..LUMO+2, occupied, occupied core / valence
    (DFT level below / above CORE_LEVEL_EV) and, when every frame has the same levels, each level's."""
    from ase_slem import SLEMCalculator, band_energies

    calcs = {"predicted H, S": SLEMCalculator(str(model_path), overlap="model"),
             "predicted H, exact S": SLEMCalculator(str(model_path), overlap="exact")}
    errors = {k: [] for k in calcs}  # per frame: |error| of levels 0 .. LUMO+2 (eV)
    noccs, cores = [], []
    g = np.zeros((1, 3))
    for fr in frames:
        nocc = int(fr.results["nelectron"]) // 2
        ref = band_energies(fr.operators["hamiltonian"], fr.operators["overlap"], g)[0][: nocc + 3]
        noccs.append(nocc)
        cores.append(ref[:nocc] < CORE_LEVEL_EV)
        for k, c in calcs.items():
            e = band_energies(c.get_hamiltonian(fr.atoms), c.get_overlap(fr.atoms), g)[0][: nocc + 3]
            errors[k].append(np.abs(e - ref))

    def mae(parts) -> float:
        x = np.concatenate(parts)
        return 1000 * float(x.mean()) if x.size else float("nan")

    out = {}
    for k, d in errors.items():
        occ = [x[:n] for x, n in zip(d, noccs)]
        out[k] = {"HOMO-4..LUMO+2 mae_meV": mae([x[max(n - 5, 0):] for x, n in zip(d, noccs)]),
                  "occupied mae_meV": mae(occ),
                  f"occupied core (DFT level below {CORE_LEVEL_EV:g} eV) mae_meV": mae([o[c] for o, c in zip(occ, cores)]),
                  "occupied valence mae_meV": mae([o[~c] for o, c in zip(occ, cores)])}
        if len(set(noccs)) == 1:
            out[k]["per level, lowest first, to LUMO+2 (meV)"] = (1000 * np.mean(d, axis=0)).round(1).tolist()
    return out


def electron_counts(model, frames):
    from ase_slem.model_file import predict

    out = []
    for fr in frames:
        if "density_matrix" not in model.operators:
            return None
        ops = predict(model, fr.atoms)
        out.append(ops["density_matrix"].trace_product(ops["overlap"]) - fr.results["nelectron"])
    return {"max_abs_error": float(np.max(np.abs(out))), "mean_error": float(np.mean(out))}


def evaluate(model_path: str, data: str, split: str = "test", frames: list | None = None) -> dict:
    from ase_slem.io.dataset import read_frame
    from ase_slem.model_file import load_model, read_metadata

    meta = read_metadata(model_path)
    recorded = meta.get("training", {}).get("split", {})
    if frames:
        names = frames
    elif split == "unseen":
        if not recorded:
            raise SystemExit(f"{model_path} records no split, so no frame is known to be unseen; pass --frames")
        names = unseen_frames(data, recorded)
        if not names:
            raise SystemExit(f"every frame of {data} is in a split of {model_path}; generate more "
                             "(scripts/make_training_sets.py NAME --frames N) to have unseen ones")
    else:
        names = recorded.get(split)
    if not names:
        raise SystemExit(f"{model_path} records no {split!r} split; pass --frames")
    t0 = time.perf_counter()
    fr = [read_frame(Path(data) / n) for n in names]
    model = load_model(model_path)
    res = {"model": str(model_path), "frames": names, "split": "chosen by --frames" if frames else split,
           "blocks": block_mae(model, fr, names, by_size=len({len(f.atoms) for f in fr}) > 1)}
    if meta.get("periodic"):
        res["bands"] = band_errors(model_path, fr)
    else:
        res["orbitals"] = orbital_errors(model_path, fr)
    res["electrons"] = electron_counts(model, fr)
    res["seconds"] = time.perf_counter() - t0
    return res


def unseen_frames(data: str | Path, split: dict) -> list[str]:
    """Frame folders of ``data`` that none of the model's split lists (train, val, test) names."""
    from ase_slem.io.dataset import frame_paths

    named = {n for v in split.values() if isinstance(v, list) for n in v}
    return [p.name for p in frame_paths(data) if p.name not in named]


def markdown(res: dict) -> str:
    lines = [f"Frames ({res['split']}): {len(res['frames'])}", "", "| quantity | MAE | unit |", "|---|---|---|"]
    blocks = dict(res["blocks"])
    by_size = blocks.pop("by size", {})
    for op, d in blocks.items():
        for k, v in d.items():
            if k != "unit":
                lines.append(f"| {op} {k} | {v:.4g} | {d['unit']} |")
    for n, v in by_size.items():
        lines.append(f"| hamiltonian all, {n}-atom frames ({v['frames']}) | {v['hamiltonian_meV']:.4g} | meV |")
    for k, v in res.get("bands", {}).items():
        note = v.get("k-points with S(k) not positive definite")
        shift = v.get("mean signed error per cell (meV)")
        vbm = v.get("VBM error per cell (meV)")
        lines.append(f"| bands, {k} | {v['mae_meV']:.2f} (max {v['max_meV']:.1f}){'; S(k) not PD at ' + note if note else ''}"
                     f"{'; absolute bands shifted per cell by ' + shift if shift else ''}"
                     f"{'; VBM off per cell by ' + vbm if vbm else ''} | meV |")
    for k, v in res.get("orbitals", {}).items():
        for q, x in v.items():
            if isinstance(x, list):
                lines.append(f"| orbital energies {q}, {k} | {' '.join(f'{y:.1f}' for y in x)} | meV |")
            else:
                lines.append(f"| orbital energies {q.removesuffix(' mae_meV')}, {k} | {x:.2f} | meV |")
    if res.get("electrons"):
        lines.append(f"| Tr(D S) - N_e (largest) | {res['electrons']['max_abs_error']:.3g} | electrons |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--data", required=True, help="the dataset folder the model was trained on")
    p.add_argument("--split", default="test", choices=["test", "val", "train", "unseen"],
                   help="recorded split to evaluate (unseen: frames no split names)")
    p.add_argument("--frames", nargs="*", help="frame folder names instead of a recorded split")
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args(argv)
    res = evaluate(args.model, args.data, args.split, args.frames)
    print(markdown(res))
    print(f"\n({res['seconds']:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``ase-slem`` command: band structures and DOS from operators, in one line.

    ase-slem bands PATH -o bands.png        # PATH: DFT output in any format read_operators knows
    ase-slem dos PATH -o dos.png --pdos element
    ase-slem formats                        # the DFT layouts that can be read
    ase-slem train CONFIG [--resume]        # train a SLEM model (configs/*.yaml)
    ase-slem export CHECKPOINT -o models/NAME.pt   # TorchScript model file with metadata
    ase-slem data pyscf STRUCTURES --settings S.yaml --out DATASET   # training frames from PySCF

Each verb writes its picture and the numbers beside it (JSON, and CSV for bands).  Errors are
one line on stderr with a non-zero exit status.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np


class CommandError(Exception):
    """A problem with the user's input, reported as one line."""


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _save_figure(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    fig.savefig(tmp, dpi=150, bbox_inches="tight")
    os.replace(tmp, path)


def _load_operators(path: str):
    from .io import read_operators

    if not Path(path).exists():
        raise CommandError(f"{path}: no such file or folder")
    atoms, ops = read_operators(path)
    if "hamiltonian" not in ops or "overlap" not in ops:
        raise CommandError(f"{path}: needs both a Hamiltonian and an overlap (found {', '.join(ops)})")
    return atoms, ops


def _electron_count(args, ops) -> float | None:
    if args.n_electrons is not None:
        return float(args.n_electrons)
    if "density_matrix" in ops:
        return float(ops["density_matrix"].trace_product(ops["overlap"]))
    return None


def cmd_bands(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from .bands import band_path, band_structure
    from .plotting import plot_bands

    atoms, ops = _load_operators(args.path)
    n_el = _electron_count(args, ops)
    path = band_path(atoms, npoints=args.npoints, method=args.path_method)
    bs = band_structure(
        ops["hamiltonian"], ops["overlap"], atoms, path=path,
        reference="fermi" if n_el is not None else None, n_electrons=n_el,
    )
    out = Path(args.output)
    emax = args.emax if args.emax is not None else 8.0  # the interesting part: valence + lowest conduction bands
    ax = plot_bands(bs, emin=args.emin, emax=emax, title=args.title or Path(args.path).name)
    _save_figure(ax.figure, out)
    energies = bs.energies[0]
    x, xticks, labels = bs.get_labels()
    table = {
        "unit": "eV",
        "reference": float(bs.reference),
        "n_electrons": n_el,
        "kpts_fractional": path.kpts.tolist(),
        "x": x.tolist(),
        "special_points": {"x": list(map(float, xticks)), "labels": list(labels)},
        "energies": energies.tolist(),
    }
    _atomic_write_text(out.with_suffix(".json"), json.dumps(table))
    header = "x," + ",".join(f"band{n}" for n in range(energies.shape[1]))
    rows = "\n".join(",".join(f"{v:.6f}" for v in [xi, *e]) for xi, e in zip(x, energies))
    _atomic_write_text(out.with_suffix(".csv"), header + "\n" + rows + "\n")
    print(f"wrote {out}, {out.with_suffix('.json')}, {out.with_suffix('.csv')} ({len(x)} k-points, {energies.shape[1]} bands)")


def cmd_dos(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from .dos import dos
    from .plotting import plot_dos

    atoms, ops = _load_operators(args.path)
    n_el = _electron_count(args, ops)
    res = dos(
        ops["hamiltonian"], ops["overlap"], atoms, mesh=args.mesh, method=args.method, width=args.width,
        n_electrons=n_el, pdos=None if args.pdos == "none" else args.pdos,
    )
    out = Path(args.output)
    ax = plot_dos(res.egrid, res.dos, pdos=res.pdos or None, reference=res.fermi_level, emin=args.emin, emax=args.emax)
    _save_figure(ax.figure, out)
    table = {
        "unit": "states/eV/cell (spin included)",
        "fermi_level_eV": res.fermi_level,
        "gap_eV": None if res.gap is None else float(res.gap.gap),
        "mesh": list(map(int, res.kmesh.mesh)),
        "irreducible_kpoints": int(res.kmesh.nirr),
        "method": res.method,
        "energy_eV": res.egrid.tolist(),
        "dos": res.dos.tolist(),
        "pdos": {k: v.tolist() for k, v in res.pdos.items()},
    }
    _atomic_write_text(out.with_suffix(".json"), json.dumps(table))
    gap = "" if res.gap is None else f", gap {res.gap.gap:.3f} eV"
    ef = "" if res.fermi_level is None else f", E_F {res.fermi_level:.3f} eV"
    print(f"wrote {out} and {out.with_suffix('.json')} ({res.kmesh.nirr} irreducible k-points{ef}{gap})")


def cmd_formats(args) -> None:
    from .io import FORMATS

    for name, spec in FORMATS.items():
        print(f"{name:14s} {spec[1] if len(spec) > 1 else ''}")


def cmd_train(args) -> None:
    from .train import TrainingDiverged, load_config, train

    cfg = load_config(args.config)
    if args.no_progress:
        cfg.train.progress = False
    try:
        result = train(cfg, resume=args.resume)
    except TrainingDiverged as err:
        raise CommandError(str(err)) from None
    except KeyboardInterrupt:
        raise CommandError(f"interrupted; continue with: ase-slem train {args.config} --resume") from None
    print(f"wrote {result.checkpoint} (step {result.step}), {result.best_checkpoint} and {result.metrics_csv}")


def cmd_export(args) -> None:
    from .train import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.output, use_ema=not args.raw_weights, name=args.name)
    from .model_file import read_metadata

    meta = read_metadata(out)
    print(f"wrote {out}: {meta['name']} ({meta['network']['type']}, {meta['network']['n_parameters']} parameters, "
          f"species {', '.join(meta['species'])}, predicts {', '.join(meta['operators'])})")


def cmd_data_pyscf(args) -> None:
    from ase.io import read

    from .io.generate import SettingsError, generate_dataset, load_settings

    if not Path(args.structures).is_file():
        raise CommandError(f"{args.structures}: no such structure file")
    try:
        settings = load_settings(args.settings)
        structures = read(args.structures, index=":")
    except SettingsError as err:
        raise CommandError(str(err)) from None
    except Exception as err:  # ase.io's many reader errors
        raise CommandError(f"{args.structures}: ase cannot read it ({type(err).__name__}: {err})") from None
    try:
        report = generate_dataset(structures, settings, args.out, workers=args.workers,
                                  threads_per_worker=args.threads, progress=not args.no_progress)
    except SettingsError as err:
        raise CommandError(str(err)) from None
    except KeyboardInterrupt:
        raise CommandError("interrupted; finished frames are kept: run the same command again to continue") from None
    print(f"{args.out}: {len(report.written)} frames written, {len(report.skipped)} already there, "
          f"{len(report.failed)} failed (see failed.jsonl), {report.seconds:.0f} s")
    if report.failed:
        raise CommandError(f"{len(report.failed)} frame(s) failed: {', '.join(map(str, report.failed[:10]))}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ase-slem",
        description="Electronic structure from LCAO operators (H, S, D): band structures, DOS, Fermi level, gaps.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def common(sp):
        sp.add_argument("path", help="DFT output with H and S (a folder or file; see 'ase-slem formats')")
        sp.add_argument("-o", "--output", required=True, help="picture to write (.png or .pdf); the numbers go beside it")
        sp.add_argument("--n-electrons", type=float, help="valence electrons per cell (default: Tr(DS) when a density matrix is present)")
        sp.add_argument("--emin", type=float, help="lower energy limit of the plot, eV relative to E_F")
        sp.add_argument("--emax", type=float, help="upper energy limit of the plot, eV relative to E_F (bands: default 8)")

    b = sub.add_parser("bands", help="band structure along a seekpath path -> picture + JSON + CSV")
    common(b)
    b.add_argument("--npoints", type=int, default=200, help="k-points along the path (default 200)")
    b.add_argument("--path-method", choices=["seekpath", "ase"], default="seekpath", help="where the path comes from")
    b.add_argument("--title", help="figure title")
    b.set_defaults(func=cmd_bands)

    d = sub.add_parser("dos", help="density of states (and PDOS) on a k-mesh -> picture + JSON")
    common(d)
    d.add_argument("--mesh", type=int, nargs=3, metavar=("N1", "N2", "N3"), help="Monkhorst-Pack mesh (default: 3.5 points per 1/Å)")
    d.add_argument("--method", default="auto", help="tetrahedron, gaussian, fermi-dirac, ... (default: tetrahedron for crystals)")
    d.add_argument("--width", type=float, default=0.05, help="smearing width in eV (default 0.05)")
    d.add_argument("--pdos", default="element", choices=["element", "l", "atom", "element-l", "none"], help="projection (default element)")
    d.set_defaults(func=cmd_dos)

    f = sub.add_parser("formats", help="list the DFT output layouts that can be read")
    f.set_defaults(func=cmd_formats)

    t = sub.add_parser("train", help="train a SLEM model from a YAML/TOML config (checkpoints, metrics.csv)")
    t.add_argument("config", help="training config (.yaml, .yml or .toml); see configs/")
    t.add_argument("--resume", action="store_true", help="continue exactly from <output>/checkpoints/last.pt")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("export", help="write a checkpoint as a TorchScript model file with its metadata")
    e.add_argument("checkpoint", help="training checkpoint (e.g. runs/NAME/checkpoints/last.pt)")
    e.add_argument("-o", "--output", required=True, help="model file to write (e.g. models/NAME.pt)")
    e.add_argument("--name", help="model name in the metadata (default: the config's name)")
    e.add_argument("--raw-weights", action="store_true", help="export the raw weights instead of their moving average")
    e.set_defaults(func=cmd_export)

    dat = sub.add_parser("data", help="make training data: DFT frames for a list of structures")
    dsub = dat.add_subparsers(dest="source", metavar="SOURCE", required=True)
    dp = dsub.add_parser("pyscf", help="run PySCF (RKS for molecules, KRKS for crystals) on every structure",
                         description="One frame per structure (H, S, D in the DeePTB layout), resumable: frames "
                                     "already in DATASET are skipped; run the same command again after an interruption.")
    dp.add_argument("structures", help="structures in any format ase.io.read understands (all images are used)")
    dp.add_argument("--settings", required=True, help="DFT settings (.yaml/.toml), e.g. configs/data/si_pbe_dzvp.yaml")
    dp.add_argument("--out", required=True, help="dataset folder to fill (frame.NNNNNN per structure)")
    dp.add_argument("--workers", type=int, default=1, help="frames computed in parallel processes (default 1)")
    dp.add_argument("--threads", type=int, help="threads per process (default: cores / workers)")
    dp.add_argument("--no-progress", action="store_true", help="no progress bar")
    dp.set_defaults(func=cmd_data_pyscf)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        args.func(args)
    except (CommandError, ValueError, OSError, KeyError) as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"ase-slem {args.command}: error: {msg}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The ``ase-slem`` command: band structures, DOS, densities and model facts, in one line.

    ase-slem bands Si --model si_pbe_dzvp -o bands.png     # predicted by a trained model
    ase-slem dos H2O --model water_pbe_svp -o levels.png   # a molecule: broadened levels, HOMO/LUMO
    ase-slem density Si --model si_pbe_dzvp -o rho.cube    # electron density (cube + PNG slice)
    ase-slem info si_pbe_dzvp                              # what the model is and how accurate
    ase-slem bands PATH -o bands.png        # PATH: DFT output in any format read_operators knows
    ase-slem dos PATH -o dos.png --pdos element
    ase-slem formats                        # the DFT layouts that can be read
    ase-slem train CONFIG [--resume]        # train a SLEM model (configs/*.yaml)
    ase-slem export CHECKPOINT -o models/NAME.pt   # TorchScript model file with metadata
    ase-slem export H.pt:hamiltonian,overlap D.pt:density_matrix -o models/NAME.pt   # one network per operator
    ase-slem data pyscf STRUCTURES --settings S.yaml --out DATASET   # training frames from PySCF

With ``--model``, STRUCTURE is a file ase.io.read understands or a formula: ``ase.build.bulk``
builds it for a periodic model (``Si``), ``ase.build.molecule`` for a molecular one (``H2O``).
Each verb writes its picture and the numbers beside it (JSON, and CSV for bands).  Errors are
one line on stderr with a non-zero exit status.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ._files import publish


class CommandError(Exception):
    """A problem with the user's input, reported as one line."""


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    publish(tmp, path)


def _save_figure(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    fig.savefig(tmp, dpi=150, bbox_inches="tight")
    publish(tmp, path)


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


# ---------------------------------------------------------------------------------------------
# --model: structures, model files, predicted operators
# ---------------------------------------------------------------------------------------------
def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _model_file(name: str) -> tuple[Path, dict]:
    """(path, metadata) of a model: a shipped model's name or a .pt path (no torch needed)."""
    from .model_file import read_metadata, resolve_model_path

    path = resolve_model_path(name)
    return path, read_metadata(path)


def _build_structure(formula: str, periodic: bool | None):
    """``ase.build.bulk(formula)`` for periodic models, ``ase.build.molecule(formula)`` for
    molecular ones (both, in that order, when the model does not say)."""
    from ase.build import bulk, molecule

    hints = {"bulk": "ase.build.bulk has no reference crystal for it",
             "molecule": "not in ase.build.molecule's collection (e.g. H2O, CH4, CH3CH2OH)"}
    builders = {True: ("bulk",), False: ("molecule",)}.get(periodic, ("bulk", "molecule"))
    for name in builders:
        try:
            return {"bulk": bulk, "molecule": molecule}[name](formula)
        except Exception:  # noqa: BLE001 - KeyError, ValueError, ... for names ase does not know
            continue
    if Path(formula).suffix or os.sep in formula:
        raise CommandError(f"{formula}: no such structure file")
    raise CommandError(f"{formula}: no such file, and not a formula ase can build "
                       f"({'; '.join(hints[b] for b in builders)}); give a structure file (.cif, .xyz, POSCAR, ...)")


def _read_structure(spec: str, periodic: bool | None):
    """STRUCTURE -> ase.Atoms: a file ase.io.read understands (its last image), else a formula
    (see :func:`_build_structure`).  Positions in Å."""
    from ase.io import read

    path = Path(spec)
    if path.is_dir():
        raise CommandError(f"{spec} is a folder: with --model, STRUCTURE is a structure file or a formula "
                           "such as Si or H2O")
    if not path.is_file():
        return _build_structure(spec, periodic)
    try:
        return read(spec)
    except Exception as err:  # noqa: BLE001 - ase.io's many reader errors
        raise CommandError(f"{spec}: ase cannot read it ({type(err).__name__}: {_first_line(err)})") from None


def _calculator(path: Path, args):
    """SLEMCalculator of the model file at ``path`` (``--n-electrons`` overrides its count,
    ``--overlap exact`` replaces the network's S by the basis' exact two-centre integrals)."""
    from .calculator import SLEMCalculator

    return SLEMCalculator(str(path), n_electrons=getattr(args, "n_electrons", None),
                          overlap=getattr(args, "overlap", "model"))


def _predicted(args, *, need_crystal: bool = False):
    """(atoms, calc, metadata) for ``--model`` and STRUCTURE; ``need_crystal``: molecules are
    refused (before the network is loaded) with a hint at the verbs that work for them."""
    path, meta = _model_file(args.model)
    atoms = _read_structure(args.path, meta.get("periodic"))
    if need_crystal and (meta.get("periodic") is False or not np.any(atoms.pbc)):
        what = (f"the model {meta.get('name', path.stem)!r} is molecular" if meta.get("periodic") is False
                else f"{args.path} is a molecule (no periodic boundary conditions)")
        raise CommandError(f"{what}, and band structures need a crystal: use 'ase-slem dos {args.path} --model "
                           f"{args.model}' for its levels (HOMO/LUMO) or 'ase-slem density' for its electron density")
    return atoms, _calculator(path, args), meta


def _model_electrons(calc, atoms) -> float:
    """Electrons per cell the model implies (or --n-electrons); a command-line hint when unknown."""
    from .calculator import CalculatorInputError

    try:
        return calc.get_number_of_electrons(atoms)
    except CalculatorInputError:
        raise CommandError(f"the model {calc.model.metadata.get('name')!r} does not say how many electrons the "
                           "structure has (no valence counts, no density matrix): pass --n-electrons N") from None


def _model_title(atoms, meta: dict) -> str:
    return f"{atoms.get_chemical_formula()} ({meta.get('name', 'model')})"


def _operators_input(args, *, need_crystal: bool = False):
    """(atoms, H, S, n_electrons or None, title, extra JSON fields): predicted with --model,
    else read from the DFT output PATH (then n_electrons from --n-electrons or Tr(DS))."""
    if args.model is None:
        if args.overlap != "model":
            raise CommandError("--overlap goes with --model (DFT output brings its own overlap)")
        atoms, ops = _load_operators(args.path)
        return atoms, ops["hamiltonian"], ops["overlap"], _electron_count(args, ops), Path(args.path).name, {}
    atoms, calc, meta = _predicted(args, need_crystal=need_crystal)
    H, S = calc.get_hamiltonian(atoms), calc.get_overlap(atoms)
    return (atoms, H, S, _model_electrons(calc, atoms), _model_title(atoms, meta),
            {"model": meta.get("name"), "structure": atoms.get_chemical_formula()})


def cmd_bands(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from .bands import band_path, band_structure
    from .plotting import plot_bands

    atoms, H, S, n_el, title, extra = _operators_input(args, need_crystal=True)
    path = band_path(atoms, npoints=args.npoints, method=args.path_method)
    bs = band_structure(
        H, S, atoms, path=path,
        reference="fermi" if n_el is not None else None, n_electrons=n_el,
    )
    out = Path(args.output)
    emax = args.emax if args.emax is not None else 8.0  # the interesting part: valence + lowest conduction bands
    ax = plot_bands(bs, emin=args.emin, emax=emax, title=args.title or title)
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
        **extra,
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

    atoms, H, S, n_el, _, extra = _operators_input(args)
    if args.model is not None and not np.any(atoms.pbc):
        _write_levels(args, atoms, H, S, n_el, extra)
        return
    res = dos(
        H, S, atoms, mesh=args.mesh, method=args.method, width=args.width,
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
        **extra,
    }
    _atomic_write_text(out.with_suffix(".json"), json.dumps(table))
    gap = "" if res.gap is None else f", gap {res.gap.gap:.3f} eV"
    ef = "" if res.fermi_level is None else f", E_F {res.fermi_level:.3f} eV"
    print(f"wrote {out} and {out.with_suffix('.json')} ({res.kmesh.nirr} irreducible k-points{ef}{gap})")


# ---------------------------------------------------------------------------------------------
# molecules: a broadened level spectrum
# ---------------------------------------------------------------------------------------------
def frontier_indices(n_levels: int, n_electrons: float) -> tuple[int, int]:
    """Indices (HOMO, LUMO) among ``n_levels`` ascending spin-degenerate levels holding
    ``n_electrons`` (2 per level; for an odd count the half-filled level is the HOMO).  LUMO is
    ``n_levels`` when every level is filled."""
    homo = int(np.ceil(n_electrons / 2 - 1e-9)) - 1
    if homo < 0 or homo >= n_levels:
        raise CommandError(f"{n_electrons:g} electrons do not fit the {n_levels} levels (2 per level) of the basis")
    return homo, homo + 1


def _level_grid(levels: np.ndarray, width: float) -> np.ndarray:
    """Energies (eV) spanning all levels with 6 widths of margin, 4 points per width: fine enough
    to resolve every Gaussian even when core levels stretch the range to hundreds of eV."""
    lo, hi = np.nanmin(levels) - 6 * width - 1.0, np.nanmax(levels) + 6 * width + 1.0
    return np.linspace(lo, hi, int(np.ceil((hi - lo) / (width / 4))) + 1)


def _write_levels(args, atoms, H, S, n_el: float, extra: dict) -> None:
    """``dos`` of a molecule: Gaussian-broadened levels (and PDOS), HOMO/LUMO, picture + JSON."""
    from .dos import dos
    from .plotting import plot_dos
    from .solvers import band_energies

    width = float(args.width)
    if not (np.isfinite(width) and width > 0):
        raise CommandError(f"--width must be a positive broadening in eV, got {args.width}")
    levels = band_energies(H, S, np.zeros((1, 3)))[0]
    homo, lumo = frontier_indices(len(levels), n_el)
    method = "gaussian" if args.method == "auto" else args.method
    res = dos(H, S, atoms, mesh=1, method=method, width=width, egrid=_level_grid(levels, width),
              n_electrons=n_el, pdos=None if args.pdos == "none" else args.pdos)
    e_homo = float(levels[homo])
    e_lumo = float(levels[lumo]) if lumo < len(levels) else None
    gap = None if e_lumo is None else e_lumo - e_homo
    out = Path(args.output)
    emin = args.emin if args.emin is not None else -20.0
    emax = args.emax if args.emax is not None else (gap or 0.0) + 10.0
    ax = plot_dos(res.egrid, res.dos, pdos=res.pdos or None, reference=e_homo, emin=emin, emax=emax,
                  dos_label="DOS (states/eV)",
                  title=f"{extra['structure']} ({extra['model']}): HOMO {e_homo:.2f} eV"
                        + ("" if gap is None else f", LUMO {e_lumo:.2f} eV, gap {gap:.2f} eV"))
    if gap is not None:
        ax.axvline(gap, color="C3", linestyle=":", linewidth=0.9, label="LUMO")
    ax.set_xlabel("$E - E_\\mathrm{HOMO}$ (eV)")
    _save_figure(ax.figure, out)
    table = {
        "unit": "states/eV (spin included)", "n_electrons": n_el, "homo_eV": e_homo, "lumo_eV": e_lumo,
        "gap_eV": gap, "levels_eV": levels.tolist(), "method": res.method, "width_eV": width,
        "energy_eV": res.egrid.tolist(), "dos": res.dos.tolist(),
        "pdos": {k: v.tolist() for k, v in res.pdos.items()}, **extra,
    }
    _atomic_write_text(out.with_suffix(".json"), json.dumps(table))
    lumo_text = "" if gap is None else f", LUMO {e_lumo:.3f} eV, gap {gap:.3f} eV"
    print(f"wrote {out} and {out.with_suffix('.json')} ({len(levels)} levels, HOMO {e_homo:.3f} eV{lumo_text})")


# ---------------------------------------------------------------------------------------------
# density
# ---------------------------------------------------------------------------------------------
def _radial_basis(meta: dict):
    """The model's radial functions (needed to render orbitals in space)."""
    from .orbitals import radial_basis_from_dict

    radial = meta["basis"].get("radial")
    if radial is None:
        raise CommandError(f"the model {meta.get('name')!r} carries no radial functions of its basis "
                           f"({meta['basis'].get('name') or 'unnamed'}), so no density can be drawn in space")
    return radial_basis_from_dict(radial)


def _band_index(band: str, nbands: int, n_electrons: Callable[[], float]) -> int:
    """``--band`` -> band index: an integer (0 = lowest) or homo/lumo (vbm/cbm for crystals),
    which need the electron count (``n_electrons()``, asked for only then)."""
    names = {"homo": 0, "vbm": 0, "lumo": 1, "cbm": 1}
    key = band.strip().lower()
    if key in names:
        n = frontier_indices(nbands, n_electrons())[0] + names[key]
    else:
        try:
            n = int(key)
        except ValueError:
            raise CommandError(f"--band {band}: give a band index (0 = lowest) or homo, lumo, vbm, cbm") from None
    if not 0 <= n < nbands:
        raise CommandError(f"--band {band}: there are {nbands} bands, numbered 0 to {nbands - 1}")
    return n


def _total_density(calc, atoms, spacing: float) -> tuple:
    """(grid e/Å^3, summary text) of the predicted density matrix."""
    from ase.calculators.calculator import PropertyNotImplementedError

    try:
        grid = calc.get_electron_density(spacing=spacing, atoms=atoms)
    except PropertyNotImplementedError as err:
        raise CommandError(f"{_first_line(err)} (--band N draws one band from H and S)") from None
    n_ds = calc.get_density_matrix(atoms).trace_product(calc.get_overlap(atoms))
    text = (f"electrons on the grid {grid.integral:.4f} (Tr(DS) of the predicted density matrix {n_ds:.4f}; "
            f"the model's electron count {_model_electrons(calc, atoms):g})")
    if abs(grid.integral - n_ds) > 0.01 * max(abs(n_ds), 1.0):
        text += (". The grid and Tr(DS) differ by more than 1 %: sharp core orbitals need a finer --spacing"
                 + ("" if calc.parameters.overlap == "exact" else ", and the network's S has errors "
                    "(--overlap exact separates the two)"))
    return grid, text


def _band_density(calc, atoms, meta: dict, args) -> tuple:
    """(grid 1/Å^3, summary text) of |psi_nk|^2 for ``--band`` at ``--kpt`` (fractional)."""
    from .density import orbital_density
    from .solvers import solve_k

    kpt = np.zeros(3) if args.kpt is None else np.asarray(args.kpt, dtype=float)
    if not np.any(atoms.pbc) and np.any(kpt != 0):
        raise CommandError("a molecule has only k = Gamma: drop --kpt")
    radial = _radial_basis(meta)
    w, v = solve_k(calc.get_hamiltonian(atoms), calc.get_overlap(atoms), kpt, eigvals_only=False)
    n = _band_index(args.band, len(w), lambda: _model_electrons(calc, atoms))
    if not np.isfinite(w[n]):
        raise CommandError(f"band {n} was removed by the eigensolver (nearly singular overlap); pick a lower band")
    grid = orbital_density(v[:, n], atoms, radial, kpt, spacing=args.spacing)
    k = ", ".join(f"{x:g}" for x in kpt)
    return grid, f"band {n} at k = ({k}): E = {w[n]:.4f} eV, |psi|^2 integrates to {grid.integral:.4f} on the grid"


def _bond_plane_normal(atoms) -> np.ndarray | None:
    """Unit normal of the plane through atom 0 and its two nearest non-collinear neighbours
    (periodic images included), or None when there are none within 6 Å."""
    from ase.neighborlist import neighbor_list

    i, vec = neighbor_list("iD", atoms, 6.0)
    vec = vec[i == 0]
    if len(vec) < 2:
        return None
    vec = vec[np.argsort(np.linalg.norm(vec, axis=1), kind="stable")]
    cross = np.cross(vec[0], vec[1:])
    size = np.linalg.norm(cross, axis=1)
    ok = np.flatnonzero(size > 1e-3 * np.linalg.norm(vec[0]) * np.linalg.norm(vec[1:], axis=1))
    return None if len(ok) == 0 else cross[ok[0]] / size[ok[0]]


def _slice_plane(grid, atoms, plane: str | None) -> tuple[np.ndarray, float, str]:
    """(unit normal, offset Å, description) of the PNG slice.  ``plane``: Miller indices
    relative to the grid's box, through atom 0.  Default: for a molecule the least-squares plane
    through its atoms; for a crystal the plane through atom 0 and its two nearest neighbours
    (for diamond silicon a {110} plane with the bond zig-zag), else (001)."""
    from .density import _parse_plane

    pos = atoms.get_positions()
    if plane is None and not grid.periodic:
        normal = np.linalg.svd(pos - pos.mean(axis=0))[2][-1] if len(pos) > 2 else np.eye(3)[2]
        return normal, float(pos.mean(axis=0) @ normal), "plane through the atoms"
    if plane is None:
        normal = _bond_plane_normal(atoms)
        if normal is not None:
            return normal, float(pos[0] @ normal), "plane of atom 0 and its nearest neighbours"
        plane = "(001)"
    n = _parse_plane(plane, grid.box)
    n = n / np.linalg.norm(n)
    return n, float(pos[0] @ n), f"plane {plane} through atom 0"


def _write_slice(grid, atoms, png: Path, plane: str | None, unit: str, what: str) -> None:
    """A PNG of ``grid`` on a plane (log scale for molecules, whose core peaks dominate)."""
    import matplotlib

    matplotlib.use("Agg")
    from .density_plot import plot_density_slice

    normal, offset, where = _slice_plane(grid, atoms, plane)
    ax = plot_density_slice(grid, normal=normal, offset=offset, atoms=atoms, log=not grid.periodic, unit=unit,
                            title=f"{what}\n{where}")
    _save_figure(ax.figure, png)


def cmd_density(args) -> None:
    from .density import write_cube

    out = Path(args.output)
    if out.suffix.lower() != ".cube":
        raise CommandError(f"-o {args.output}: name a .cube file (the PNG slice is written beside it)")
    if args.kpt is not None and args.band is None:
        raise CommandError("--kpt goes with --band: it picks the k-point of that band")
    atoms, calc, meta = _predicted(args)
    if args.band is None:
        grid, text = _total_density(calc, atoms, args.spacing)
        unit, what = "e/Å³", f"electron density of {_model_title(atoms, meta)}"
    else:
        grid, text = _band_density(calc, atoms, meta, args)
        unit, what = "1/Å³", f"|psi|^2 of {_model_title(atoms, meta)}"
    write_cube(out, atoms, grid, comment=f"ase_slem {what}, values per bohr^3")
    png = out.with_suffix(".png")
    _write_slice(grid, atoms, png, args.plane, unit, what)
    shape = "x".join(map(str, grid.rho.shape))
    print(f"wrote {out} ({shape} points) and {png}; {text}")


# ---------------------------------------------------------------------------------------------
# info
# ---------------------------------------------------------------------------------------------
def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "none" if value is None else str(value)


def _metric_text(value) -> str:
    """One operator's metrics: ``{"unit": u, "all": x, "onsite H": y, ...}`` -> 'x u (onsite H y, ...)'."""
    if not isinstance(value, dict):
        return _fmt(value)
    unit = {"1": ""}.get(value.get("unit", ""), value.get("unit", ""))  # "1": dimensionless
    rest = [f"{k} {_metric_text(v)}" for k, v in value.items() if k not in ("unit", "all")]
    head = f"{_fmt(value['all'])} {unit}".strip() if "all" in value else ""
    if head and rest:
        return f"{head} ({', '.join(rest)})"
    return head or ", ".join(rest)


def _accuracy_lines(metrics: dict) -> list[str]:
    """Measured errors, held-out test set first; whatever else the metadata carries after."""
    if not metrics or not any(metrics.values()):
        return ["accuracy       not measured (no metrics in the file: an untrained or hand-made model)"]
    order = ["test", "validation"] + [k for k in metrics if k not in ("test", "validation")]
    lines = []
    for section in (k for k in order if metrics.get(k)):
        block = metrics[section]
        label = {"test": "accuracy (test-set MAE, training's final check)",
                 "validation": "validation MAE"}.get(section, section)
        lines.append(f"{label}:")
        entries = block.items() if isinstance(block, dict) else [("", block)]
        lines += [f"  {op:<16s} {_metric_text(v)}" for op, v in entries]
    return lines


def _settings_text(settings: dict) -> str:
    if not settings:
        return "not recorded"
    code = " ".join(str(settings[k]) for k in ("code", "code_version") if settings.get(k))
    rest = [f"{k} {_fmt(v)}" + (" (all electron)" if k == "pseudo" and v is None else "")
            for k, v in settings.items() if k not in ("code", "code_version")]
    return ", ".join(([code] if code else []) + rest)


def _electrons_text(meta: dict) -> str:
    from .calculator import valence_electrons

    counts = valence_electrons(meta)
    if counts is None:
        return "not recorded (Tr(DS) of the predicted D, or --n-electrons)"
    return ", ".join(f"{s} {n:g}" for s, n in counts.items()) + " per atom"


def _baseline_rows(baseline: Optional[dict]) -> list:
    if not baseline:
        return []
    return [("H baseline", f"the network predicts H - H0; H0 = the {baseline['kind']!r} Kohn–Sham matrix of "
                           f"superposed atoms ({baseline['xc']}, {baseline['basis']}, grid level "
                           f"{baseline.get('grids_level')}), one PySCF Fock build per structure, added back")]


def _part_rows(parts: list) -> list:
    return [(f"  network {k + 1}", f"{', '.join(p['operators'])}: {p['network'].get('n_parameters', '?')} parameters, "
                                   f"{p.get('training', {}).get('steps', '?')} steps, from {p.get('source', '?')}")
            for k, p in enumerate(parts)]


def describe_model(meta: dict, path: Path) -> str:
    """Readable summary of a model file's metadata (what ``ase-slem info`` prints)."""
    from .basis import shells_to_string

    basis = meta["basis"]
    cut = meta["cutoffs"]
    net = meta.get("network", {})
    units = meta.get("units", {})
    frames = meta.get("training", {}).get("frames", {})
    periodic = {True: "periodic (crystals)", False: "molecular (isolated molecules, no periodic cell)"}
    shells = ", ".join(f"{el} {shells_to_string(ls)}" for el, ls in basis["shells"].items())
    radial = "radial functions stored: densities can be drawn" if basis.get("radial") else "no radial functions"
    rows = [
        ("file", f"{path} ({path.stat().st_size / 1e6:.2f} MB), format {meta['format_version']}, "
                 f"ase_slem {meta.get('ase_slem_version', '?')}, torch {meta.get('torch_version', '?')}, "
                 f"created {meta.get('created', '?')}"),
        ("system", periodic.get(meta["periodic"], "not recorded")),
        ("species", ", ".join(meta["species"])),
        ("basis", f"{basis.get('name') or 'unnamed'}: {shells} ({radial})"),
        ("cutoffs", f"r_cut {cut['r_cut']:g} Å, graph {cut.get('r_graph', cut['r_cut']):g} Å, "
                    f"bonds {cut.get('r_bond', cut['r_cut']):g} Å"),
        ("DFT settings", _settings_text(meta.get("dft_settings") or {})),
        ("electrons", _electrons_text(meta)),
        ("operators", ", ".join(f"{op} ({units.get(op, '?')})" for op in meta["operators"])),
        *_baseline_rows(meta.get("hamiltonian_baseline")),
        ("network", f"{net.get('type', '?')}, {net.get('n_parameters', '?')} parameters, {meta['dtype']}, "
                    f"{net.get('weights', '?')} weights"
                    + (f", {len(net['parts'])} networks (one per group of operators)" if net.get("parts") else "")),
        *_part_rows(net.get("parts") or []),
        ("training", (f"{meta['training']['steps']} steps" if "steps" in meta.get("training", {}) else
                      "per network, above")
                     + (f", frames {', '.join(f'{k} {v}' for k, v in frames.items())}" if frames else "")),
    ]
    head = f"{meta.get('name', path.stem)}: {meta.get('description') or '(no description)'}"
    card = path.with_suffix(".md")
    tail = [f"{'model card':<14s} {card}: accuracy against DFT on held-out structures, with the commands "
            "that reproduce it"] if card.is_file() else []
    return "\n".join([head, *(f"{k:<14s} {v}" for k, v in rows), *_accuracy_lines(meta.get("metrics") or {}), *tail])


def cmd_info(args) -> None:
    path, meta = _model_file(args.model)
    print(json.dumps(meta, indent=1) if args.json else describe_model(meta, path))


def cmd_formats(args) -> None:
    from .io import FORMATS

    for name, spec in FORMATS.items():
        print(f"{name:14s} {spec[1] if len(spec) > 1 else ''}")


def cmd_train(args) -> None:
    from .train import TrainingDiverged, load_config, train

    configs = [load_config(c, args.set) for c in args.config]  # every config is checked before anything trains
    for path, cfg in zip(args.config, configs):
        if args.no_progress:
            cfg.train.progress = False
        resume = args.resume and (cfg.checkpoint_dir / "last.pt").exists()
        if len(configs) > 1:
            print(f"== {path}: {'resuming' if resume else 'training'} {cfg.output}", flush=True)
        try:
            result = train(cfg, resume=resume)
        except TrainingDiverged as err:
            raise CommandError(str(err)) from None
        except KeyboardInterrupt:
            again = " ".join([*args.config, *(f"--set {o}" for o in args.set)])
            raise CommandError(f"interrupted; continue with: ase-slem train {again} --resume") from None
        print(f"wrote {result.checkpoint} (step {result.step}), {result.best_checkpoint} and {result.metrics_csv}")


def cmd_export(args) -> None:
    from .train import export_checkpoint
    from .train.checkpoint import split_operators
    from .train.export import export_union

    parts = [split_operators(p) for p in args.checkpoint]
    if len(parts) == 1 and parts[0][1] is None:
        out = export_checkpoint(parts[0][0], args.output, use_ema=not args.raw_weights, name=args.name,
                                recommended_overlap=args.recommend_overlap)
    else:
        bare = [p for p, ops in parts if ops is None]
        if bare:
            raise CommandError(f"{bare[0]}: with several networks, name the operators each gives, e.g. "
                               "runs/h/checkpoints/last.pt:hamiltonian,overlap models/d.pt:density_matrix")
        out = export_union(parts, args.output, use_ema=not args.raw_weights, name=args.name,
                           recommended_overlap=args.recommend_overlap)
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
                                  threads_per_worker=args.threads, progress=not args.no_progress,
                                  retry_failed=args.retry_failed)
    except SettingsError as err:
        raise CommandError(str(err)) from None
    except KeyboardInterrupt:
        raise CommandError("interrupted; finished frames are kept: run the same command again to continue") from None
    print(f"{args.out}: {len(report.written)} frames written, {len(report.skipped)} already there, "
          f"{len(report.failed)} failed (see failed.jsonl), {len(report.left_out)} left out (failed before), "
          f"{report.seconds:.0f} s")
    if report.failed:
        raise CommandError(f"{len(report.failed)} frame(s) failed: {', '.join(map(str, report.failed[:10]))}")


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps descriptions and epilogs to the terminal width, keeping their line breaks; indented
    lines (command examples) are left whole, so they can be copied."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(indent + line if line.startswith(" ") else
                         textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent)
                         for line in text.splitlines())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ase-slem",
        description="Electronic structure from LCAO operators (H, S, D), predicted by a trained SLEM model "
                    "or read from DFT output: band structures, DOS, Fermi level, gaps, electron densities.",
        epilog="examples:\n"
               "  ase-slem bands Si --model si_pbe_dzvp -o bands.png\n"
               "  ase-slem dos H2O --model water_pbe_svp -o levels.png\n"
               "  ase-slem density Si --model si_pbe_dzvp -o rho.cube\n"
               "  ase-slem info si_pbe_dzvp\n"
               "  ase-slem bands path/to/dft_output -o bands.png\n"
               "'ase-slem COMMAND --help' explains each command.",
        formatter_class=_HelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    structure_help = ("with --model: a structure file ase can read (.cif, .xyz, POSCAR, ...) or a formula "
                      "(Si -> ase.build.bulk for a periodic model, H2O -> ase.build.molecule for a molecular one)")
    overlap_help = ("with --model: 'model' (default) uses the network's overlap S, 'exact' the exact overlap of the "
                    "model's Gaussian basis (PySCF integrals; slower, needs the basis in the model file)")
    model_help = ("trained model: a shipped model's name (e.g. si_pbe_dzvp; 'ase-slem info NAME' describes it) or "
                  "a .pt file; H and S are predicted for STRUCTURE")

    def common(sp):
        sp.add_argument("path", metavar="STRUCTURE_OR_PATH",
                        help=f"{structure_help}; without --model: DFT output with H and S (a folder or file; "
                             "see 'ase-slem formats')")
        sp.add_argument("--model", metavar="NAME", help=model_help)
        sp.add_argument("--overlap", choices=["model", "exact"], default="model", help=overlap_help)
        sp.add_argument("-o", "--output", required=True, help="picture to write (.png or .pdf); the numbers go beside it")
        sp.add_argument("--n-electrons", type=float, help="valence electrons per cell (default: from the model, "
                        "or Tr(DS) when DFT output has a density matrix)")
        sp.add_argument("--emin", type=float, help="lower energy limit of the plot, eV relative to E_F "
                        "(molecules: to the HOMO, default -20)")
        sp.add_argument("--emax", type=float, help="upper energy limit of the plot, eV relative to E_F (bands: "
                        "default 8; molecules: relative to the HOMO, default LUMO + 10)")

    b = sub.add_parser("bands", help="band structure along a seekpath path -> picture + JSON + CSV",
                       description="Band structure of a crystal along the high-symmetry path of seekpath, energies "
                                   "relative to the Fermi level. Writes the picture, and beside it JSON and CSV.",
                       epilog="example:\n  ase-slem bands Si --model si_pbe_dzvp -o bands.png --npoints 150",
                       formatter_class=_HelpFormatter)
    common(b)
    b.add_argument("--npoints", type=int, default=200, help="k-points along the path (default 200)")
    b.add_argument("--path-method", choices=["seekpath", "ase"], default="seekpath", help="where the path comes from")
    b.add_argument("--title", help="figure title")
    b.set_defaults(func=cmd_bands)

    d = sub.add_parser("dos", help="density of states (and PDOS) on a k-mesh -> picture + JSON",
                       description="Density of states and projected DOS of a crystal on a k-point mesh, with Fermi "
                                   "level and gap; for a molecule (with --model), its Gaussian-broadened levels "
                                   "with HOMO and LUMO. Writes the picture and a JSON file beside it.",
                       epilog="examples:\n  ase-slem dos Si --model si_pbe_dzvp -o dos.png --mesh 8 8 8\n"
                              "  ase-slem dos H2O --model water_pbe_svp -o levels.png --width 0.1",
                       formatter_class=_HelpFormatter)
    common(d)
    d.add_argument("--mesh", type=int, nargs=3, metavar=("N1", "N2", "N3"), help="Monkhorst-Pack mesh (default: 3.5 points per 1/Å)")
    d.add_argument("--method", default="auto", help="tetrahedron, gaussian, fermi-dirac, ... (default: tetrahedron for "
                   "crystals, gaussian for molecules)")
    d.add_argument("--width", type=float, default=0.05, help="smearing width in eV (default 0.05)")
    d.add_argument("--pdos", default="element", choices=["element", "l", "atom", "element-l", "none"], help="projection (default element)")
    d.set_defaults(func=cmd_dos)

    rho = sub.add_parser(
        "density", help="electron density (or one band's |psi|^2) predicted by a model -> cube file + PNG slice",
        description="Electron density of the model's predicted density matrix on a real-space grid, written as a "
                    "Gaussian cube file (e/bohr^3, as VESTA and VMD expect) with a PNG slice beside it; prints the "
                    "electron count integrated over the grid. With --band, the squared Bloch orbital |psi_nk|^2 "
                    "of one band instead (normalized to 1 over the cell).",
        epilog="examples:\n  ase-slem density Si --model si_pbe_dzvp -o rho.cube\n"
               "  ase-slem density Si --model si_pbe_dzvp -o cbm.cube --band cbm --kpt 0.5 0 0.5\n"
               "  ase-slem density H2O --model water_pbe_svp -o homo.cube --band homo",
        formatter_class=_HelpFormatter,
    )
    rho.add_argument("path", metavar="STRUCTURE", help=structure_help.replace("with --model: ", ""))
    rho.add_argument("--model", metavar="NAME", required=True, help=model_help)
    rho.add_argument("-o", "--output", required=True, help="cube file to write (NAME.cube); the slice goes to NAME.png")
    rho.add_argument("--spacing", type=float, default=0.15, help="grid spacing in Å (default 0.15)")
    rho.add_argument("--band", help="draw |psi|^2 of this band instead of the density: an index (0 = lowest) "
                     "or homo, lumo (molecules), vbm, cbm (crystals)")
    rho.add_argument("--kpt", type=float, nargs=3, metavar=("K1", "K2", "K3"),
                     help="k-point of --band, fractional coordinates of the reciprocal cell (default Gamma: 0 0 0)")
    rho.add_argument("--plane", help="plane of the PNG slice, Miller indices through atom 0 (default '(110)' for "
                     "crystals; molecules: the plane through the atoms)")
    rho.add_argument("--n-electrons", type=float, help="electrons per cell (default: from the model)")
    rho.add_argument("--overlap", choices=["model", "exact"], default="model",
                     help=overlap_help.replace("with --model: ", ""))
    rho.set_defaults(func=cmd_density)

    inf = sub.add_parser("info", help="what a model file is: species, basis, DFT settings, accuracy",
                         description="Print a model file's metadata: name, species and basis, cutoffs, the DFT "
                                     "settings of its training data, operators, periodic or molecular, network size, "
                                     "format version and the measured accuracy. Reads no network weights.",
                         epilog="examples:\n  ase-slem info si_pbe_dzvp\n  ase-slem info models/my_model.pt --json",
                       formatter_class=_HelpFormatter)
    inf.add_argument("model", metavar="MODEL", help="a shipped model's name (e.g. si_pbe_dzvp) or a .pt file")
    inf.add_argument("--json", action="store_true", help="print the raw metadata as JSON")
    inf.set_defaults(func=cmd_info)

    f = sub.add_parser("formats", help="list the DFT output layouts that can be read")
    f.set_defaults(func=cmd_formats)

    t = sub.add_parser("train", help="train a SLEM model from a YAML/TOML config (checkpoints, metrics.csv)")
    t.add_argument("config", nargs="+",
                   help="training config (.yaml, .yml or .toml); see configs/. Several run one after the other "
                        "(stages: a later one may fine-tune an earlier one's checkpoint with train.init_from)")
    t.add_argument("--resume", action="store_true",
                   help="continue exactly from <output>/checkpoints/last.pt (with several configs: each run "
                        "that has a checkpoint; finished ones are skipped, the others start)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config setting in every config given, e.g. --set train.steps=2000 or "
                        "--set train.init_from=models/si_pbe_dzvp.pt, or of a file that joins networks "
                        "models/ethanol_pbe_svp.pt:hamiltonian (repeatable; values read as YAML)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("export", help="write a checkpoint as a TorchScript model file with its metadata",
                       description="Write a training checkpoint as a TorchScript model file with its metadata. "
                                   "Several networks can make one file, each giving the operators named after "
                                   "its path: ase-slem export runs/h/checkpoints/last.pt:hamiltonian,overlap "
                                   "models/d.pt:density_matrix -o models/NAME.pt. From a file that already "
                                   "joins networks, PATH:OPERATOR takes the one that gives it "
                                   "(ase-slem export models/ethanol_pbe_svp.pt:density_matrix -o d.pt).")
    e.add_argument("checkpoint", nargs="+",
                   help="training checkpoint (e.g. runs/NAME/checkpoints/last.pt); or several, each as "
                        "PATH:OPERATORS (checkpoints or model files; operators comma-separated; of a "
                        "joined model file, the network that gives them)")
    e.add_argument("-o", "--output", required=True, help="model file to write (e.g. models/NAME.pt)")
    e.add_argument("--name", help="model name in the metadata (default: the config's name)")
    e.add_argument("--raw-weights", action="store_true", help="export the raw weights instead of their moving average")
    e.add_argument("--recommend-overlap", choices=["model", "exact"],
                   help="overlap SLEMCalculator uses by default for this model (exact: analytic integrals of its basis)")
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
    dp.add_argument("--retry-failed", action="store_true",
                    help="compute again the structures failed.jsonl records (left out by default: an SCF that did "
                         "not converge does not converge on a rerun)")
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

"""Datasets from PySCF: one frame per structure, resumable, in parallel processes.

    from ase_slem.io.generate import load_settings, generate_dataset
    settings = load_settings("configs/data/si_pbe_dzvp.yaml")
    generate_dataset(ase.io.read("structures.extxyz", ":"), settings, "data/si_pbe_dzvp", workers=2)

Structure ``n`` of the list becomes ``DATASET/frame.<n>`` (so a frame's index is its structure's
index, whatever order the workers finish in).  Frames already on disk are skipped, every frame
is written atomically (:func:`ase_slem.io.dataset.write_frame`), so an interrupted run is
continued by running the same command again.  An SCF that does not converge is retried with
damping and a level shift; a frame that still fails is never written but recorded, with the
reason, in ``DATASET/failed.jsonl`` and the log; later runs leave it out (``retry_failed=True``
computes it again).  ``DATASET/generation.jsonl`` keeps one line
per finished frame (wall time per stage, energy, gap, band overlap: positive for a crystal
whose bands overlap on its mesh, a (semi)metal that wants ``smearing``; worker pid).

Settings (YAML/TOML or a dict)::

    kind: periodic            # or molecular
    xc: pbe
    basis: gth-dzvp-molopt-sr
    pseudo: gth-pbe           # periodic only; null for all-electron
    # periodic: either explicit meshes ...
    kmesh: [3, 3, 3]          # SCF mesh
    dense_kmesh: [6, 6, 6]    # Fock rebuilt on this mesh (see periodic_operators)
    # ... or lengths: n_i = ceil(L / |a_i|), the same sampling for cells of any size
    kmesh_length: 11.5        # Å (3 for the 2-atom Si cell, 3 for the 8-atom cubic cell)
    dense_kmesh_length: 23.0  # Å (6 for the 2-atom cell, 5 for the cubic cell)
    density_fit: false        # FFTDF (false) or GDF (true)
    ke_cutoff: null           # Hartree; PySCF's default when null
    conv_tol: 1.0e-9
    smearing: null            # periodic: Fermi-Dirac width (eV) for (semi)metals; null: integer occupations
    kpoint_symmetry: false    # periodic: SCF on the irreducible k-points; time_reversal (one of k, -k; any
                              # structure; ~20 % faster) or space_group (symmetric cells only)
    multigrid: false          # periodic: J and Vxc by PySCF's multigrid integration (FFTDF, GTH, LDA/GGA)
    max_distance: null        # Å, block cutoff of the stored operators
    grids_level: null         # molecular: PySCF DFT grid level
"""
from __future__ import annotations

import json
import math
import os
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from ase import Atoms

from .dataset import frame_name, write_frame

__all__ = ["GenerationSettings", "load_settings", "kmesh_for", "run_frame", "generate_dataset", "SettingsError"]


class SettingsError(ValueError):
    """A data-generation settings file that cannot be used; names the offending keys."""


@dataclass
class GenerationSettings:
    """How each frame is computed (see the module docstring for the meaning of each key)."""

    kind: str = "periodic"
    xc: str = "pbe"
    basis: str = "gth-dzvp-molopt-sr"
    pseudo: Optional[str] = "gth-pbe"
    kmesh: Optional[list] = None
    dense_kmesh: Optional[list] = None
    kmesh_length: Optional[float] = None
    dense_kmesh_length: Optional[float] = None
    density_fit: bool = False
    ke_cutoff: Optional[float] = None
    conv_tol: float = 1e-9
    smearing: Optional[float] = None
    kpoint_symmetry: Union[bool, str] = False
    multigrid: bool = False
    max_distance: Optional[float] = None
    grids_level: Optional[int] = None
    charge: int = 0
    extra: dict = field(default_factory=dict)

    def check(self) -> None:
        problems = []
        if self.kind not in ("periodic", "molecular"):
            problems.append(f"kind must be 'periodic' or 'molecular', got {self.kind!r}")
        if self.kind == "periodic":
            if self.kmesh is None and self.kmesh_length is None:
                problems.append("a periodic run needs kmesh or kmesh_length")
            if self.kmesh is not None and self.kmesh_length is not None:
                problems.append("give kmesh or kmesh_length, not both")
            if self.dense_kmesh is not None and self.dense_kmesh_length is not None:
                problems.append("give dense_kmesh or dense_kmesh_length, not both")
            if self.smearing is not None and not (isinstance(self.smearing, (int, float)) and self.smearing > 0):
                problems.append(f"smearing is a Fermi-Dirac width in eV and must be positive (or null), got {self.smearing!r}")
            from .pyscf import KPOINT_SYMMETRY_MODES  # numpy and ase only; PySCF itself is imported later

            if self.kpoint_symmetry not in (False, True, *KPOINT_SYMMETRY_MODES):
                problems.append(f"kpoint_symmetry must be false, time_reversal or space_group, got {self.kpoint_symmetry!r}")
            if self.multigrid and self.density_fit:
                problems.append("multigrid integrates on FFT grids: set density_fit: false")
            for name in ("kmesh", "dense_kmesh"):
                v = getattr(self, name)
                if v is not None and (len(v) != 3 or any(int(x) < 1 for x in v)):
                    problems.append(f"{name} must be three positive integers, got {v!r}")
        if problems:
            raise SettingsError("; ".join(problems))
        _check_pyscf_names(self)


def _check_pyscf_names(s: GenerationSettings) -> None:
    """Unknown basis / pseudopotential names fail here, before any process starts."""
    try:
        from pyscf import gto
        from pyscf.pbc import gto as pgto
    except ImportError as exc:  # pragma: no cover - dft extra missing
        raise SettingsError("PySCF is not installed: pip install 'ase_slem[dft]'") from exc
    try:
        gto.basis.load(s.basis, "Si" if s.kind == "periodic" else "H")
    except Exception:
        try:  # element-specific bases (e.g. gth-*) may lack hydrogen; try a few
            gto.basis.load(s.basis, "C")
        except Exception:
            raise SettingsError(f"unknown basis {s.basis!r} (PySCF cannot load it; e.g. 'def2-svp', 'gth-dzvp-molopt-sr')") from None
    if s.kind == "periodic" and s.pseudo is not None:
        try:
            pgto.pseudo.load(s.pseudo, "Si")
        except Exception:
            try:
                pgto.pseudo.load(s.pseudo, "C")
            except Exception:
                raise SettingsError(f"unknown pseudopotential {s.pseudo!r} (e.g. 'gth-pbe'; null for all-electron)") from None


def load_settings(source: str | os.PathLike | dict) -> GenerationSettings:
    """Settings from a YAML/TOML file or a dict; unknown keys are named in the error."""
    if isinstance(source, dict):
        raw = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise SettingsError(f"settings file {path} does not exist")
        text = path.read_text()
        if path.suffix == ".toml":
            import tomllib

            raw = tomllib.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text) or {}
        if not isinstance(raw, dict):
            raise SettingsError(f"{path}: expected a mapping of settings, got {type(raw).__name__}")
    known = {f.name for f in fields(GenerationSettings)}
    unknown = sorted(set(raw) - known)
    if unknown:
        import difflib

        hints = [f"{k!r}" + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, known, 1)) else "")
                 for k in unknown]
        raise SettingsError(f"unknown settings key(s): {', '.join(hints)}; known: {', '.join(sorted(known))}")
    s = GenerationSettings(**raw)
    s.check()
    return s


def kmesh_for(atoms: Atoms, length: float) -> tuple[int, int, int]:
    """Mesh with n_i = ceil(length / |a_i|): a Born-von Karman supercell at least ``length`` Å long."""
    lengths = np.linalg.norm(np.asarray(atoms.cell[:]), axis=1)
    return tuple(max(1, math.ceil(length / a - 1e-6)) for a in lengths)


def _meshes(atoms: Atoms, s: GenerationSettings):
    kmesh = tuple(s.kmesh) if s.kmesh is not None else kmesh_for(atoms, s.kmesh_length)
    if s.dense_kmesh is not None:
        dense = tuple(s.dense_kmesh)
    elif s.dense_kmesh_length is not None:
        dense = kmesh_for(atoms, s.dense_kmesh_length)
    else:
        dense = None
    return kmesh, dense


CLOSED_GAP_EV = 0.01  # eV: an unconverged crystal with a smaller HOMO-LUMO gap is not retried


def _scf_attempts():
    """(label, damping, level shift) tried in turn when the SCF does not converge."""
    return [("plain", 0.0, 0.0), ("damped", 0.5, 0.2), ("damped+shift", 0.7, 0.5)]


def run_frame(atoms: Atoms, settings: GenerationSettings):
    """One frame (see :func:`ase_slem.io.pyscf.periodic_operators` / ``molecular_operators``).

    Retries a non-converged SCF with damping and a level shift; raises ``RuntimeError`` when
    every attempt fails (the frame must not be written).
    """
    from . import pyscf as ps

    last = None
    for label, damp, shift in _scf_attempts():
        hooks = {"damp": damp, "level_shift": shift} if (damp or shift) else {}
        if settings.kind == "molecular":
            frame = ps.molecular_operators(atoms, settings.xc, settings.basis, charge=settings.charge,
                                           grids_level=settings.grids_level, scf_options=hooks)
        else:
            kmesh, dense = _meshes(atoms, settings)
            frame = ps.periodic_operators(
                atoms, settings.xc, settings.basis, settings.pseudo, kmesh, dense_kmesh=dense,
                density_fit=settings.density_fit, ke_cutoff=settings.ke_cutoff, conv_tol=settings.conv_tol,
                max_distance=settings.max_distance, scf_options=hooks, smearing=settings.smearing,
                kpoint_symmetry=settings.kpoint_symmetry, multigrid=settings.multigrid,
            )
        if frame.results.get("converged"):
            frame.settings["scf_attempt"] = label
            return frame
        last = label
        gap = frame.results.get("gap")
        if settings.kind == "periodic" and not settings.smearing and gap is not None and gap < CLOSED_GAP_EV:
            # states at the Fermi level swap between k-points from cycle to cycle: fixed (insulator)
            # occupations cannot converge, and neither damping nor a level shift has rescued such a frame
            raise RuntimeError(f"SCF did not converge ({label}): the gap closed on the k-mesh "
                               f"(HOMO-LUMO {gap * 1000:.1f} meV < {CLOSED_GAP_EV * 1000:.0f} meV), which the "
                               "insulator occupations of these settings cannot describe; structure left out")
    raise RuntimeError(f"SCF did not converge (tried {', '.join(a[0] for a in _scf_attempts())}; last {last})")


def _worker(index: int, atoms: Atoms, settings: GenerationSettings, out: str, threads: int) -> dict:
    if threads:
        from pyscf import lib

        lib.num_threads(threads)
    t0 = time.perf_counter()
    try:
        frame = run_frame(atoms, settings)
    except Exception as exc:  # recorded, never written
        return {"index": index, "ok": False, "error": f"{type(exc).__name__}: {exc}".splitlines()[0],
                "traceback": traceback.format_exc(limit=3), "seconds": time.perf_counter() - t0}
    frame.results.setdefault("timings", {})["total"] = time.perf_counter() - t0
    write_frame(out, frame, index)
    r = frame.results
    return {"index": index, "ok": True, "seconds": r["timings"]["total"], "timings": r["timings"],
            "energy_eV": r.get("energy"), "gap_eV": r.get("gap"), "band_overlap_eV": r.get("band_overlap"),
            "natoms": len(atoms), "pid": os.getpid(),
            "scf_attempt": frame.settings.get("scf_attempt")}


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as fh:  # one line per record; a crash loses at most the line being written
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


@dataclass
class GenerationReport:
    """What :func:`generate_dataset` did: frame indices written, skipped, failed and left out
    (failed before), wall time."""

    written: list
    skipped: list
    failed: list
    seconds: float
    left_out: list = field(default_factory=list)  # failed in an earlier run, not retried


def generate_dataset(structures: Sequence[Atoms], settings: GenerationSettings | dict | str, out: str | os.PathLike,
                     *, workers: int = 1, threads_per_worker: Optional[int] = None, progress: bool = True,
                     log=print, indices: Optional[Sequence[int]] = None,
                     retry_failed: bool = False) -> GenerationReport:
    """Compute a frame for every structure not yet in ``out`` (see the module docstring).

    ``workers`` processes run frames in parallel, each with ``threads_per_worker`` BLAS/OpenMP
    threads (default: the cores divided among the workers).  ``indices`` restricts the work to
    those structures (frame ``n`` is still ``frame.n`` of the full list, so a later run can fill
    in the others).  Structures ``failed.jsonl`` records are left out (an SCF that did not
    converge does not converge on a rerun) unless ``retry_failed``.
    """
    from tqdm.auto import tqdm

    if not isinstance(settings, GenerationSettings):
        settings = load_settings(settings)
    structures = list(structures)
    if not structures:
        raise SettingsError("no structures to compute")
    for n, a in enumerate(structures):
        if len(a) == 0:
            raise SettingsError(f"structure {n} has no atoms")
        if settings.kind == "periodic" and not a.pbc.all():
            raise SettingsError(f"structure {n} is not periodic along all axes but the settings say kind: periodic")
        if settings.kind == "molecular" and a.pbc.any():
            raise SettingsError(f"structure {n} is periodic but the settings say kind: molecular")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".settings.json.{os.getpid()}"
    tmp.write_text(json.dumps(settings.__dict__, indent=1))
    os.replace(tmp, out / "settings.json")
    wanted = range(len(structures))
    if indices is not None:
        bad = sorted({int(n) for n in indices if not 0 <= int(n) < len(structures)})
        if bad:
            raise SettingsError(f"indices {bad[:5]} are outside the {len(structures)} structures (0..{len(structures) - 1})")
        wanted = sorted({int(n) for n in indices})
    done = [n for n in wanted if (out / frame_name(n)).is_dir()]
    done_set = set(done)
    left_out = []
    failed_log = out / "failed.jsonl"
    if not retry_failed and failed_log.is_file():
        before = {json.loads(line)["index"] for line in failed_log.read_text().splitlines() if line.strip()}
        left_out = [n for n in wanted if n in before and n not in done_set]
        if left_out:
            log(f"leaving out {len(left_out)} structure(s) that failed before ({failed_log}; retry them with "
                "retry_failed=True / --retry-failed)")
    skip = done_set | set(left_out)
    todo = [n for n in wanted if n not in skip]
    if done:
        log(f"{len(done)} of the {len(wanted)} frames asked for already in {out}; computing the other {len(todo)}")
    threads = threads_per_worker or max(1, (os.cpu_count() or 1) // max(1, workers))
    written, failed = [], []
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), desc=f"frames -> {out.name}", unit="frame", disable=not progress)

    def record(res: dict) -> None:
        if res["ok"]:
            written.append(res["index"])
            _append_jsonl(out / "generation.jsonl", res)
        else:
            failed.append(res["index"])
            _append_jsonl(out / "failed.jsonl", res)
            (tqdm.write if progress else log)(f"frame {res['index']} FAILED, not written: {res['error']}")
        bar.update(1)
        bar.set_postfix(last=f"{res['seconds']:.0f}s", failed=len(failed))

    if workers <= 1:
        for n in todo:
            record(_worker(n, structures[n], settings, str(out), threads))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_worker, n, structures[n], settings, str(out), threads) for n in todo]
            for fut in as_completed(futures):
                record(fut.result())
    bar.close()
    return GenerationReport(sorted(written), done, sorted(failed), time.perf_counter() - t0, left_out)

"""Readers and writers of LCAO operators from DFT codes; one entry point, :func:`read_operators`.

Every reader returns ``(atoms, ops)``: an ``ase.Atoms`` (Å) and a dict of
:class:`~ase_slem.operators.RealSpaceOperator` in our orbital order (``"hamiltonian"`` in eV,
``"overlap"``, and ``"density_matrix"`` where the source has one).  Formats live in their own
modules (``ase_slem.io.<format>``, each with ``read(path, **kwargs)``) and are imported only when
used.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path

__all__ = ["read_operators", "detect_format", "FORMATS", "UnknownFormatError"]

#: format name -> (module, what the detector looks for)
FORMATS: dict[str, tuple[str, str]] = {
    "deeptb": ("deeptb", "DeePTB/dftio folder: atomic_numbers.dat, positions.dat, basis.dat and "
                         "hamiltonians.h5 / overlaps.h5 / density_matrices.h5 (also our dataset frames)"),
    "deeph": ("deeph", "DeepH folder: legacy (element.dat, lat.dat, site_positions.dat, orbital_types.dat, "
                       "hamiltonians.h5) or new (POSCAR, info.json, hamiltonian.h5 / overlap.h5)"),
    "abacus": ("abacus", "ABACUS run: a folder with STRU and OUT.<suffix>/ holding *.csr matrices "
                         "(data-HR-sparse_SPIN0.csr, hrs1_nao.csr ...), or a .csr file"),
    "siesta": ("siesta", "SIESTA run: a folder with a .HSX file (and .fdf), or the .HSX file"),
}


class UnknownFormatError(ValueError):
    """The path is not in any layout :func:`read_operators` recognises."""


def detect_format(path: str | os.PathLike) -> str:
    """Name of the format of ``path`` (a key of :data:`FORMATS`), from the files present.

    Each format module decides with its own ``detect(path)``; formats are tried in the order
    of :data:`FORMATS` (DeePTB before DeepH: both use ``hamiltonians.h5``).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    for fmt in FORMATS:
        module = _module(fmt)
        if module is not None and module.detect(p):
            return fmt
    raise UnknownFormatError(_unknown_message(p.parent if p.is_file() else p))


def _module(fmt: str):
    """The reader module of ``fmt``, or None when this installation lacks it."""
    name = f"{__name__}.{FORMATS[fmt][0]}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return None
        raise


def _unknown_message(folder: Path) -> str:
    lines = [f"{folder} is not in a recognised operator layout."]
    frames = sorted(x.name for x in folder.glob("frame.*") if x.is_dir())
    subdirs = sorted(x.name for x in folder.iterdir() if x.is_dir()) if folder.is_dir() else []
    if frames:
        lines.append(
            f"It looks like an ase_slem dataset ({len(frames)} frame folders): read one frame folder, "
            "or all of them with ase_slem.io.dataset.iter_frames."
        )
    elif subdirs:
        lines.append(f"Its subfolders ({', '.join(subdirs[:8])}) may hold the data: pass one of them.")
    lines.append("Recognised layouts:")
    lines += [f"  - {name}: {desc}" for name, (_, desc) in FORMATS.items()]
    return "\n".join(lines)


def read_operators(path: str | os.PathLike, format: str | None = None, **kwargs):
    """Read a structure and its operators from any supported DFT output; like ``ase.io.read``.

    Parameters
    ----------
    path:
        a folder (or file) in one of the layouts of :data:`FORMATS`.
    format:
        force a format instead of detecting it.
    kwargs:
        passed to the format's reader (e.g. ``index=`` for a multi-frame DeePTB folder).

    Returns
    -------
    ``(atoms, ops)`` with ``ops["hamiltonian"]`` (eV), ``ops["overlap"]`` and, where the source
    has one, ``ops["density_matrix"]`` (spin-summed), all in our orbital order.
    """
    fmt = format or detect_format(path)
    if fmt not in FORMATS:
        raise UnknownFormatError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    module = _module(fmt)
    if module is None:
        raise UnknownFormatError(
            f"{path} is in {fmt} layout, but this installation has no {fmt} reader (ase_slem.io.{FORMATS[fmt][0]})"
        )
    return module.read(path, **kwargs)

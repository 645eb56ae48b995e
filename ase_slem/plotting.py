"""Band-structure and DOS figures (matplotlib only; the numbers come from bands.py / dos.py).

Every figure shows energies relative to a reference (the Fermi level when the band structure
carries one), in eV, with a dashed line at E = 0, special-point labels with vertical lines on the
k axis, and axis labels with units.  Fat bands draw the Mulliken weight of orbital groups (from
:func:`ase_slem.bands.band_character`) as markers whose area grows with the weight.

Without a display (no ``DISPLAY`` on Linux, no backend chosen) the Agg backend is used, so the
functions work on clusters and in CI; ``filename`` writes the figure (PNG, PDF, SVG...).
"""
from __future__ import annotations

import os
import sys
from typing import Mapping, Sequence

import numpy as np

if (
    "matplotlib.pyplot" not in sys.modules
    and not os.environ.get("MPLBACKEND")
    and sys.platform.startswith("linux")
    and not os.environ.get("DISPLAY")
    and not os.environ.get("WAYLAND_DISPLAY")
):
    import matplotlib

    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plot_bands", "plot_dos", "plot_bands_and_dos", "special_point_ticks"]

FERMI_LINE = dict(color="0.3", linestyle="--", linewidth=0.8, zorder=1)
SPECIAL_LINE = dict(color="0.6", linewidth=0.6, zorder=0)
BAND_STYLE = dict(color="C0", linewidth=1.2, zorder=4)  # above fat-band markers
GROUP_COLORS = ("C3", "C2", "C1", "C4", "C5", "C6", "C8", "C9", "C7")


def _pretty(label: str) -> str:
    """ASE/seekpath label -> plot text: G/GAMMA -> Γ, X1 -> X$_1$."""
    if label in ("G", "GAMMA", "Gamma"):
        return "Γ"
    head = label.rstrip("0123456789")
    digits = label[len(head):]
    return f"{head}$_{{{digits}}}$" if digits else label


def special_point_ticks(path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(x of each k-point, x of the special points, their labels) for an ASE BandPath.

    Jumps in the path (two special points on neighbouring k-points at the same x) are merged
    into one tick labelled ``"U|K"``.
    """
    x, xs, labels = path.get_linear_kpoint_axis()
    ticks, names = [], []
    for xv, name in zip(xs, labels):
        name = _pretty(name)
        if ticks and abs(xv - ticks[-1]) < 1e-10:
            if name != names[-1]:
                names[-1] = f"{names[-1]}|{name}"
            continue
        ticks.append(float(xv))
        names.append(name)
    return np.asarray(x, dtype=float), np.asarray(ticks), names


def _new_axes(ax, figsize):
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
    return ax


def _energy_label(reference_is_fermi: bool) -> str:
    return "$E - E_\\mathrm{F}$ (eV)" if reference_is_fermi else "$E$ (eV)"


def _limits(emin, emax, values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    lo = float(finite.min()) if emin is None else float(emin)
    hi = float(finite.max()) if emax is None else float(emax)
    if emin is None or emax is None:
        pad = 0.03 * (hi - lo if hi > lo else 1.0)
        lo, hi = (lo - pad if emin is None else lo), (hi + pad if emax is None else hi)
    if not hi > lo:
        raise ValueError(f"emin ({emin}) must be below emax ({emax})")
    return lo, hi


def _fat_weights(weights, shape) -> dict[str, np.ndarray]:
    if isinstance(weights, np.ndarray):
        weights = {"weight": weights}
    if not isinstance(weights, Mapping) or not weights:
        raise ValueError("weights must be a dict name -> (nk, nbands) array, e.g. from bands.band_character()")
    out = {}
    for name, w in weights.items():
        w = np.asarray(w, dtype=float)
        if w.shape != tuple(shape):
            raise ValueError(
                f"weights[{name!r}] has shape {w.shape}, but the bands have (nk, nbands) = {tuple(shape)}"
            )
        out[str(name)] = w
    return out


def _save(ax, filename):
    if filename is not None:
        ax.figure.savefig(filename, dpi=150, bbox_inches="tight")


def plot_bands(
    bs,
    ax=None,
    emin: float | None = None,
    emax: float | None = None,
    reference: float | None = None,
    weights: Mapping[str, np.ndarray] | np.ndarray | None = None,
    labels: Sequence[str] | None = None,
    title: str | None = None,
    filename: str | os.PathLike | None = None,
    *,
    color: str = BAND_STYLE["color"],
    fat_scale: float = 30.0,
    spin: int = 0,
):
    """Draw a band structure; returns the matplotlib Axes.

    Parameters
    ----------
    bs:
        ``ase.spectrum.band_structure.BandStructure`` (e.g. from :func:`ase_slem.bands.band_structure`).
    emin, emax:
        Energy window in eV relative to the reference (default: all bands).
    reference:
        Energy (eV) drawn as E = 0; default ``bs.reference`` (the Fermi level when the band
        structure was made with ``reference="fermi"``).  The y axis reads E - E_F when the
        reference is not zero.
    weights:
        Fat bands: name -> (nk, nbands) weights in [0, 1] (from ``band_character``), each group
        drawn as markers of area ``fat_scale * weight`` in its own colour, with a legend.
    labels:
        Tick labels replacing the special-point names (one per tick, after merging jumps).
    title, filename:
        Figure title; path to save the figure to.

    One Line2D per band (in ``ax.lines`` before the reference line), x = the path's linear
    k axis (1/Angstrom), y = E - reference.
    """
    energies = np.asarray(bs.energies, dtype=float)
    if energies.ndim != 3:
        raise ValueError(f"bs.energies must have shape (nspins, nk, nbands); got {energies.shape}")
    if not 0 <= spin < energies.shape[0]:
        raise ValueError(f"spin={spin} but the band structure has {energies.shape[0]} spin channel(s)")
    ref = float(bs.reference if reference is None else reference)
    e = energies[spin] - ref
    x, ticks, names = special_point_ticks(bs.path)
    if len(x) != e.shape[0]:
        raise ValueError(f"the path has {len(x)} k-points but the energies {e.shape[0]}")
    if labels is not None:
        if len(labels) != len(ticks):
            raise ValueError(f"labels has {len(labels)} entries for {len(ticks)} special points ({names})")
        names = list(labels)
    lo, hi = _limits(emin, emax, e)
    ax = _new_axes(ax, (6.0, 4.5))
    ax.plot(x, e, **{**BAND_STYLE, "color": color})
    if weights is not None:
        groups = _fat_weights(weights, e.shape)
        xx = np.broadcast_to(x[:, None], e.shape)
        for g, (name, w) in enumerate(groups.items()):
            ax.scatter(
                xx.ravel(), e.ravel(), s=fat_scale * np.clip(w.ravel(), 0, None),
                color=GROUP_COLORS[g % len(GROUP_COLORS)], alpha=0.45, linewidths=0, label=name, zorder=3,
            )
        ax.legend(loc="best", fontsize="small", markerscale=0.6)
    for t in ticks:
        ax.axvline(t, **SPECIAL_LINE)
    ax.axhline(0.0, **FERMI_LINE)
    ax.set_xticks(ticks)
    ax.set_xticklabels(names)
    ax.set_xlim(x[0], x[-1])
    ax.set_ylim(lo, hi)
    ax.set_ylabel(_energy_label(ref != 0.0))
    ax.set_xlabel("wave vector")
    if title:
        ax.set_title(title)
    _save(ax, filename)
    return ax


def plot_dos(
    energies: np.ndarray,
    dos: np.ndarray,
    pdos: Mapping[str, np.ndarray] | None = None,
    ax=None,
    emin: float | None = None,
    emax: float | None = None,
    reference: float = 0.0,
    orientation: str = "horizontal",
    title: str | None = None,
    filename: str | os.PathLike | None = None,
    *,
    fill: bool = True,
    color: str = "0.2",
    dos_label: str = "DOS (states/eV/cell)",
):
    """Draw a (projected) density of states; returns the Axes.

    ``energies`` (nE,) eV; ``dos`` (nE,) states/eV per cell; ``pdos`` name -> (nE,) curves.
    ``reference`` (eV) is drawn as E = 0 (pass the Fermi level).  ``orientation``:
    ``"horizontal"`` puts energy on the x axis; ``"vertical"`` on the y axis, to sit beside a
    band structure.  The total DOS is ``ax.lines[0]``, then one line per PDOS group.
    """
    e = np.asarray(energies, dtype=float)
    d = np.asarray(dos, dtype=float)
    if e.ndim != 1 or d.shape != e.shape:
        raise ValueError(f"energies and dos must be 1D arrays of the same length; got {e.shape} and {d.shape}")
    if orientation not in ("horizontal", "vertical"):
        raise ValueError(f"orientation must be 'horizontal' (energy on x) or 'vertical' (energy on y), not {orientation!r}")
    curves = {}
    for name, p in (pdos or {}).items():
        p = np.asarray(p, dtype=float)
        if p.shape != e.shape:
            raise ValueError(f"pdos[{name!r}] has shape {p.shape}, the energy grid {e.shape}")
        curves[str(name)] = p
    er = e - float(reference)
    lo, hi = _limits(emin, emax, er)
    vertical = orientation == "vertical"
    ax = _new_axes(ax, (2.5, 4.5) if vertical else (6.0, 3.5))

    def draw(values, **style):
        return ax.plot(values, er, **style) if vertical else ax.plot(er, values, **style)

    draw(d, color=color, linewidth=1.2, label="total")
    if fill:
        (ax.fill_betweenx if vertical else ax.fill_between)(er, 0, d, color=color, alpha=0.15, linewidth=0)
    for g, (name, p) in enumerate(curves.items()):
        draw(p, color=GROUP_COLORS[g % len(GROUP_COLORS)], linewidth=1.0, label=name)
    window = (er >= lo) & (er <= hi)
    top = max([float(np.nanmax(c[window])) for c in [d, *curves.values()] if window.any()] + [1e-12])
    ref_label = _energy_label(float(reference) != 0.0)
    if vertical:
        ax.axhline(0.0, **FERMI_LINE)
        ax.set_ylim(lo, hi)
        ax.set_xlim(0, 1.05 * top)
        ax.set_xlabel(dos_label)
        ax.set_ylabel(ref_label)
    else:
        ax.axvline(0.0, **FERMI_LINE)
        ax.set_xlim(lo, hi)
        ax.set_ylim(0, 1.05 * top)
        ax.set_ylabel(dos_label)
        ax.set_xlabel(ref_label)
    if curves:
        ax.legend(loc="best", fontsize="small")
    if title:
        ax.set_title(title)
    _save(ax, filename)
    return ax


def plot_bands_and_dos(
    bs,
    energies: np.ndarray,
    dos: np.ndarray,
    pdos: Mapping[str, np.ndarray] | None = None,
    emin: float | None = None,
    emax: float | None = None,
    reference: float | None = None,
    weights: Mapping[str, np.ndarray] | None = None,
    title: str | None = None,
    filename: str | os.PathLike | None = None,
):
    """Band structure (left) and DOS (right) on a shared energy axis; returns (fig, (ax_bands, ax_dos)).

    The DOS ``energies`` are absolute (eV) and shifted by the same reference as the bands
    (default ``bs.reference``).
    """
    ref = float(bs.reference if reference is None else reference)
    fig, (ax_b, ax_d) = plt.subplots(
        1, 2, figsize=(8.0, 4.5), sharey=True, gridspec_kw=dict(width_ratios=[3, 1], wspace=0.05)
    )
    plot_bands(bs, ax=ax_b, emin=emin, emax=emax, reference=ref, weights=weights)
    lo, hi = ax_b.get_ylim()
    plot_dos(energies, dos, pdos, ax=ax_d, emin=lo, emax=hi, reference=ref, orientation="vertical")
    ax_d.set_ylabel("")
    ax_d.tick_params(labelleft=False)
    if title:
        fig.suptitle(title)
    if filename is not None:
        fig.savefig(filename, dpi=150, bbox_inches="tight")
    return fig, (ax_b, ax_d)

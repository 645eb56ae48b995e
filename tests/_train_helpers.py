"""Small frames and configs for the training / model-file tests (made on the fly, seconds)."""
from __future__ import annotations

import copy

import numpy as np
from ase.build import bulk, molecule

from ase_slem.io.dataset import Frame


def sk_silicon_frames(n: int, seed: int = 0, rattle: float = 0.1, cubic: bool = True):
    """``n`` rattled diamond-silicon cells, 8-atom cubic (or 2-atom primitive with ``cubic=False``),
    with exact Slater-Koster H (eV) and S (1s1p)."""
    from ase_slem.tightbinding import slater_koster_operators

    frames = []
    for k in range(n):
        atoms = bulk("Si", "diamond", a=5.43, cubic=cubic)
        atoms.rattle(rattle, seed=seed + k)
        H, S = slater_koster_operators(atoms)
        settings = {"code": "slater-koster", "basis": "sk-sp3", "xc": None}
        frames.append(Frame(atoms, {"hamiltonian": H, "overlap": S}, H.basis, settings, {}))
    return frames


def water_frames(n: int, basis: str = "sto-3g", seed: int = 0):
    """``n`` rattled water molecules with PySCF PBE H (eV), S and D."""
    from ase_slem.io.pyscf import molecular_operators

    frames = []
    for k in range(n):
        atoms = molecule("H2O")
        atoms.rattle(0.05, seed=seed + k)
        frames.append(molecular_operators(atoms, "pbe", basis, conv_tol=1e-9, grids_level=1))
    return frames


TINY = {
    "name": "tiny",
    "data": {"path": "in-memory", "operators": ["hamiltonian", "overlap"], "split": [0.6, 0.2, 0.2]},
    "model": {"r_cut": 3.0, "channels": 2, "n_layers": 1, "latent_dim": 8, "mlp_hidden": 8, "num_radial": 4},
    "train": {"steps": 20, "lr": 0.01, "eval_every": 5, "checkpoint_every": 5, "progress": False},
}


def tiny_config(output, **sections) -> dict:
    """The tiny config dict with ``output`` and per-section overrides, e.g. ``train={"steps": 4}``."""
    cfg = copy.deepcopy(TINY)
    cfg["output"] = str(output)
    for sec, values in sections.items():
        if isinstance(values, dict):
            cfg[sec].update(values)
        else:
            cfg[sec] = values
    return cfg


def quiet(_msg: str) -> None:
    """A log function that drops the progress lines."""


def finite_state(state_dict) -> bool:
    return all(bool(np.isfinite(v.detach().numpy()).all()) for v in state_dict.values() if v.is_floating_point())


def export_untrained(path, shells, periodic, basis_name=None, settings=None, operators=None, seed=0,
                     dtype="float32"):
    """A tiny untrained SLEM (seeded weights) exported to ``path`` as a model file.

    ``shells`` {element: [l, ...]}; ``basis_name`` a PySCF basis whose radial functions go into
    the metadata (needed for densities and the exact overlap); ``settings`` the DFT settings
    recorded in it (electron counts come from them, e.g. ``"pseudo": "gth-pbe"``).
    """
    import torch

    from ase_slem.train.checkpoint import build_model
    from ase_slem.train.export import export_model, pyscf_radial_basis, untrained_metadata

    torch.manual_seed(seed)
    args = dict(basis=shells, r_cut=3.0, channels=2, n_layers=1, latent_dim=8, mlp_hidden=8, num_radial=4)
    if operators:
        args["operators"] = operators
    model = build_model(args, dtype)
    meta = untrained_metadata(model, path.stem, periodic=periodic)
    if basis_name:
        meta["basis"]["name"] = basis_name
        meta["basis"]["radial"] = pyscf_radial_basis(basis_name, shells)
    meta["dft_settings"] = settings or {}
    return export_model(model, path, meta, check=False)


def train_water_model(root, steps: int = 10):
    """A tiny SLEM trained ``steps`` steps on 5 PySCF PBE/sto-3g water frames (H, S and D) and
    exported with its measured metrics to ``root/water_tiny.pt`` (about 8 s)."""
    from ase_slem.train.config import config_from_dict
    from ase_slem.train.export import export_checkpoint
    from ase_slem.train.loop import train

    cfg = config_from_dict(tiny_config(root / "run", name="water_tiny", description="tiny test model of water",
                                       data={"operators": ["hamiltonian", "overlap", "density_matrix"]},
                                       train={"steps": steps}))
    res = train(cfg, frames=water_frames(5, seed=1), log=quiet)
    return export_checkpoint(res.checkpoint, root / "water_tiny.pt")

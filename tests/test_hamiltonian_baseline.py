"""The Hamiltonian baseline H0 (superposed-atom Kohn–Sham matrix) and Δ-learning on it: H0 is a
rotation-covariant Hermitian operator close to the SCF Hamiltonian; a model trained on H - H0
learns the difference, its band term and its predictions add H0 back, and a stage can switch the
baseline on for a model trained without one."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from scipy.linalg import eigh
from scipy.spatial.transform import Rotation

from _train_helpers import quiet, tiny_config, water_frames
from ase_slem.hamiltonian_baseline import BaselineError, baseline_settings, hamiltonian_baseline
from ase_slem.io.dataset import read_frame, write_frame
from ase_slem.io.deeptb import add_operator
from ase_slem.train import train
from ase_slem.train.checkpoint import load_checkpoint
from ase_slem.train.config import ConfigError, config_from_dict
from ase_slem.train.data import TrainingDataError

pytest.importorskip("pyscf", reason="PySCF (the 'dft' extra) computes H0 and the reference frames")
torch.set_num_threads(1)

SETTINGS = baseline_settings("minao", "pbe", "sto-3g", 1)


def _levels(h, s):
    return eigh(h.to_sparse().toarray(), s.to_sparse().toarray(), eigvals_only=True)


@pytest.fixture(scope="module")
def water():
    return water_frames(1, "sto-3g", seed=3)[0]


def test_baseline_is_hermitian_near_the_scf_hamiltonian_and_rotates_with_the_molecule(water):
    h0 = hamiltonian_baseline(water.atoms, SETTINGS)
    h, s = water.operators["hamiltonian"], water.operators["overlap"]
    assert h0.name == "hamiltonian_baseline" and not h0.periodic
    dense = h0.to_sparse().toarray()
    assert dense.shape == (7, 7) and np.allclose(dense, dense.T)
    # H0 follows H as the geometry changes: an O-H bond stretched and bent by 0.1 A moves H by
    # 0.35 eV per element on average, H - H0 by 0.02 eV
    moved = water.atoms.copy()
    moved.positions[1] += [0.0, 0.1, 0.08]
    from ase_slem.io.pyscf import molecular_operators

    other = molecular_operators(moved, "pbe", "sto-3g", conv_tol=1e-9, grids_level=1)
    d_h = other.operators["hamiltonian"].to_sparse().toarray() - h.to_sparse().toarray()
    d_h0 = hamiltonian_baseline(moved, SETTINGS).to_sparse().toarray() - dense
    assert np.abs(d_h - d_h0).mean() < 0.15 * np.abs(d_h).mean()
    # ... but it is not the SCF matrix: its levels differ by eV (no charge transfer to O)
    e0 = _levels(h0, s)
    assert np.abs(_levels(h, s) - e0).max() > 1.0
    # rotated molecule: same levels (up to the integration grid, which does not rotate)
    rot = water.atoms.copy()
    rot.positions = rot.positions @ Rotation.random(random_state=1).as_matrix().T + [0.3, -0.2, 0.1]
    s_rot = molecular_operators(rot, "pbe", "sto-3g", conv_tol=1e-9, grids_level=1).operators["overlap"]
    assert np.abs(_levels(hamiltonian_baseline(rot, SETTINGS), s_rot) - e0).max() < 5e-3


def test_bad_structures_and_settings_are_named():
    with pytest.raises(BaselineError, match="periodic"):
        hamiltonian_baseline(bulk("Si"), SETTINGS)
    with pytest.raises(BaselineError, match="no atoms"):
        hamiltonian_baseline(Atoms(), SETTINGS)
    with pytest.raises(BaselineError, match="unknown Hamiltonian baseline 'sad'"):
        baseline_settings("sad", "pbe", "sto-3g")


def _water_set(root, n=4, with_baseline=True):
    for k, fr in enumerate(water_frames(n, "sto-3g")):
        path = write_frame(root, fr, k)
        if with_baseline:
            add_operator(path, "hamiltonian_baseline", hamiltonian_baseline(fr.atoms, SETTINGS))
    return root


def test_a_frame_stores_its_baseline_beside_h(tmp_path, water):
    path = write_frame(tmp_path / "set", water, 0)
    h0 = hamiltonian_baseline(water.atoms, SETTINGS)
    add_operator(path, "hamiltonian_baseline", h0)
    back = read_frame(path)
    assert set(back.operators) == {"hamiltonian", "overlap", "density_matrix", "hamiltonian_baseline"}
    assert back.operators["hamiltonian_baseline"].max_abs_difference(h0) < 1e-12
    assert not any(p.name.startswith(".tmp") for p in path.iterdir())
    with pytest.raises(ValueError, match="unknown operator 'fock'"):
        add_operator(path, "fock", h0)


def test_delta_model_learns_h_minus_h0_and_predicts_h(tmp_path, benchmark_script):
    from ase_slem.model_file import load_model, predict
    from ase_slem.train.band_loss import batch_band_terms
    from ase_slem.train.data import collate, make_sample
    from ase_slem.train.export import export_checkpoint

    root = _water_set(tmp_path / "water")
    frames = [read_frame(p) for p in sorted(root.iterdir())]
    # the sample's H target is H - H0, and the band term adds H0 back to the outputs
    smp = make_sample(frames[0], "f0", ["O", "H"], 5, 4.0, 4.0, ["hamiltonian", "overlap"], torch.float64, True)
    plain = make_sample(frames[0], "f0", ["O", "H"], 5, 4.0, 4.0, ["hamiltonian", "overlap"], torch.float64)
    assert torch.allclose(smp.targets["hamiltonian"][0] + smp.baseline[0], plain.targets["hamiltonian"][0])
    assert torch.allclose(smp.targets["hamiltonian"][1] + smp.baseline[1], plain.targets["hamiltonian"][1])
    from ase_slem.train.band_loss import band_reference
    from ase_slem.train.data import padded_orbital_mask

    mask = padded_orbital_mask([5, 1], 5)
    for sm in (smp, plain):
        sm.band_refs = [band_reference(frames[0], mask, sm.species, 1)]
    batch = collate([smp, smp])
    outputs = {"hamiltonian_onsite": batch.targets["hamiltonian"][0], "hamiltonian_bond": batch.targets["hamiltonian"][1]}
    band, _ = batch_band_terms(batch.band_refs, outputs, batch, 1, None)
    assert float(band) < 1e-9
    # trained and exported: the model file names the baseline and its H is network + H0
    cfg = tiny_config(tmp_path / "run", data={"path": str(root), "split": [0.5, 0.25, 0.25]},
                      model={"r_cut": 4.0, "hamiltonian_baseline": "minao"},
                      train={"steps": 4, "eval_every": 2, "checkpoint_every": 2, "band_weight": 0.5})
    res = train(config_from_dict(cfg), log=quiet)
    model = load_model(export_checkpoint(res.checkpoint, tmp_path / "delta.pt"))
    assert model.metadata["hamiltonian_baseline"] == SETTINGS
    from ase_slem.cli import describe_model

    assert "predicts H - H0" in describe_model(model.metadata, tmp_path / "delta.pt")
    atoms = molecule("H2O")
    full = predict(model, atoms)["hamiltonian"].to_sparse().toarray()
    net = predict(model, atoms, baseline=False)["hamiltonian"].to_sparse().toarray()
    assert np.allclose(full - net, hamiltonian_baseline(atoms, SETTINGS).to_sparse().toarray(), atol=1e-6)
    # the accuracy benchmark compares the network with H - H0, whether or not a frame stores H0
    stored = benchmark_script("model_accuracy").block_mae(model, frames, ["a", "b", "c", "d"])
    fresh = [read_frame(p) for p in sorted(root.iterdir())]
    for fr in fresh:
        del fr.operators["hamiltonian_baseline"]
    again = benchmark_script("model_accuracy").block_mae(model, fresh, ["a", "b", "c", "d"])
    dense = [np.abs(predict(model, fr.atoms)["hamiltonian"].to_sparse().toarray()
                    - fr.operators["hamiltonian"].to_sparse().toarray()).mean() for fr in frames]
    assert stored["hamiltonian"]["all"] == pytest.approx(again["hamiltonian"]["all"], rel=1e-4)
    assert stored["hamiltonian"]["all"] < 3 * 1000 * np.mean(dense)  # meV, not the size of H0
    # frames without H0 are a clear error naming the script that adds it
    bare = _water_set(tmp_path / "bare", 3, with_baseline=False)
    cfg_bare = dict(cfg, output=str(tmp_path / "run_bare"), data=dict(cfg["data"], path=str(bare)))
    with pytest.raises(TrainingDataError, match="add_hamiltonian_baseline.py"):
        train(config_from_dict(cfg_bare), log=quiet)
    with pytest.raises(ConfigError, match="hamiltonian_baseline"):
        config_from_dict(dict(cfg, model=dict(cfg["model"], hamiltonian_baseline="sad")))


def test_a_stage_can_switch_the_baseline_on_and_rescales_the_h_head(tmp_path):
    root = _water_set(tmp_path / "water")
    base_cfg = tiny_config(tmp_path / "base", data={"path": str(root), "split": [0.5, 0.25, 0.25]},
                           model={"r_cut": 4.0}, train={"steps": 4, "eval_every": 2, "checkpoint_every": 2})
    base = train(config_from_dict(base_cfg), log=quiet)
    stage = dict(base_cfg, output=str(tmp_path / "delta"),
                 model=dict(base_cfg["model"], hamiltonian_baseline="minao"),
                 train=dict(base_cfg["train"], init_from=str(base.checkpoint), steps=1, lr=1e-12, min_lr=1e-12,
                            warmup_steps=0))
    res = train(config_from_dict(stage), log=quiet)
    b, d = load_checkpoint(base.checkpoint), load_checkpoint(res.checkpoint)
    key = "heads.0.norm_node.sigma"  # the H head (heads: hamiltonian, then density_matrix if any)
    norm_d, norm_b = d["normalizers"]["hamiltonian"], b["normalizers"]["hamiltonian"]
    # the H head's statistics are those of H - H0: the onsite mean loses the -510 eV of O 1s
    assert norm_d["mu_node"].abs().max() < 0.2 * norm_b["mu_node"].abs().max()
    assert torch.equal(d["model"][key], norm_d["sigma_node"].to(d["model"][key].dtype))
    assert torch.equal(b["model"][key], norm_b["sigma_node"].to(b["model"][key].dtype))
    assert not torch.equal(norm_d["sigma_node"], norm_b["sigma_node"])
    # switching it off again is not allowed: the model section must match
    back = dict(stage, output=str(tmp_path / "back"), model=base_cfg["model"],
                train=dict(stage["train"], init_from=str(res.checkpoint)))
    with pytest.raises(ConfigError, match="hamiltonian_baseline"):
        train(config_from_dict(back), log=quiet)

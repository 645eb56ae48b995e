"""The electron-count term of the training loss: its per-frame sum over the predicted blocks
equals Tr(D S) of RealSpaceOperator (molecule: the PySCF electron count; crystal: with
self-image bonds i == j, R != 0, counted with their transposes), frames of a collated batch
stay apart, and training with it runs, logs the count and shrinks it."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from ase_slem.train.config import ConfigError, config_from_dict
from ase_slem.train.data import collate, make_sample
from ase_slem.train.electron_count import electron_count_errors
from ase_slem.train.loop import train

from _train_helpers import quiet, sk_silicon_frames, tiny_config, water_frames

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
OPS = ["hamiltonian", "overlap", "density_matrix"]


@pytest.fixture(scope="module")
def water():
    return water_frames(4, "sto-3g")


def zero_density(sample):
    on, bd = sample.targets["density_matrix"]
    return {"density_matrix_onsite": torch.zeros_like(on), "density_matrix_bond": torch.zeros_like(bd)}


def test_exact_blocks_count_no_error_and_zero_blocks_miss_every_electron(water):
    fr = water[0]
    s = make_sample(fr, "w", ["H", "O"], 5, 4.0, 4.0, OPS, torch.float64)
    assert all(v == 0.0 for v in s.uncovered.values())
    exact = {"density_matrix_onsite": s.targets["density_matrix"][0],
             "density_matrix_bond": s.targets["density_matrix"][1]}
    assert float(electron_count_errors(exact, s).abs().max()) < 1e-12
    missing = float(electron_count_errors(zero_density(s), s)[0])
    assert missing == pytest.approx(-10.0, abs=1e-5)  # water holds 10 electrons
    assert missing == pytest.approx(-fr.operators["density_matrix"].trace_product(fr.operators["overlap"]), abs=1e-9)


def test_periodic_bonds_count_twice_and_frames_of_a_batch_stay_apart():
    # a primitive cell whose 4 Å bonds include images of the same atom (i == j, R != 0)
    frames = sk_silicon_frames(2, seed=5, cubic=False)
    samples = []
    for k, fr in enumerate(frames):
        fr.operators["density_matrix"] = fr.operators["overlap"]  # any operator with S's blocks will do
        s = make_sample(fr, f"si{k}", ["Si"], 4, 4.0, 4.0, OPS, torch.float64)
        assert s.uncovered["overlap"] == 0.0
        samples.append(s)
    assert bool(((samples[0].bond_i == samples[0].bond_j)).any())
    batch = collate(samples)
    err = electron_count_errors(zero_density(batch), batch)
    want = [-fr.operators["overlap"].trace_product(fr.operators["overlap"]) for fr in frames]
    assert err.shape == (2,) and np.allclose(err.numpy(), want, atol=1e-9)
    # a change in one bond block of the second frame moves only that frame's count, by twice it
    out = {"density_matrix_onsite": batch.targets["density_matrix"][0].clone(),
           "density_matrix_bond": batch.targets["density_matrix"][1].clone()}
    b = samples[0].n_bonds[0] + 1
    out["density_matrix_bond"][b] += 0.1
    moved = electron_count_errors(out, batch)
    assert float(moved[0]) == pytest.approx(0.0, abs=1e-12)
    assert float(moved[1]) == pytest.approx(0.2 * float(batch.targets["overlap"][1][b].sum()), rel=1e-12)


def test_training_with_the_electron_term_logs_it_and_lowers_it(water, tmp_path):
    from ase_slem.io.dataset import write_frame

    root = tmp_path / "water"
    for k, fr in enumerate(water):
        write_frame(root, fr, k)

    def run(name, weight, steps=12):
        cfg = tiny_config(tmp_path / name, data={"path": str(root), "split": [0.5, 0.25, 0.25], "operators": OPS},
                          model={"r_cut": 4.0},
                          train={"steps": steps, "eval_every": 4, "lr": 0.01, "electron_weight": weight})
        return train(config_from_dict(cfg), log=quiet)

    def electrons(res):
        with open(res.metrics_csv, newline="") as fh:
            return [float(r["mae electrons all [1]"]) for r in csv.DictReader(fh) if r["split"] == "train"]

    res, weak = run("on", 10.0), run("weak", 1e-6)
    tr = electrons(res)
    assert len(tr) == 12 and all(np.isfinite(tr))
    assert res.validation["electrons"]["unit"] == "1"
    # the term pulls the count: the same 12 steps with it (nearly) off end farther from it
    assert tr[0] == pytest.approx(electrons(weak)[0])
    assert tr[-1] < 0.9 * electrons(weak)[-1]
    off = run("off", 0.0, steps=1)  # and without it there is no column for it
    with open(off.metrics_csv, newline="") as fh:
        assert "electrons" not in fh.readline()

    with pytest.raises(ConfigError, match="electron_weight must be >= 0"):
        config_from_dict(tiny_config(tmp_path / "bad", data={"operators": OPS}, train={"electron_weight": -1.0}))
    with pytest.raises(ConfigError, match="needs density_matrix and overlap"):
        config_from_dict(tiny_config(tmp_path / "bad", train={"electron_weight": 1.0}))

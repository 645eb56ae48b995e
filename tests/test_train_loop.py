"""Training loop: the loss goes down, resume is exact, divergence and bad input stop with a
message naming the step / frame / key, checkpoints are versioned; the ``ase-slem train`` and
``export`` verbs run end to end."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
import yaml

from ase_slem.io.dataset import write_frame
from ase_slem.train import loop as loop_module
from ase_slem.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ase_slem.train.config import ConfigError, config_from_dict
from ase_slem.train.data import BasisMismatchError, TrainingDataError
from ase_slem.train.loop import TrainingDiverged, train

from _train_helpers import finite_state, quiet, sk_silicon_frames, tiny_config, water_frames

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def frames():
    return sk_silicon_frames(5, seed=0)


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_short_training_lowers_the_loss(tmp_path, frames):
    cfg = config_from_dict(tiny_config(tmp_path / "run", train={"steps": 30, "lr": 0.02, "eval_every": 10}))
    res = train(cfg, frames=frames, log=quiet)
    rows = read_csv(res.metrics_csv)
    tr = [float(r["loss"]) for r in rows if r["split"] == "train"]
    assert len(tr) == 30
    assert np.mean(tr[-3:]) < 0.5 * np.mean(tr[:3])
    val = [r for r in rows if r["split"] == "val"]
    assert [int(r["step"]) for r in val] == [10, 20, 30]
    h_val = [float(r["mae hamiltonian all [meV]"]) for r in val]
    assert h_val[-1] < h_val[0]
    # per-block-type MAE on validation and test, H in meV
    assert set(res.test["hamiltonian"]) == {"unit", "all", "onsite Si", "hopping Si-Si"}
    assert res.test["hamiltonian"]["unit"] == "meV"
    assert 0 < res.test["hamiltonian"]["all"] < 2000
    assert res.validation["overlap"]["onsite Si"] < 1e-6  # the SK head's onsite S is exact
    state = load_checkpoint(res.checkpoint)
    assert state["step"] == 30 and state["metrics"]["test"] == res.test
    assert state["config"] == cfg.to_dict()
    assert (tmp_path / "run" / "metrics.json").exists() and (tmp_path / "run" / "train.log").exists()


def test_resume_is_exact_in_float64(tmp_path, frames):
    over = dict(train={"steps": 12, "dtype": "float64", "schedule": "plateau", "plateau_patience": 1,
                       "batch_size": 2, "eval_every": 3, "checkpoint_every": 3, "warmup_steps": 2})
    straight = train(config_from_dict(tiny_config(tmp_path / "a", **over)), frames=frames, log=quiet)
    half = tiny_config(tmp_path / "b", **over)
    half["train"]["steps"] = 6
    train(config_from_dict(half), frames=frames, log=quiet)
    half["train"]["steps"] = 12
    resumed = train(config_from_dict(half), frames=frames, resume=True, log=quiet)
    a, b = load_checkpoint(straight.checkpoint), load_checkpoint(resumed.checkpoint)
    assert a["step"] == b["step"] == 12
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["model"]["radial.k"].dtype == torch.float64
    for s1, s2 in zip(a["ema"]["shadow"], b["ema"]["shadow"]):
        assert torch.equal(s1, s2)
    for k, st in a["optimizer"]["state"].items():
        assert torch.equal(st["exp_avg_sq"], b["optimizer"]["state"][k]["exp_avg_sq"])
    assert a["schedule"] == b["schedule"] and a["best_val_loss"] == b["best_val_loss"]
    # the metrics log of the resumed run is the straight run's (wall times aside)
    ra, rb = read_csv(straight.metrics_csv), read_csv(resumed.metrics_csv)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time_s"} for r in rows]  # noqa: E731
    assert strip(ra) == strip(rb)


def test_a_diverging_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, frames, monkeypatch):
    real_loss = loop_module._loss
    calls = {"n": 0}

    def exploding(out, batch, normalizers, weights, t, rng=None):
        total, parts, band = real_loss(out, batch, normalizers, weights, t, rng)
        if torch.is_grad_enabled():  # training steps only
            calls["n"] += 1
            if calls["n"] >= 8:
                total = total * 1e9
        return total, parts, band

    monkeypatch.setattr(loop_module, "_loss", exploding)
    cfg = config_from_dict(tiny_config(tmp_path / "run", train={"steps": 20, "checkpoint_every": 3}))
    with pytest.raises(TrainingDiverged, match=r"training diverged at step 8: loss .* last good checkpoint "
                                               r".*last.pt \(step 6\) is kept"):
        train(cfg, frames=frames, log=quiet)
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["step"] == 6 and finite_state(state["model"])
    # a real blow-up: a huge learning rate without clipping
    monkeypatch.setattr(loop_module, "_loss", real_loss)
    cfg = config_from_dict(tiny_config(tmp_path / "run2", train={"steps": 10, "lr": 1e4, "grad_clip": 0.0,
                                                                 "ema_decay": 0.0}))
    with pytest.raises(TrainingDiverged, match=r"training diverged at step \d+: .*no checkpoint had been written"):
        train(cfg, frames=frames, log=quiet)


def test_nan_target_names_the_frame(tmp_path, frames):
    root = tmp_path / "data"
    for k, fr in enumerate(frames[:4]):
        if k == 2:
            fr = sk_silicon_frames(1, seed=99)[0]
            fr.operators["hamiltonian"].groups[0].data[3, 1, 2] = np.nan
        write_frame(root, fr, k)
    cfg = config_from_dict(tiny_config(tmp_path / "run", data={"path": str(root)}))
    with pytest.raises(TrainingDataError, match=r"frame frame\.000002: hamiltonian has NaN/inf values"):
        train(cfg, log=quiet)


def test_resume_guards(tmp_path, frames):
    cfg = tiny_config(tmp_path / "run", train={"steps": 3, "checkpoint_every": 3})
    with pytest.raises(TrainingDataError, match="nothing to resume"):
        train(config_from_dict(cfg), frames=frames, resume=True, log=quiet)
    train(config_from_dict(cfg), frames=frames, log=quiet)
    with pytest.raises(ConfigError, match="already holds a training run"):
        train(config_from_dict(cfg), frames=frames, log=quiet)
    other = tiny_config(tmp_path / "run", train={"steps": 6, "checkpoint_every": 3}, model={"channels": 3})
    with pytest.raises(ConfigError, match=r"model.channels: checkpoint 2, config 3"):
        train(config_from_dict(other), frames=frames, resume=True, log=quiet)
    # a dataset in another basis
    from test_train_data import one_orbital_frame

    odd = [one_orbital_frame(f.atoms) for f in frames]
    with pytest.raises(BasisMismatchError, match=r"basis of Si differs: the dataset has 1s"):
        train(config_from_dict(cfg), frames=odd, resume=True, log=quiet)


def test_checkpoint_versions_and_corruption(tmp_path, frames):
    cfg = tiny_config(tmp_path / "run", train={"steps": 2, "checkpoint_every": 2})
    res = train(config_from_dict(cfg), frames=frames, log=quiet)
    state = load_checkpoint(res.checkpoint)
    newer = dict(state, version=99)
    torch.save(newer, tmp_path / "newer.pt")
    with pytest.raises(CheckpointError, match=r"newer ase_slem \(checkpoint format 99; .*upgrade ase_slem"):
        load_checkpoint(tmp_path / "newer.pt")
    torch.save(dict(state, version=0), tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="old checkpoint format 0"):
        load_checkpoint(tmp_path / "old.pt")
    torch.save({"model": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an ase_slem training checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="not a readable ase_slem checkpoint"):
        load_checkpoint(tmp_path / "garbage.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    # saving is atomic: no temporary files are left behind
    save_checkpoint(tmp_path / "ck" / "x.pt", {"a": 1})
    assert [p.name for p in (tmp_path / "ck").iterdir()] == ["x.pt"]


def test_cli_train_and_export_on_water(tmp_path, capsys):
    from ase.build import molecule

    from ase_slem.cli import main
    from ase_slem.model_file import load_model, predict

    root = tmp_path / "water"
    for k, fr in enumerate(water_frames(4, "sto-3g")):
        write_frame(root, fr, k)
    cfg = tiny_config(tmp_path / "run", data={"path": str(root), "split": [0.5, 0.25, 0.25],
                                              "operators": ["hamiltonian", "overlap", "density_matrix"]},
                      model={"r_cut": 4.0}, train={"steps": 6, "eval_every": 3, "checkpoint_every": 3})
    cfg["name"] = "water_test"
    (tmp_path / "w.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "w.yaml"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "test (1 frames) at step 6" in out and "density_matrix MAE" in out and "onsite O" in out
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    model_path = tmp_path / "models" / "water_test.pt"
    assert main(["export", str(ckpt), "-o", str(model_path)]) == 0
    assert "water_test (SLEM" in capsys.readouterr().out
    model = load_model(model_path)
    meta = model.metadata
    assert meta["periodic"] is False and meta["dft_settings"]["xc"] == "pbe"
    assert meta["basis"]["name"] == "sto-3g" and meta["basis"]["shells"] == {"H": [0], "O": [0, 0, 1]}
    assert [f["l"] for f in meta["basis"]["radial"]["elements"]["O"]] == [0, 0, 1]
    from ase_slem.orbitals import radial_basis_from_dict

    radial = radial_basis_from_dict(meta["basis"]["radial"])  # what density rendering reads
    assert [f.l for f in radial.functions["O"]] == [0, 0, 1] and [f.l for f in radial.functions["H"]] == [0]
    assert set(meta["metrics"]["test"]) == {"hamiltonian", "overlap", "density_matrix"}
    ops = predict(model, molecule("H2O"))
    assert set(ops) == {"hamiltonian", "overlap", "density_matrix"} and not ops["hamiltonian"].periodic
    h = ops["hamiltonian"].to_sparse().toarray()
    assert h.shape == (7, 7) and np.allclose(h, h.T) and math.isfinite(float(np.abs(h).sum()))
    # two stages in one command: the second fine-tunes the first with the orbital-energy term;
    # --resume skips the finished first stage and runs the second
    stage2 = dict(cfg, output=str(tmp_path / "run2"))
    stage2["train"] = dict(cfg["train"], init_from=str(ckpt), band_weight=1.0, steps=3)
    (tmp_path / "w2.yaml").write_text(yaml.safe_dump(stage2))
    assert main(["train", str(tmp_path / "w.yaml"), str(tmp_path / "w2.yaml"), "--resume", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "resuming " + str(tmp_path / "run") in out and "training " + str(tmp_path / "run2") in out
    assert "bands MAE [meV]" in out
    assert load_checkpoint(tmp_path / "run2" / "checkpoints" / "last.pt")["step"] == 3
    # bad input: one line on stderr, exit status 1
    cfg["train"]["lrr"] = 1.0
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "bad.yaml")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown key train.lrr (did you mean train.lr?)" in err
    assert main(["export", str(tmp_path / "none.pt"), "-o", str(tmp_path / "x.pt")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_fine_tuning_from_an_exported_model_file_starts_from_its_weights(tmp_path, frames):
    """Checkpoints stay on the machine that trained; model files ship.  A model file holds the
    weights, network settings, config and split, so a later stage can start from it."""
    from ase.build import bulk

    from ase_slem.model_file import load_model, predict
    from ase_slem.train.checkpoint import state_from_model_file
    from ase_slem.train.export import export_checkpoint, export_model, untrained_metadata

    base = train(config_from_dict(tiny_config(tmp_path / "base", train={"steps": 20, "lr": 0.02})),
                 frames=frames, log=quiet)
    shipped = export_checkpoint(base.checkpoint, tmp_path / "shipped.pt")
    over = {"steps": 1, "lr": 1e-12, "min_lr": 1e-12, "warmup_steps": 0, "init_from": str(shipped)}
    tuned = train(config_from_dict(tiny_config(tmp_path / "tuned", train=over)), frames=frames, log=quiet)
    state = load_checkpoint(tuned.checkpoint)
    assert state["dataset"]["split"] == load_checkpoint(base.checkpoint)["dataset"]["split"]
    again = export_checkpoint(tuned.checkpoint, tmp_path / "again.pt", use_ema=False)
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.positions[0] += [0.05, -0.03, 0.02]
    h0 = predict(load_model(shipped), atoms)["hamiltonian"].to_sparse().toarray()
    h1 = predict(load_model(again), atoms)["hamiltonian"].to_sparse().toarray()
    assert np.abs(h0).max() > 0.1 and np.allclose(h0, h1, atol=1e-5)
    # the normalizers are refit on the same training split: the first loss is the base run's last
    train_loss = lambda res: [float(r["loss"]) for r in read_csv(res.metrics_csv) if r["split"] == "train"]  # noqa: E731
    assert train_loss(tuned)[0] < 0.5 * train_loss(base)[0]
    # a model file without a training record cannot seed a fine-tuning run
    model = build_untrained(base)
    bare = export_model(model, tmp_path / "bare.pt", untrained_metadata(model))
    with pytest.raises(CheckpointError, match="split"):
        state_from_model_file(bare)


def build_untrained(res):
    from ase_slem.train.checkpoint import build_model

    state = load_checkpoint(res.checkpoint)
    return build_model(state["model_args"], state["dtype"])


def test_excluded_frames_are_left_out_and_unknown_names_reported(tmp_path, frames):
    for k, fr in enumerate(frames[:3]):
        write_frame(tmp_path / "data", fr, k)
    got, names = loop_module.load_frames(tmp_path / "data", exclude=["frame.000001"])
    assert names == ["frame.000000", "frame.000002"] and len(got) == 2
    with pytest.raises(TrainingDataError, match="frame.000009"):
        loop_module.load_frames(tmp_path / "data", exclude=["frame.000009"])


def test_extend_train_adds_new_frames_to_training_and_keeps_the_held_out_ones(tmp_path, frames):
    """A later stage may train on frames generated after the first run (data.extend_train),
    while the first run's validation and test frames stay exactly those: never trained on."""
    frames = list(frames) + sk_silicon_frames(2, seed=10)
    names = [f"frame.{k:06d}" for k in range(len(frames))]
    first = train(config_from_dict(tiny_config(tmp_path / "base", train={"steps": 2})),
                  frames=frames[:5], frame_names=names[:5], log=quiet)
    split = load_checkpoint(first.checkpoint)["dataset"]["split"]
    over = {"steps": 1, "init_from": str(first.checkpoint)}
    said = []
    kept = train(config_from_dict(tiny_config(tmp_path / "kept", train=over)), frames=frames,
                 frame_names=names, log=said.append)
    assert load_checkpoint(kept.checkpoint)["dataset"]["split"] == split
    assert any("are left out (data.extend_train: true trains on them)" in m for m in said)
    grown = train(config_from_dict(tiny_config(tmp_path / "grown", train=over, data={"extend_train": True})),
                  frames=frames, frame_names=names, log=quiet)
    new = load_checkpoint(grown.checkpoint)["dataset"]["split"]
    assert new["val"] == split["val"] and new["test"] == split["test"]
    assert new["train"] == split["train"] + names[5:]
    # without a first run there is no split to extend: a clear config error
    with pytest.raises(ConfigError, match="data.extend_train adds frames to the split of train.init_from"):
        config_from_dict(tiny_config(tmp_path / "x", data={"extend_train": True}))


def test_held_out_names_the_validation_and_test_frames(tmp_path, frames):
    """data.held_out fixes validation and test by frame name (the same structures as a model
    trained on another dataset of them); every other frame trains; bad lists are config errors."""
    names = [f"frame.{k:06d}" for k in range(len(frames))]
    held = {"val": [names[3]], "test": [names[0], names[4]]}
    res = train(config_from_dict(tiny_config(tmp_path / "held", train={"steps": 1}, data={"held_out": held})),
                frames=frames, frame_names=names, log=quiet)
    split = load_checkpoint(res.checkpoint)["dataset"]["split"]
    assert split == {"train": [names[1], names[2]] + names[5:], **held}
    with pytest.raises(TrainingDataError, match="does not have: frame.000099"):
        train(config_from_dict(tiny_config(tmp_path / "gone", data={"held_out": {"val": ["frame.000099"], "test": [names[0]]}})),
              frames=frames, frame_names=names, log=quiet)
    # a fine-tuning stage may re-split by name, but never train on what its checkpoint held out
    over = {"steps": 1, "init_from": str(res.checkpoint)}
    kept = {"val": [names[3]], "test": [names[4]]}
    with pytest.raises(TrainingDataError, match="would train on frames .* held out: frame.000000"):
        train(config_from_dict(tiny_config(tmp_path / "leak", train=over, data={"held_out": kept})),
              frames=frames, frame_names=names, log=quiet)
    fine = train(config_from_dict(tiny_config(tmp_path / "fine", train=over, data={"held_out": kept, "exclude": [names[0]]})),
                 frames=frames[1:], frame_names=names[1:], log=quiet)
    assert load_checkpoint(fine.checkpoint)["dataset"]["split"]["train"] == [names[1], names[2]] + names[5:]
    for bad, message in (({"val": names[:2], "test": names[1:3]}, "in both val and test"),
                         ({"val": names[:1]}, r"held_out must be \{val: \[frame names\], test")):
        with pytest.raises(ConfigError, match=message):
            config_from_dict(tiny_config(tmp_path / "bad", data={"held_out": bad}))


def test_a_stage_can_add_gated_head_branches_to_a_trained_model(tmp_path, frames):
    """model.head_channels in a fine-tuning stage grows the heads of the model it starts from:
    every trained weight is kept and the new branches start at zero, so the first prediction
    is the trained model's; the branches then train."""
    from ase_slem.model_file import load_model, predict
    from ase_slem.train.export import export_checkpoint

    base = train(config_from_dict(tiny_config(tmp_path / "base", train={"steps": 10, "lr": 0.02})),
                 frames=frames, log=quiet)
    still = {"steps": 1, "lr": 1e-12, "min_lr": 1e-12, "warmup_steps": 0, "init_from": str(base.checkpoint)}
    grown = train(config_from_dict(tiny_config(tmp_path / "grown", train=still, model={"head_channels": 3})),
                  frames=frames, log=quiet)
    state = load_checkpoint(grown.checkpoint)
    assert state["model_args"]["head_channels"] == 3
    branch_keys = [k for k in state["model"] if ".branch_" in k]
    assert branch_keys and all(k in state["model"] for k in load_checkpoint(base.checkpoint)["model"])
    atoms = frames[0].atoms.copy()
    atoms.positions[0] += [0.05, -0.03, 0.02]
    h0 = predict(load_model(export_checkpoint(base.checkpoint, tmp_path / "a.pt")), atoms)["hamiltonian"]
    h1 = predict(load_model(export_checkpoint(grown.checkpoint, tmp_path / "b.pt", use_ema=False)), atoms)
    assert np.allclose(h0.to_sparse().toarray(), h1["hamiltonian"].to_sparse().toarray(), atol=1e-5)
    # trained further, the branches move away from zero
    moving = dict(still, lr=0.01, min_lr=1e-4, steps=5)
    moved = train(config_from_dict(tiny_config(tmp_path / "moved", train=moving, model={"head_channels": 3})),
                  frames=frames, log=quiet)
    out_w = [v for k, v in load_checkpoint(moved.checkpoint)["model"].items() if k.endswith("lin_out.weight")]
    assert out_w and max(float(w.abs().max()) for w in out_w) > 0
    # other model settings still have to match the model a stage starts from
    with pytest.raises(ConfigError, match="model.channels"):
        train(config_from_dict(tiny_config(tmp_path / "x", train=still, model={"channels": 3})),
              frames=frames, log=quiet)


def test_repeat_by_size_visits_each_frame_in_proportion_to_its_atoms(tmp_path, frames):
    """train.repeat_by_size: an 8-atom cell appears four times per epoch beside 2-atom cells,
    so that the per-frame-mean loss weighs every cell's blocks by their number."""
    from types import SimpleNamespace

    sizes = [SimpleNamespace(n_atoms=[n]) for n in (2, 8, 2, 3)]
    assert loop_module.epoch_entries(sizes, False).tolist() == [0, 1, 2, 3]
    assert loop_module.epoch_entries(sizes, True).tolist() == [0, 1, 1, 1, 1, 2, 3, 3]
    # in a run: 3 two-atom cells and 2 eight-atom cells, split 3 training / 1 / 1
    mixed = sk_silicon_frames(3, seed=20, cubic=False) + list(frames[:2])
    over = {"steps": 12, "eval_every": 100, "checkpoint_every": 100}
    plain = train(config_from_dict(tiny_config(tmp_path / "plain", train=over)), frames=mixed, log=quiet)
    split = load_checkpoint(plain.checkpoint)["dataset"]["split"]
    n_big = sum(int(name.split()[-1]) >= 3 for name in split["train"])  # "frame 3", "frame 4": 8 atoms
    per_epoch = len(split["train"]) + 3 * n_big
    rep = train(config_from_dict(tiny_config(tmp_path / "rep", train=dict(over, repeat_by_size=True))),
                frames=mixed, log=quiet)
    for res, length in ((plain, len(split["train"])), (rep, per_epoch)):
        epochs = [int(r["epoch"]) for r in read_csv(res.metrics_csv) if r["split"] == "train"]
        assert epochs == [s // length for s in range(12)]
    assert n_big >= 1  # the split drew an 8-atom cell into training, so the two epoch lengths differ

"""One model file from several networks, each giving some operators (``ase-slem export
A.pt:hamiltonian B.pt:overlap``): each operator is its part's prediction, whole or in pieces;
the metadata lists the parts and keeps each operator's held-out errors; parts that do not fit
together, operators taken twice and fine-tuning from a union are clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk

from _train_helpers import quiet, sk_silicon_frames, tiny_config
from ase_slem.model_file import load_model, predict, set_edge_chunk
from ase_slem.train.checkpoint import CheckpointError, state_from_model_file
from ase_slem.train.config import config_from_dict
from ase_slem.train.export import ExportError, export_checkpoint, export_union
from ase_slem.train.loop import train

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny networks on the same frames and split, of different sizes (node features of
    different layers and widths), a third with another cutoff, a fourth with another split."""
    root = tmp_path_factory.mktemp("union")
    frames = sk_silicon_frames(5, seed=60)
    a = train(config_from_dict(tiny_config(root / "a", train={"steps": 6, "seed": 1})), frames=frames, log=quiet)
    b = train(config_from_dict(tiny_config(root / "b", model={"channels": 3, "n_layers": 2},
                                           train={"steps": 6, "seed": 2})), frames=frames, log=quiet)
    c = train(config_from_dict(tiny_config(root / "c", model={"r_cut": 3.4}, train={"steps": 2})),
              frames=frames, log=quiet)
    d = train(config_from_dict(tiny_config(root / "d", data={"split_seed": 3}, train={"steps": 2})),
              frames=frames, log=quiet)
    export_checkpoint(a.checkpoint, root / "a.pt")  # a and b alone, as one-network model files
    export_checkpoint(b.checkpoint, root / "b.pt")
    return root, a.checkpoint, b.checkpoint, c.checkpoint, d.checkpoint


def rattled_si(reps=(2, 2, 1)):
    atoms = bulk("Si", "diamond", a=5.43, cubic=True) * reps
    atoms.rattle(0.07, seed=3)
    return atoms


def test_each_operator_comes_from_its_network_whole_and_in_pieces(runs):
    root, a, b, _, _ = runs
    path = export_union([(a, ["hamiltonian"]), (b, ["overlap"])], root / "union.pt")
    union = load_model(path)
    alone_a, alone_b = load_model(root / "a.pt"), load_model(root / "b.pt")
    atoms = rattled_si()
    whole = predict(union, atoms)
    assert set(whole) == {"hamiltonian", "overlap"}
    assert whole["hamiltonian"].max_abs_difference(predict(alone_a, atoms)["hamiltonian"]) < 1e-6
    assert whole["overlap"].max_abs_difference(predict(alone_b, atoms)["overlap"]) < 1e-6
    # the two networks differ, so taking the other one's operator would show
    assert whole["overlap"].max_abs_difference(predict(alone_a, atoms)["overlap"]) > 1e-4
    # big structures go through the two-pass evaluation: the parts' node features side by side
    pieces = predict(union, atoms, max_edges=60)
    for op in whole:
        assert whole[op].max_abs_difference(pieces[op]) < 2e-5
    assert set_edge_chunk(union, 7) and [p.edge_chunk for p in union.module.parts.children()] == [7, 7]
    # a part may be an exported model file (its weights are the checkpoint's averaged ones)
    from_file = load_model(export_union([(root / "a.pt", ["hamiltonian"]), (b, ["overlap"])], root / "union2.pt"))
    again = predict(from_file, atoms)
    for op in whole:
        assert whole[op].max_abs_difference(again[op]) < 1e-6


def test_metadata_lists_the_parts_and_keeps_each_operators_errors(runs, capsys):
    from ase_slem.cli import main

    root, a, b, _, _ = runs
    out = root / "cli_union.pt"
    assert main(["export", f"{a}:hamiltonian", f"{b}:overlap", "-o", str(out), "--name", "si_union"]) == 0
    assert "si_union" in capsys.readouterr().out
    meta = load_model(out).metadata
    ma, mb = load_model(root / "a.pt").metadata, load_model(root / "b.pt").metadata
    assert meta["operators"] == ["hamiltonian", "overlap"]
    assert [p["operators"] for p in meta["network"]["parts"]] == [["hamiltonian"], ["overlap"]]
    assert meta["network"]["n_parameters"] == ma["network"]["n_parameters"] + mb["network"]["n_parameters"]
    for split in ("validation", "test"):
        assert meta["metrics"][split]["hamiltonian"] == ma["metrics"][split]["hamiltonian"]
        assert meta["metrics"][split]["overlap"] == mb["metrics"][split]["overlap"]
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "2 networks" in text and "network 1" in text and "hamiltonian: " in text and "overlap: " in text
    # fine-tuning starts from one network: a union must be told which
    with pytest.raises(CheckpointError, match="joins 2 networks.*name the one to take"):
        state_from_model_file(out)
    with pytest.raises(CheckpointError, match="no one of its networks gives hamiltonian, overlap"):
        state_from_model_file(out, ["hamiltonian", "overlap"])


def test_a_network_comes_back_out_of_a_joined_file_whole(runs, capsys):
    """The checkpoints of a joined file's networks may be gone: the file itself holds each network
    whole, to fine-tune (train.init_from FILE:operator) or to join again with another."""
    from ase_slem.cli import main
    from ase_slem.train.config import ConfigError

    root, a, b, _, _ = runs
    joined = export_union([(a, ["hamiltonian"]), (b, ["overlap"])], root / "joined.pt")
    alone_a, alone_b = load_model(root / "a.pt"), load_model(root / "b.pt")
    state = state_from_model_file(joined, ["overlap"])
    for key, value in state_from_model_file(root / "b.pt")["model"].items():
        assert torch.equal(state["model"][key], value), key
    assert state["metadata"]["operators"] == ["overlap"] and "parts" not in state["metadata"]["network"]
    assert set(state["metadata"]["metrics"]["test"]) <= {"overlap"}
    assert state["metadata"]["network"] == alone_b.metadata["network"]
    # swap a network out: H from the joined file's first network, S from the first run
    atoms = rattled_si()
    swapped = predict(load_model(export_union([(joined, ["hamiltonian"]), (a, ["overlap"])], root / "swap.pt")), atoms)
    assert swapped["hamiltonian"].max_abs_difference(predict(alone_a, atoms)["hamiltonian"]) < 1e-6
    assert swapped["overlap"].max_abs_difference(predict(alone_a, atoms)["overlap"]) < 1e-6
    # ... or take one network out alone, from the command line
    assert main(["export", f"{joined}:overlap", "-o", str(root / "s_alone.pt")]) == 0
    capsys.readouterr()
    s_alone = predict(load_model(root / "s_alone.pt"), atoms)
    assert set(s_alone) == {"overlap"}
    assert s_alone["overlap"].max_abs_difference(predict(alone_b, atoms)["overlap"]) < 1e-6
    # fine-tuning from the network of H in the joined file starts where that network is
    frames = sk_silicon_frames(5, seed=60)
    tuned = train(config_from_dict(tiny_config(root / "tuned", train={"steps": 1, "lr": 1e-12, "min_lr": 0.0, "seed": 1,
                                                                      "init_from": f"{joined}:hamiltonian"})),
                  frames=frames, log=quiet)
    export_checkpoint(tuned.checkpoint, root / "tuned.pt", use_ema=False)
    start = predict(load_model(root / "tuned.pt"), atoms)["hamiltonian"]
    assert start.max_abs_difference(predict(alone_a, atoms)["hamiltonian"]) < 1e-4
    for bad, match in ((str(joined), "joins 2 networks"), (f"{joined}:density_matrix", "no one of its networks"),
                       (f"{a}:hamiltonian", "checkpoint of one network")):
        with pytest.raises(ConfigError, match=match):
            train(config_from_dict(tiny_config(root / "bad", train={"steps": 1, "init_from": bad})),
                  frames=frames, log=quiet)


def test_parts_that_do_not_fit_together_are_refused(runs, capsys):
    from ase_slem.cli import main

    root, a, b, c, d = runs
    with pytest.raises(ExportError, match="differ in their cutoffs"):
        export_union([(a, ["hamiltonian"]), (c, ["overlap"])], root / "x.pt")
    # errors measured on frames the other network trained on would not be held-out errors
    with pytest.raises(ExportError, match="differ in their (validation|test) frames"):
        export_union([(a, ["hamiltonian"]), (d, ["overlap"])], root / "x.pt")
    with pytest.raises(ExportError, match="taken from more than one network"):
        export_union([(a, ["hamiltonian", "overlap"]), (b, ["overlap"])], root / "x.pt")
    with pytest.raises(ExportError, match="does not predict density_matrix"):
        export_union([(a, ["hamiltonian"]), (b, ["density_matrix"])], root / "x.pt")
    assert not (root / "x.pt").exists()
    assert main(["export", str(a), f"{b}:overlap", "-o", str(root / "x.pt")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "name the operators each gives" in err

"""Model files: export round trip (TorchScript = eager network), metadata, the light runtime's
predict (chunked = whole, SLEM and LEM), and clear errors for newer/corrupt/foreign files,
unknown elements and basis mismatches."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from ase.build import bulk

from ase_slem.model_file import (FORMAT_VERSION, METADATA_NAME, ModelFileError, _atom_runs, blocks_to_operators,
                                 check_basis, load_model, predict, read_metadata, resolve_model_path, run_network)
from ase_slem.nn.graph import build_graph
from ase_slem.nn.slem import outputs_to_operators
from ase_slem.train.checkpoint import build_model, load_checkpoint
from ase_slem.train.config import config_from_dict
from ase_slem.train.export import export_checkpoint, export_model, untrained_metadata
from ase_slem.train.loop import train

from _train_helpers import quiet, sk_silicon_frames, tiny_config

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(checkpoint path, model file path) of a tiny SLEM trained for 10 steps on SK silicon."""
    root = tmp_path_factory.mktemp("model")
    cfg = config_from_dict(tiny_config(root / "run", train={"steps": 10}))
    res = train(cfg, frames=sk_silicon_frames(5, seed=40), log=quiet)
    path = export_checkpoint(res.checkpoint, root / "models" / "si_tiny.pt")
    return res.checkpoint, path


def eager_model(checkpoint):
    """The network of a checkpoint with its EMA weights (what export writes)."""
    state = load_checkpoint(checkpoint)
    model = build_model(state["model_args"], state["dtype"])
    model.load_state_dict(state["model"])
    with torch.no_grad():
        for p, s in zip(model.parameters(), state["ema"]["shadow"]):
            p.copy_(s)
    return model.eval()


def si_cell(reps=(1, 1, 1), seed=5):
    atoms = bulk("Si", "diamond", a=5.43, cubic=True) * reps
    atoms.rattle(0.08, seed=seed)
    return atoms


def test_exported_network_equals_the_eager_one_in_float32(exported):
    ckpt, path = exported
    model = load_model(path)
    eager = eager_model(ckpt)
    atoms = si_cell((2, 1, 1))
    g = build_graph(atoms, model.symbols, model.r_graph, r_bond=model.r_bond, dtype=torch.float32)
    args = (g.positions, g.species, g.edge_index, g.edge_shift, g.bond_index)
    with torch.no_grad():
        ref = eager(*args)
        out = model.module(*args)
        out64 = model.module(g.positions.double(), g.species, g.edge_index, g.edge_shift.double(), g.bond_index)
    assert set(out) == set(ref) == {"hamiltonian_onsite", "hamiltonian_bond", "overlap_onsite", "overlap_bond"}
    for k in ref:
        assert ref[k].dtype == out[k].dtype == torch.float32
        assert ref[k].abs().max() > 1e-3
        assert (out[k] - ref[k]).abs().max() <= 1e-6, k
        assert torch.equal(out64[k], out[k])  # float64 inputs are cast to the model's dtype


def test_metadata(exported):
    ckpt, path = exported
    meta = read_metadata(path)
    assert load_model(path).metadata == meta
    state = load_checkpoint(ckpt)
    assert meta["format"] == "ase_slem-model" and meta["format_version"] == FORMAT_VERSION
    assert meta["name"] == "tiny" and meta["species"] == ["Si"]
    assert meta["basis"]["shells"] == {"Si": [0, 1]} and meta["basis"]["radial"] is None
    assert meta["orbital_convention"] == "e3nn"
    assert meta["cutoffs"] == {"r_cut": 3.0, "r_graph": 3.0, "r_bond": 3.0, "unit": "Angstrom"}
    assert meta["operators"] == ["hamiltonian", "overlap"] and meta["periodic"] is True
    assert meta["units"]["hamiltonian"] == "eV" and meta["dtype"] == "float32"
    assert meta["dft_settings"]["code"] == "slater-koster"
    assert meta["network"]["n_parameters"] == sum(p.numel() for p in eager_model(ckpt).parameters()) > 1000
    assert meta["metrics"]["test"]["hamiltonian"]["all"] == state["metrics"]["test"]["hamiltonian"]["all"]
    assert set(meta["metrics"]["validation"]["hamiltonian"]) >= {"onsite Si", "hopping Si-Si"}
    assert meta["training"]["steps"] == 10 and meta["training"]["frames"] == {"train": 3, "val": 1, "test": 1}


def test_predict_returns_operators_of_the_network(exported):
    ckpt, path = exported
    model = load_model(path)
    atoms = si_cell()
    ops = predict(model, atoms)
    g, out = eager_model(ckpt).predict(atoms)
    ref = outputs_to_operators(eager_model(ckpt), g, out, atoms)
    for op in ("hamiltonian", "overlap"):
        assert ops[op].periodic and ops[op].nblocks == ref[op].nblocks == 8 + g.bond_index.shape[1]
        assert ops[op].max_abs_difference(ref[op]) < 1e-5
        ops[op].check_structure(atoms)
    H = ops["hamiltonian"]
    i, j, R = g.bonds
    assert np.allclose(H.block(int(j[0]), int(i[0]), tuple(-R[0])), H.block(int(i[0]), int(j[0]), tuple(R[0])).T)
    hk = H.bloch([0.1, 0.2, 0.3])
    assert np.allclose(hk, hk.conj().T)
    assert predict(model, atoms, operators=["overlap"]).keys() == {"overlap"}


def test_chunked_prediction_equals_the_whole(exported, tmp_path):
    _, path = exported
    model = load_model(path)
    atoms = si_cell((2, 2, 1))
    whole = predict(model, atoms)
    parts = predict(model, atoms, max_edges=40)
    for op in whole:
        assert whole[op].max_abs_difference(parts[op]) < 2e-5
        # blocks keep the network's precision (float32 here) in both paths: half the memory of float64
        assert {g.data.dtype for g in whole[op].groups} == {g.data.dtype for g in parts[op].groups} == {np.dtype(np.float32)}
    # LEM (graph beyond the bond cutoff), float64: chunks are exact
    torch.manual_seed(0)
    lem = build_model(dict(basis={"Si": [0, 1]}, r_cut=2.6, lem=True, r_max=3.6, channels=2, n_layers=2,
                           latent_dim=8, mlp_hidden=8, num_radial=4), "float64")
    lem_path = export_model(lem, tmp_path / "lem.pt", untrained_metadata(lem, "lem", periodic=True))
    lm = load_model(lem_path)
    assert lm.r_graph == 3.6 and lm.r_bond == 2.6
    whole, parts = predict(lm, atoms), predict(lm, atoms, max_edges=60)
    for op in whole:
        assert whole[op].nblocks == parts[op].nblocks
        assert whole[op].max_abs_difference(parts[op]) < 1e-12
        assert {g.data.dtype for g in whole[op].groups} == {np.dtype(np.float64)}


def test_pieces_of_a_big_graph_need_no_bond_partners(exported):
    """Over max_edges the runtime splits the atoms into pieces of at most max_edges edges that
    together hold every edge once, and evaluates them in two passes (node features, then the
    bond edges leaving each piece): the blocks of the whole graph.  A model file exported
    before the two-pass methods existed (forward only) gets the same blocks the older way."""
    _, path = exported
    model = load_model(path)
    assert hasattr(model.module, "node_features") and hasattr(model.module, "directed_blocks")
    atoms = si_cell((2, 2, 1), seed=9)
    g = build_graph(atoms, model.symbols, model.r_graph, r_bond=model.r_bond, dtype=model.torch_dtype)
    degree = np.bincount(g.edge_index[0].numpy(), minlength=len(atoms))
    order = np.random.default_rng(0).permutation(len(atoms))
    limit = int(degree.sum()) // 5
    pieces = _atom_runs(order, degree, limit)
    assert len(pieces) >= 5 and np.array_equal(np.concatenate(pieces), order)
    assert all(degree[p].sum() <= limit for p in pieces)

    whole = run_network(model, g, max_edges=10**9)
    two_pass = run_network(model, g, max_edges=limit, order_atoms=order)

    class ForwardOnly:  # the TorchScript module of an older model file
        def __init__(self, module):
            self._module, self.model = module, module.model

        def __call__(self, *args):
            return self._module(*args)

    old = run_network(dataclasses.replace(model, module=ForwardOnly(model.module)), g, max_edges=limit)
    for op in whole:
        for k in (0, 1):  # onsite, bonds
            scale = np.abs(whole[op][k]).max()
            assert np.abs(two_pass[op][k] - whole[op][k]).max() <= 1e-5 * scale
            assert np.abs(old[op][k] - whole[op][k]).max() <= 1e-5 * scale


def test_packing_blocks_can_free_each_operators_arrays_as_it_goes(exported):
    """blocks_to_operators(release=True) empties its input one operator at a time (the padded
    arrays of a big structure are freed before the next operator is packed) and packs the same
    operators as without it."""
    _, path = exported
    model = load_model(path)
    atoms = si_cell((2, 1, 1))
    g = build_graph(atoms, model.symbols, model.r_graph, r_bond=model.r_bond, dtype=model.torch_dtype)
    raw = run_network(model, g, operators=["hamiltonian", "overlap"])
    assert raw.keys() == {"hamiltonian", "overlap"}
    norb = np.array([model.orbital_counts[s] for s in model.symbols])
    args = (g.species.numpy(), norb, *g.bonds)
    kept = blocks_to_operators(dict(raw), *args, periodic=True)
    freed_from = dict(raw)
    released = blocks_to_operators(freed_from, *args, periodic=True, release=True)
    assert freed_from == {}
    for op in raw:
        assert released[op].max_abs_difference(kept[op]) == 0.0


def test_newer_format_is_rejected(exported, tmp_path):
    _, path = exported
    model = load_model(path)
    meta = dict(model.metadata, format_version=FORMAT_VERSION + 98)
    torch.jit.save(model.module, str(tmp_path / "new.pt"), _extra_files={METADATA_NAME: json.dumps(meta)})
    with pytest.raises(ModelFileError, match=f"this model file was written by a newer ase_slem format "
                                             f"{FORMAT_VERSION + 98}.*upgrade"):
        load_model(tmp_path / "new.pt")
    incomplete = {k: v for k, v in model.metadata.items() if k != "cutoffs"}
    torch.jit.save(model.module, str(tmp_path / "inc.pt"), _extra_files={METADATA_NAME: json.dumps(incomplete)})
    with pytest.raises(ModelFileError, match="metadata lacks cutoffs"):
        load_model(tmp_path / "inc.pt")


def test_corrupt_and_foreign_files(exported, tmp_path):
    ckpt, path = exported
    (tmp_path / "noise.pt").write_bytes(os.urandom(4096))
    with pytest.raises(ModelFileError, match="is not an ase_slem model file"):
        load_model(tmp_path / "noise.pt")
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="corrupt or truncated"):
        load_model(tmp_path / "cut.pt")
    with pytest.raises(ModelFileError, match="without ase_slem metadata.*ase-slem export CHECKPOINT"):
        load_model(ckpt)  # a training checkpoint is not a model file
    # metadata intact but the network part damaged
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(tmp_path / "broken.pt", "w") as zout:
        for item in zin.infolist():
            if "/code/" not in item.filename:
                zout.writestr(item, zin.read(item.filename))
    with pytest.raises(ModelFileError, match="TorchScript network cannot be loaded"):
        load_model(tmp_path / "broken.pt")
    with pytest.raises(ModelFileError, match="no model file"):
        load_model(tmp_path / "missing.pt")


def test_unknown_elements_and_basis_mismatch(exported):
    _, path = exported
    model = load_model(path)
    atoms = bulk("SiC", "zincblende", a=4.36)
    with pytest.raises(ModelFileError, match="knows Si only; the structure contains C"):
        predict(model, atoms)
    with pytest.raises(ModelFileError, match="basis of Si differs: the data has 2s2p1d, the model 1s1p"):
        check_basis(model, {"Si": "2s2p1d"})
    with pytest.raises(ModelFileError, match="the basis has O, which the model does not know"):
        check_basis(model, {"O": "1s1p"})
    check_basis(model, {"Si": "1s1p"})
    with pytest.raises(ModelFileError, match="predicts hamiltonian, overlap, not density_matrix"):
        predict(model, si_cell(), operators=["density_matrix"])


def test_resolve_model_names(exported, monkeypatch):
    _, path = exported
    monkeypatch.setenv("ASE_SLEM_MODELS", str(path.parent))
    assert resolve_model_path("si_tiny") == path
    assert resolve_model_path(str(path)) == path
    with pytest.raises(ModelFileError, match="no model file 'no_such_model'"):
        resolve_model_path("no_such_model")


def test_runtime_needs_no_training_code(exported):
    _, path = exported
    code = (
        "import sys\n"
        "from ase.build import bulk\n"
        "from ase_slem.model_file import load_model, predict\n"
        f"m = load_model({str(path)!r})\n"
        "ops = predict(m, bulk('Si', 'diamond', a=5.43))\n"
        "assert ops['hamiltonian'].natoms == 2\n"
        "bad = [k for k in sys.modules if k.startswith('ase_slem.train')]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]

"""benchmarks/model_accuracy.py: which frames count as unseen, and the per-size H error."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit in export/load


@pytest.fixture(scope="module")
def accuracy(benchmark_script):
    return benchmark_script("model_accuracy")


def test_unseen_frames_are_those_no_split_names(tmp_path, accuracy):
    for i in range(7):
        (tmp_path / f"frame.{i:06d}").mkdir()
    (tmp_path / ".frame.000007.tmp").mkdir()      # an interrupted write is not a frame
    (tmp_path / "frame.000008").write_text("")    # nor is a file
    split = {"train": ["frame.000000", "frame.000003"], "val": ["frame.000001"], "test": ["frame.000002"],
             "seed": 0}
    assert accuracy.unseen_frames(tmp_path, split) == ["frame.000004", "frame.000005", "frame.000006"]
    split["train"] += ["frame.000004", "frame.000005", "frame.000006"]
    assert accuracy.unseen_frames(tmp_path, split) == []


def test_unseen_split_without_unseen_frames_says_how_to_get_some(tmp_path, accuracy, monkeypatch):
    (tmp_path / "frame.000000").mkdir()
    monkeypatch.setattr("ase_slem.model_file.read_metadata",
                        lambda path: {"training": {"split": {"train": ["frame.000000"]}}})
    with pytest.raises(SystemExit, match="make_training_sets.py"):
        accuracy.evaluate("model.pt", str(tmp_path), split="unseen")


def test_hamiltonian_error_is_grouped_by_cell_size(tmp_path, accuracy):
    """One pass over frames of two sizes gives each size the H MAE it has on its own."""
    import torch
    from _train_helpers import quiet, sk_silicon_frames, tiny_config

    from ase_slem.model_file import load_model
    from ase_slem.train.config import config_from_dict
    from ase_slem.train.export import export_checkpoint
    from ase_slem.train.loop import train

    torch.set_num_threads(1)
    res = train(config_from_dict(tiny_config(tmp_path / "run", train={"steps": 4})),
                frames=sk_silicon_frames(5, seed=40), log=quiet)
    model = load_model(export_checkpoint(res.checkpoint, tmp_path / "tiny.pt"))
    small = sk_silicon_frames(3, seed=0, rattle=0.08, cubic=False)
    big = sk_silicon_frames(2, seed=7)
    frames = [big[0], small[0], small[1], big[1], small[2]]
    names = [f"frame.{i:06d}" for i in range(5)]

    out = accuracy.block_mae(model, frames, names, by_size=True)
    assert list(out["by size"]) == [2, 8]
    assert [v["frames"] for v in out["by size"].values()] == [3, 2]
    alone2 = accuracy.block_mae(model, small, names[:3])["hamiltonian"]["all"]
    alone8 = accuracy.block_mae(model, big, names[:2])["hamiltonian"]["all"]
    assert out["by size"][2]["hamiltonian_meV"] == pytest.approx(alone2, rel=1e-12)
    assert out["by size"][8]["hamiltonian_meV"] == pytest.approx(alone8, rel=1e-12)
    assert min(alone2, alone8) < out["hamiltonian"]["all"] < max(alone2, alone8)
    assert "by size" not in accuracy.block_mae(model, small, names[:3])


def test_reference_is_metallic_reads_the_frames_own_mesh(accuracy):
    """Slater-Koster silicon filled with 8 electrons is an insulator; with 4 (two bands, the second
    reaching the valence-band top at Gamma, the third dipping eV below it) its bands overlap."""
    from _train_helpers import sk_silicon_frames

    fr = sk_silicon_frames(1, seed=5, rattle=0.03, cubic=False)[0]
    assert accuracy.reference_is_metallic(fr) is None          # no mesh recorded: unknown
    fr.settings["kmesh"] = [4, 4, 4]
    fr.results["nelectron"] = 8
    assert accuracy.reference_is_metallic(fr) is False
    fr.results["nelectron"] = 4
    assert accuracy.reference_is_metallic(fr) is True
    fr.settings["dense_kmesh"] = [2, 2, 2]                      # the mesh H was built on wins
    assert accuracy.reference_is_metallic(fr) is True
    fr.results["band_overlap"] = -0.2                           # recorded by the generator: read, not recomputed
    assert accuracy.reference_is_metallic(fr) is False

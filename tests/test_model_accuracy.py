"""benchmarks/model_accuracy.py: which frames count as unseen, and the per-size H error."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "model_accuracy.py"


@pytest.fixture(scope="module")
def accuracy():
    spec = importlib.util.spec_from_file_location("model_accuracy", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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


def test_hamiltonian_error_is_grouped_by_cell_size(accuracy, monkeypatch):
    from types import SimpleNamespace

    frames = [SimpleNamespace(atoms=[0] * n) for n in (8, 2, 2, 8, 2)]
    names = [f"frame.{i:06d}" for i in range(5)]
    seen = {}

    def fake_block_mae(model, fr, nm):
        seen[len(fr[0].atoms)] = nm
        return {"hamiltonian": {"all": 10.0 * len(fr[0].atoms)}}

    monkeypatch.setattr(accuracy, "block_mae", fake_block_mae)
    out = accuracy.hamiltonian_mae_by_size(None, frames, names)
    assert list(out) == [2, 8]
    assert out[2] == {"frames": 3, "mae_meV": 20.0} and out[8] == {"frames": 2, "mae_meV": 80.0}
    assert seen == {2: ["frame.000001", "frame.000002", "frame.000004"], 8: ["frame.000000", "frame.000003"]}

"""scripts/make_training_sets.py: which structures a run computes."""
from __future__ import annotations

import argparse

import pytest


@pytest.fixture(scope="module")
def script(benchmark_script):
    return benchmark_script("make_training_sets", folder="scripts")


def test_frame_numbers_reads_numbers_and_inclusive_ranges(script):
    assert script.frame_numbers("2,4 10-12") == [2, 4, 10, 11, 12]
    assert script.frame_numbers("7") == [7]
    with pytest.raises(argparse.ArgumentTypeError, match="backwards"):
        script.frame_numbers("12-10")
    with pytest.raises(argparse.ArgumentTypeError, match="not a structure number"):
        script.frame_numbers("1-3-x")


def _captured_indices(script, monkeypatch, tmp_path, argv):
    seen = {}

    def fake_generate(structures, settings, folder, **kw):
        seen["n"], seen["indices"] = len(structures), kw["indices"]
        return argparse.Namespace(written=[], skipped=[], failed=[], seconds=0.0)

    monkeypatch.setattr(script, "generate_dataset", fake_generate)
    script.main(["si", "--out", str(tmp_path), *argv])
    return seen


def test_only_restricts_the_run_and_keeps_frame_numbers(script, monkeypatch, tmp_path):
    seen = _captured_indices(script, monkeypatch, tmp_path, ["--frames", "24", "--only", "20-22", "3", "5"])
    assert seen == {"n": 24, "indices": [3, 5, 20, 21, 22]}
    # with --kinds: the listed structures of that kind (every sixth, 5, 11, ..., is a cubic cell)
    seen = _captured_indices(script, monkeypatch, tmp_path,
                             ["--frames", "24", "--only", "3-12", "--kinds", "cubic8"])
    assert seen["indices"] == [5, 11]


def test_only_outside_the_structures_says_to_raise_frames(script, monkeypatch, tmp_path):
    with pytest.raises(SystemExit, match="raise --frames"):
        _captured_indices(script, monkeypatch, tmp_path, ["--frames", "12", "--only", "30"])

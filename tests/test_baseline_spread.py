"""benchmarks/baseline_spread.py: the block norms it compares, and that the superposed-atom
Kohn–Sham matrix takes most of H's change across geometries away (a small water set)."""
from __future__ import annotations

import numpy as np
import pytest

from _train_helpers import water_frames
from ase_slem.io.dataset import write_frame

pytest.importorskip("pyscf", reason="PySCF (the 'dft' extra) makes the frames and the baselines")


def test_shell_norms_are_the_block_norms(benchmark_script):
    bench = benchmark_script("baseline_spread")
    m = np.arange(16.0).reshape(4, 4)
    shells = [(0, 1), (1, 3)]  # an s shell and a p shell
    got = bench.shell_norms(m, shells)
    assert np.allclose(got, [0.0, np.linalg.norm(m[0, 1:]), np.linalg.norm(m[1:, 0]), np.linalg.norm(m[1:, 1:])])


def test_minao_baseline_takes_most_of_the_spread_of_h(tmp_path, benchmark_script):
    bench = benchmark_script("baseline_spread")
    for k, fr in enumerate(water_frames(3, "sto-3g", seed=7)):
        write_frame(tmp_path / "water", fr, k)
    res = bench.measure(str(tmp_path / "water"), 3)
    assert res["frames"] == 3
    assert res["spread"]["minao", "H"] < 0.5 * res["spread"]["reference", "H"]
    assert res["size"]["minao", "H"] < 0.2 * res["size"]["reference", "H"]
    assert "| minao |" in bench.markdown(res)

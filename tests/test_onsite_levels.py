"""benchmarks/onsite_levels.py: bond lengths, onsite levels and the across-/within-cell slopes."""
from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def levels(benchmark_script):
    return benchmark_script("onsite_levels")


def test_bond_lengths_of_diamond_and_of_a_displaced_atom(levels):
    from ase.build import bulk

    si = bulk("Si", "diamond", a=5.43, cubic=True)
    assert np.allclose(levels.bond_lengths(si), 5.43 * np.sqrt(3) / 4)
    si.positions[0] += [0.05, 0.05, 0.05]  # towards one neighbour, away from the other three
    r = levels.bond_lengths(si)
    assert r[0] > 5.43 * np.sqrt(3) / 4 + 1e-3
    assert np.isclose(r, 5.43 * np.sqrt(3) / 4).sum() == 3  # the atoms not bonded to atom 0 keep theirs


def test_onsite_levels_ignore_padding(levels):
    blocks = np.zeros((2, 4, 4))
    blocks[0] = np.diag([1.0, 2.0, 3.0, 99.0])  # atom 0 has 3 orbitals, row 3 is padding
    blocks[1] = np.diag([4.0, 4.0, 4.0, 4.0])
    assert np.allclose(levels.onsite_levels(blocks, np.array([3, 4])), [2.0, 4.0])


def test_summary_separates_across_and_within_cell_slopes(levels):
    rng = np.random.default_rng(0)
    cells = []
    for k in range(5):  # eight-atom cells: level = -7 (mean r) + 6 (r - mean r); the model gets only the first
        r = 2.35 + 0.02 * k + rng.normal(0, 0.03, 8)
        dft = -7.0 * r.mean() + 6.0 * (r - r.mean())
        cells.append({"r": r, "dft": dft, "model": np.full(8, -7.0 * r.mean())})
    for k in range(4):  # two-atom cells: both atoms alike
        r = np.full(2, 2.30 + 0.03 * k) + [0.0, 1e-15]  # equal up to rounding, as in a symmetric cell
        cells.append({"r": r, "dft": -7.0 * r, "model": -7.0 * r + 0.001})
    s = levels.summarize(cells)
    assert s[8]["across slope dft"] == pytest.approx(-7.0) and s[8]["across slope model"] == pytest.approx(-7.0)
    assert s[8]["within slope dft"] == pytest.approx(6.0) and s[8]["within R2 dft"] == pytest.approx(1.0)
    assert s[8]["within slope model"] == pytest.approx(0.0, abs=1e-9)
    dev = np.concatenate([6.0 * (c["r"] - c["r"].mean()) for c in cells[:5]])
    assert s[8]["deviation MAE meV"] == pytest.approx(np.abs(dev).mean() * 1e3)
    assert s[2]["level MAE meV"] == pytest.approx(1.0) and np.isnan(s[2]["within slope dft"])
    table = levels.markdown(s)
    assert "| 2-atom cells | 8-atom cells |" in table.splitlines()[0].replace("| quantity ", "")
    assert "| +6.00 / " in table and "| — / — |" in table

"""benchmarks/band_error_by_shell.py: the shells partition the operator, and the table's last row
is the mean of the absolute values above it."""
from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def by_shell(benchmark_script):
    return benchmark_script("band_error_by_shell")


def test_shells_partition_the_operator(by_shell):
    """Onsite blocks plus consecutive distance shells give back H exactly; each shell keeps only
    pairs in its range."""
    from _train_helpers import sk_silicon_frames

    fr = sk_silicon_frames(1, seed=3, rattle=0.08, cubic=False)[0]
    H, atoms = fr.operators["hamiltonian"], fr.atoms
    k = np.array([[0.0, 0.0, 0.0], [0.1, 0.2, 0.3]])
    edges = [0.0, 2.7, 4.2, 100.0]
    parts = [by_shell.shell_mask(H, atoms, -1.0, 1e-3)]
    parts += [by_shell.shell_mask(H, atoms, max(lo, 1e-3), hi) for lo, hi in zip(edges[:-1], edges[1:])]
    np.testing.assert_allclose(sum(p.bloch(k) for p in parts), H.bloch(k), atol=1e-12)
    first = parts[1]
    pos, cell = atoms.positions, np.asarray(atoms.cell[:])
    d = np.linalg.norm(pos[first.j] + first.R @ cell - pos[first.i], axis=1)
    norms = np.concatenate([np.abs(g.data).reshape(len(g.data), -1).max(1) for g in first.groups])
    assert np.all(norms[(d <= 1e-3) | (d > 2.7)] == 0)
    assert np.all(norms[(d > 1e-3) & (d <= 2.7)] > 0)    # first neighbours of Slater-Koster Si couple


def test_table_mean_row(by_shell):
    res = {"shells": ["onsite", "0-2.7 Å"],
           "cells": [("a", 2, [(10.0, 5.0), (-20.0, 8.0), (30.0, 9.0)]),
                     ("b", 8, [(-30.0, 7.0), (40.0, 2.0), (-10.0, 3.0)])]}
    table = by_shell.markdown(res)
    assert "| only onsite | only 0-2.7 Å |" in table
    assert table.splitlines()[-1] == "| mean of \\|VBM error\\| / MAE | 20.0 / 6.0 | 30.0 / 5.0 | 20.0 / 6.0 |"

"""benchmarks/band_error_by_shell.py: the table's last row is the mean of the absolute values above
it (the shells themselves are RealSpaceOperator.within_distance, tests/test_operators.py)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def by_shell(benchmark_script):
    return benchmark_script("band_error_by_shell")


def test_table_mean_row(by_shell):
    res = {"shells": ["onsite", "0-2.7 Å"],
           "cells": [("a", 2, [(10.0, 5.0), (-20.0, 8.0), (30.0, 9.0)]),
                     ("b", 8, [(-30.0, 7.0), (40.0, 2.0), (-10.0, 3.0)])]}
    table = by_shell.markdown(res)
    assert "| only onsite | only 0-2.7 Å |" in table
    assert table.splitlines()[-1] == "| mean of \\|VBM error\\| / MAE | 20.0 / 6.0 | 30.0 / 5.0 | 20.0 / 6.0 |"

"""RealSpaceOperator: packing, Hermitian completion, Bloch sums, sparse export, traces."""
import numpy as np
import pytest

from ase_slem import NonHermitianError, OperatorError, RealSpaceOperator

COUNTS = [1, 4, 9, 4]
SHIFTS = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, -1, 0), (0, 0, 2), (-1, 0, 1)]


def random_blocks(rng, counts=COUNTS, shifts=SHIFTS):
    """One triangle of random blocks (onsite blocks symmetric)."""
    i, j, R, blocks = [], [], [], []
    for r in shifts:
        for a in range(len(counts)):
            for b in range(len(counts)):
                if r == (0, 0, 0) and a > b:
                    continue
                blk = rng.normal(size=(counts[a], counts[b]))
                if r == (0, 0, 0) and a == b:
                    blk = blk + blk.T
                i.append(a), j.append(b), R.append(r), blocks.append(blk)
    return i, j, R, blocks


def dense_bloch_reference(counts, i, j, R, blocks, kpts):
    """Plain loop: O(k) from one triangle plus mirrored blocks."""
    off = np.concatenate([[0], np.cumsum(counts)])
    n = off[-1]
    out = np.zeros((len(kpts), n, n), complex)
    for a, b, r, blk in zip(i, j, R, blocks):
        ph = np.exp(2j * np.pi * np.asarray(kpts) @ np.asarray(r))
        out[:, off[a] : off[a + 1], off[b] : off[b + 1]] += ph[:, None, None] * blk
        if not (a == b and not any(r)):
            out[:, off[b] : off[b + 1], off[a] : off[a + 1]] += np.conj(ph)[:, None, None] * blk.T
    return out


@pytest.fixture
def op_and_blocks():
    rng = np.random.default_rng(7)
    i, j, R, blocks = random_blocks(rng)
    return RealSpaceOperator.from_blocks(COUNTS, i, j, R, blocks, name="H"), (i, j, R, blocks)


def test_bloch_matches_plain_loop_and_is_hermitian(op_and_blocks):
    op, (i, j, R, blocks) = op_and_blocks
    kpts = np.random.default_rng(1).random((5, 3))
    hk = op.bloch(kpts)
    ref = dense_bloch_reference(COUNTS, i, j, R, blocks, kpts)
    assert hk.shape == (5, op.norb, op.norb)
    assert np.abs(hk - ref).max() < 1e-12
    assert np.abs(hk - hk.conj().transpose(0, 2, 1)).max() < 1e-12
    # a single k-point gives a 2D matrix; a tiny batch size gives the same result
    assert np.abs(op.bloch(kpts[2]) - ref[2]).max() < 1e-12
    assert np.abs(op.bloch(kpts, max_bytes=1) - ref).max() < 1e-12


def test_block_lookup_both_triangles_and_absent(op_and_blocks):
    op, (i, j, R, blocks) = op_and_blocks
    for a, b, r, blk in list(zip(i, j, R, blocks))[::5]:
        assert np.array_equal(op.block(a, b, r), blk)
        assert np.array_equal(op.block(b, a, tuple(-x for x in r)), blk.T)
    assert not op.block(0, 1, (5, 5, 5)).any()
    assert op.block(2, 1, (5, 5, 5)).shape == (9, 4)


def test_completion_from_either_triangle_and_both(op_and_blocks):
    op, (i, j, R, blocks) = op_and_blocks
    # give the lower triangle instead (mirror every block)
    mi, mj, mR, mb = j, i, [tuple(-x for x in r) for r in R], [b.T for b in blocks]
    lower = RealSpaceOperator.from_blocks(COUNTS, mi, mj, mR, mb)
    both = RealSpaceOperator.from_blocks(COUNTS, list(i) + list(mi), list(j) + list(mj), list(R) + mR, list(blocks) + mb)
    k = np.random.default_rng(3).random((3, 3))
    assert np.abs(lower.bloch(k) - op.bloch(k)).max() < 1e-12
    assert np.abs(both.bloch(k) - op.bloch(k)).max() < 1e-12
    assert lower.nblocks == both.nblocks == op.nblocks


def test_non_hermitian_reports_largest_asymmetry(op_and_blocks):
    _, (i, j, R, blocks) = op_and_blocks
    mi, mj, mR = j, i, [tuple(-x for x in r) for r in R]
    mb = [b.T.copy() for b in blocks]
    mb[7][0, 0] += 0.25
    with pytest.raises(NonHermitianError, match=r"differs .* by up to 0\.25"):
        RealSpaceOperator.from_blocks(COUNTS, list(i) + list(mi), list(j) + list(mj), list(R) + mR, list(blocks) + mb)
    bad = [b.copy() for b in blocks]
    onsite = next(n for n, (a, b, r) in enumerate(zip(i, j, R)) if a == b == 2 and r == (0, 0, 0))
    bad[onsite][0, 1] += 1.0
    with pytest.raises(NonHermitianError, match="not Hermitian"):
        RealSpaceOperator.from_blocks(COUNTS, i, j, R, bad)


def test_bad_shapes_and_indices_are_named():
    with pytest.raises(OperatorError, match=r"shape \(3, 3\).*\(1, 4\)"):
        RealSpaceOperator.from_blocks([1, 4], [0], [1], [(0, 0, 0)], [np.zeros((3, 3))])
    with pytest.raises(OperatorError, match="out of range"):
        RealSpaceOperator.from_blocks([1, 4], [0], [2], [(0, 0, 0)], [np.zeros((1, 4))])
    with pytest.raises(OperatorError, match="molecular"):
        RealSpaceOperator.from_blocks([1], [0], [0], [(1, 0, 0)], [np.zeros((1, 1))], periodic=False)
    mol = RealSpaceOperator.from_blocks([1], [0], [0], [(0, 0, 0)], [np.ones((1, 1))], periodic=False)
    with pytest.raises(OperatorError, match="only k = Gamma"):
        mol.bloch([[0.1, 0, 0]])


@pytest.mark.parametrize("bad", [np.zeros((4, 2)), np.zeros((2, 3, 3)), [[0.1, np.nan, 0]], np.zeros(4)])
def test_kpoints_of_wrong_shape(op_and_blocks, bad):
    op, _ = op_and_blocks
    with pytest.raises(ValueError, match="k-points"):
        op.bloch(bad)


def test_sparse_exports_match_dense(op_and_blocks):
    op, (i, j, R, blocks) = op_and_blocks
    k = np.array([0.13, -0.4, 0.27])
    assert np.abs(op.bloch_sparse(k).toarray() - op.bloch(k)).max() < 1e-12
    total = sum(np.exp(2j * np.pi * k @ r) * op.to_sparse(r).toarray() for r in op.cell_shifts)
    assert np.abs(total - op.bloch(k)).max() < 1e-12
    s0 = op.to_sparse((0, 0, 0)).toarray()
    assert np.abs(s0 - s0.T).max() == 0.0
    assert np.isrealobj(op.bloch_sparse(np.zeros(3)).toarray())


def test_from_dense_round_trip(op_and_blocks):
    op, _ = op_and_blocks
    shifts = op.cell_shifts
    dense = np.stack([op.to_sparse(r).toarray() for r in shifts])
    back = RealSpaceOperator.from_dense(COUNTS, dense, shifts, drop_below=0.0)
    k = np.random.default_rng(5).random((2, 3))
    assert np.abs(back.bloch(k) - op.bloch(k)).max() < 1e-12
    assert op.max_abs_difference(back) < 1e-14


def test_trace_product_and_mulliken_equal_kspace_values(op_and_blocks):
    """Tr(A B) per cell and Mulliken populations agree with a dense k-mesh evaluation."""
    op, _ = op_and_blocks
    rng = np.random.default_rng(11)
    i, j, R, blocks = random_blocks(rng, shifts=[(0, 0, 0), (1, 0, 0), (0, 0, 2)])
    other = RealSpaceOperator.from_blocks(COUNTS, i, j, R, blocks)
    # on a mesh that resolves every R, the k-average of Tr(A(k) B(k)^T-ish) equals the real-space sum
    n = 6
    g = np.stack(np.meshgrid(*[np.arange(n) / n] * 3, indexing="ij"), -1).reshape(-1, 3)
    ak, bk = op.bloch(g), other.bloch(g)
    ref_trace = np.einsum("kab,kba->", ak, bk).real / len(g)
    assert op.trace_product(other) == pytest.approx(ref_trace, rel=1e-12)
    q = op.mulliken(other)
    ref_q = np.einsum("kab,kba->a", ak, bk).real / len(g)
    assert np.abs(q - ref_q).max() < 1e-10
    assert q.sum() == pytest.approx(op.trace_product(other), rel=1e-12)


def test_check_structure():
    from ase.build import bulk

    from ase_slem import Basis

    basis = Basis({"Si": "1s1p"})
    si = bulk("Si")
    op = RealSpaceOperator.from_blocks([4, 4], [0], [1], [(0, 0, 0)], [np.ones((4, 4))], basis=basis)
    op.check_structure(si)
    with pytest.raises(OperatorError, match="has 2 atoms but the structure has 4"):
        op.check_structure(si.repeat((2, 1, 1)))
    other = RealSpaceOperator.from_blocks([4, 4], [0], [1], [(0, 0, 0)], [np.ones((4, 4))], basis=Basis({"Si": "2s2p1d"}))
    with pytest.raises(OperatorError, match="orbitals in the operator but 13"):
        other.check_structure(si)


def test_distance_shells_partition_the_operator():
    """Onsite blocks plus consecutive distance shells (within_distance) give back H exactly; each
    shell keeps only pairs in its range, and pair_distances are the bond lengths."""
    from _train_helpers import sk_silicon_frames

    fr = sk_silicon_frames(1, seed=3, rattle=0.08, cubic=False)[0]
    H, atoms = fr.operators["hamiltonian"], fr.atoms
    d = H.pair_distances(atoms)
    assert d.shape == (H.nblocks,) and np.all(d[(H.i == H.j) & ~H.R.any(1)] == 0)
    i = np.flatnonzero((H.i != H.j) & ~H.R.any(1))[0]
    assert d[i] == pytest.approx(atoms.get_distance(int(H.i[i]), int(H.j[i])))
    k = np.array([[0.0, 0.0, 0.0], [0.1, 0.2, 0.3]])
    edges = [1e-3, 2.7, 4.2, 100.0]
    parts = [H.within_distance(atoms, 1e-3)] + [H.within_distance(atoms, hi, lo) for lo, hi in zip(edges[:-1], edges[1:])]
    np.testing.assert_allclose(sum(p.bloch(k) for p in parts), H.bloch(k), atol=1e-12)
    first = parts[1]
    norms = np.concatenate([np.abs(g.data).reshape(len(g.data), -1).max(1) for g in first.groups])
    assert np.all(norms[(d <= 1e-3) | (d > 2.7)] == 0)
    assert np.all(norms[(d > 1e-3) & (d <= 2.7)] > 0)    # first neighbours of Slater-Koster Si couple


def test_sum_covers_the_blocks_of_both_operators():
    """A + B keeps every block either has (a block one lacks counts as zero), so (A + B)(k) =
    A(k) + B(k) even when the two were cut at different ranges (a network's H within its
    cutoff plus a baseline over all pairs)."""
    rng = np.random.default_rng(11)
    a = RealSpaceOperator.from_blocks(COUNTS, *random_blocks(rng, shifts=SHIFTS[:3]), name="A")
    b = RealSpaceOperator.from_blocks(COUNTS, *random_blocks(rng, shifts=SHIFTS[1:]), name="B")
    total = a + b
    assert total.name == "A" and total.nblocks > max(a.nblocks, b.nblocks)
    k = rng.random((3, 3))
    assert np.abs(total.bloch(k) - a.bloch(k) - b.bloch(k)).max() < 1e-12
    assert np.allclose(total.block(1, 2, (0, 1, 0)), a.block(1, 2, (0, 1, 0)) + b.block(1, 2, (0, 1, 0)))
    assert np.allclose(total.block(0, 3, (0, 0, 2)), b.block(0, 3, (0, 0, 2)))  # only in B
    with pytest.raises(OperatorError, match="different structures"):
        a + RealSpaceOperator.from_blocks([1, 4], [0], [1], [(0, 0, 0)], [np.ones((1, 4))])
    molecular = RealSpaceOperator.from_blocks(COUNTS, [0], [0], [(0, 0, 0)], [np.ones((1, 1))], periodic=False)
    with pytest.raises(OperatorError, match="periodic and the molecular"):
        a + molecular

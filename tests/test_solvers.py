"""Generalized eigensolvers: drivers, eigenvectors, ill-conditioned and indefinite overlaps, shift-invert."""
import numpy as np
import pytest
import scipy.linalg as sl

from ase_slem import RealSpaceOperator, band_energies, eigs_near, generalized_eigh, solve_k
from ase_slem.solvers import IllConditionedOverlapWarning, OverlapNotPositiveDefiniteError


def random_pair(n=12, nk=3, seed=0, cond=None):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(nk, n, n)) + 1j * rng.normal(size=(nk, n, n))
    h = a + a.conj().transpose(0, 2, 1)
    b = rng.normal(size=(nk, n, n)) + 1j * rng.normal(size=(nk, n, n))
    s = b @ b.conj().transpose(0, 2, 1) / n + 0.3 * np.eye(n)
    if cond is not None:
        w, v = np.linalg.eigh(s)
        w[:, 0] = cond
        s = np.einsum("kab,kb,kcb->kac", v, w, v.conj())
    return h, s


@pytest.mark.parametrize("driver", ["evd", "evr", "ev"])
def test_generalized_eigh_matches_scipy(driver):
    h, s = random_pair()
    w, v = generalized_eigh(h, s, driver=driver)
    for k in range(len(h)):
        assert np.abs(w[k] - sl.eigh(h[k], s[k], eigvals_only=True)).max() < 1e-10
        assert np.abs(h[k] @ v[k] - s[k] @ v[k] * w[k]).max() < 1e-9
        assert np.abs(v[k].conj().T @ s[k] @ v[k] - np.eye(len(h[k]))).max() < 1e-10
    assert np.abs(generalized_eigh(h, s, eigvals_only=True, driver=driver) - w).max() < 1e-10


def test_real_input_and_single_matrix():
    h, s = random_pair(nk=1)
    hr, sr = h[0].real, s[0].real
    w, v = generalized_eigh(hr, sr)
    assert w.shape == (12,) and np.isrealobj(v)
    assert np.abs(w - sl.eigh(hr, sr, eigvals_only=True)).max() < 1e-10


def test_near_singular_overlap_removes_null_space_with_warning():
    h, s = random_pair(cond=1e-10)
    with pytest.warns(IllConditionedOverlapWarning, match=r"overlap_threshold=1e-06"):
        w = generalized_eigh(h, s, eigvals_only=True)
    assert np.isnan(w[:, -1]).all() and np.isfinite(w[:, :-1]).all()
    # the kept eigenvalues are those of H projected on the well-conditioned subspace
    for k in range(len(h)):
        sw, sv = np.linalg.eigh(s[k])
        x = sv[:, 1:] / np.sqrt(sw[1:])
        assert np.abs(w[k, :-1] - np.linalg.eigvalsh(x.conj().T @ h[k] @ x)).max() < 1e-9


def test_negative_overlap_raises_clear_error():
    h, s = random_pair(cond=-0.05)
    with pytest.raises(OverlapNotPositiveDefiniteError, match=r"not positive definite at k-point index 0: smallest eigenvalue -0.05"):
        generalized_eigh(h, s)


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\(n, n\) or \(nk, n, n\)"):
        generalized_eigh(np.zeros((3, 4)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"got \(3, 3\) and \(4, 4\)"):
        generalized_eigh(np.eye(3), np.eye(4))


def chain_operators(n_cells=1, t=-1.0, s=0.2, e0=0.3):
    """1D chain (one s orbital per atom) written as a supercell of n_cells atoms."""
    i, j, R, hb, sb = [], [], [], [], []
    for a in range(n_cells):
        i.append(a), j.append(a), R.append((0, 0, 0)), hb.append(np.array([[e0]])), sb.append(np.eye(1))
        b, shift = (a + 1) % n_cells, (1 if a + 1 == n_cells else 0)
        i.append(a), j.append(b), R.append((shift, 0, 0)), hb.append(np.array([[t]])), sb.append(np.array([[s]]))
    counts = [1] * n_cells
    return (
        RealSpaceOperator.from_blocks(counts, i, j, R, hb),
        RealSpaceOperator.from_blocks(counts, i, j, R, sb),
    )


def test_band_energies_chain_closed_form():
    t, s, e0 = -1.0, 0.2, 0.3
    H, S = chain_operators(1, t, s, e0)
    k = np.linspace(-0.5, 0.5, 21)
    kpts = np.stack([k, 0 * k, 0 * k], 1)
    exact = (e0 + 2 * t * np.cos(2 * np.pi * k)) / (1 + 2 * s * np.cos(2 * np.pi * k))
    assert np.abs(band_energies(H, S, kpts)[:, 0] - exact).max() < 1e-12


def test_shift_invert_finds_eigenvalues_near_target():
    H, S = chain_operators(200)
    dense = band_energies(H, S, [0.0, 0.0, 0.0])
    sigma = 0.35
    near = eigs_near(H, S, sigma, nev=6)
    expected = np.sort(dense[np.argsort(np.abs(dense - sigma))[:6]])
    assert np.abs(near - expected).max() < 1e-9
    kpt = (0.31, 0.0, 0.0)
    near_k, vec = eigs_near(H, S, sigma, nev=4, kpt=kpt, eigvals_only=False)
    hk, sk = H.bloch(kpt), S.bloch(kpt)
    assert np.abs(hk @ vec - sk @ vec * near_k).max() < 1e-8


def test_shift_invert_dense_and_sparse_factorizations_agree():
    H, S = chain_operators(120)
    sigma = 0.2
    kpt = (0.17, 0.0, 0.0)  # complex Hermitian H(k)
    sparse = eigs_near(H, S, sigma, nev=5, kpt=kpt, factorization="sparse")
    dense, vec = eigs_near(H, S, sigma, nev=5, kpt=kpt, factorization="dense", eigvals_only=False)
    assert np.abs(sparse - dense).max() < 1e-9
    hk, sk = H.bloch(kpt), S.bloch(kpt)
    assert np.abs(hk @ vec - sk @ vec * dense).max() < 1e-8
    with pytest.raises(ValueError, match="factorization must be"):
        eigs_near(H, S, sigma, nev=5, factorization="cholesky")


def test_solve_k_batches_and_mismatched_pair():
    H, S = chain_operators(4)
    k = np.random.default_rng(0).random((7, 3))
    w1, v1 = solve_k(H, S, k, eigvals_only=False, batch=2)
    w2 = solve_k(H, S, k, batch=100)
    assert np.abs(w1 - w2).max() < 1e-12 and v1.shape == (7, 4, 4)
    H3, _ = chain_operators(3)
    from ase_slem import OperatorError

    with pytest.raises(OperatorError, match="same structure"):
        band_energies(H3, S, k)

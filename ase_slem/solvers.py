"""Generalized Hermitian eigenproblems H c = e S c over k-points.

Dense path: per k-point the LAPACK sequence a generalized driver runs internally (Cholesky of
S, reduction to a standard problem, divide-and-conquer or MRRR eigensolver, back-substitution),
called directly through scipy so that the Cholesky factor also yields a cheap O(n^2) condition
estimate of S.  When S(k) is nearly singular (smallest eigenvalue below ``overlap_threshold``)
the near-null space is removed by canonical orthogonalization and a warning names the
threshold; a clearly negative S(k) eigenvalue raises :class:`OverlapNotPositiveDefiniteError`.

Sparse path (:func:`eigs_near`): a few eigenpairs nearest a target energy by shift-invert
(ARPACK with a sparse LU of H - sigma S).

Units: whatever H is in (eV in the public API); S dimensionless.  No torch here.
"""
from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
from scipy.linalg import get_lapack_funcs

from .operators import OperatorError, RealSpaceOperator, as_kpoints

Driver = Literal["evd", "evr", "ev"]


class OverlapNotPositiveDefiniteError(np.linalg.LinAlgError):
    """S(k) has a clearly negative eigenvalue: it is not an overlap matrix of real orbitals."""


class IllConditionedOverlapWarning(UserWarning):
    """Part of the basis was removed at some k-point because S(k) is nearly singular."""


def _check_square_pair(H: np.ndarray, S: np.ndarray) -> None:
    if H.shape != S.shape or H.ndim not in (2, 3) or H.shape[-1] != H.shape[-2]:
        raise ValueError(
            f"H and S must both have shape (n, n) or (nk, n, n); got {H.shape} and {S.shape}"
        )


def _solve_one(h, s, *, eigvals_only, driver, overlap_threshold, k_label):
    """One k-point. Returns (w, v or None, nremoved)."""
    n = h.shape[0]
    cplx = np.iscomplexobj(h) or np.iscomplexobj(s)
    dtype = complex if cplx else float
    h = np.asarray(h, dtype=dtype)
    s = np.asarray(s, dtype=dtype)
    potrf, pocon, hegst, trtrs = get_lapack_funcs(("potrf", "pocon", "hegst" if cplx else "sygst", "trtrs"), (h,))
    if cplx:
        ev = {"evd": "heevd", "evr": "heevr", "ev": "heev"}[driver]
    else:
        ev = {"evd": "syevd", "evr": "syevr", "ev": "syev"}[driver]
    (eig,) = get_lapack_funcs((ev,), (h,))

    def standard(a, compute_v):
        out = eig(a, compute_v=compute_v, lower=1)
        w, v, info = out[0], out[1], out[-1]  # ?heevr also returns m and isuppz
        if info != 0:
            raise np.linalg.LinAlgError(f"LAPACK {ev} failed (info={info}) at {k_label}")
        return w, (v if compute_v else None)

    L, info = potrf(s, lower=1, clean=1)
    ok = info == 0
    if ok:
        anorm = np.abs(s).sum(axis=0).max()
        rcond, _ = pocon(L, anorm, uplo="L")
        # rcond * ||S||_1 estimates 1/||S^-1||_1 <= lambda_min(S); look closer when it is small
        ok = rcond * anorm > 10 * overlap_threshold
    if not ok:
        sw, sv = np.linalg.eigh(s)
        if sw[0] < -overlap_threshold:
            raise OverlapNotPositiveDefiniteError(
                f"the overlap S is not positive definite at {k_label}: smallest eigenvalue "
                f"{sw[0]:.3g}. An overlap of real orbitals cannot be; check that it is an overlap "
                f"(not H), that no blocks are missing, and the orbital order/convention."
            )
        if sw[0] < overlap_threshold:
            keep = sw >= overlap_threshold
            x = sv[:, keep] / np.sqrt(sw[keep])
            hp = x.conj().T @ h @ x
            w, y = standard(hp, 0 if eigvals_only else 1)
            v = None if eigvals_only else x @ y
            return w, v, int(n - keep.sum())
        L, info = potrf(s, lower=1, clean=1)
        if info != 0:  # pragma: no cover - eigh said PD but Cholesky disagrees
            raise np.linalg.LinAlgError(f"Cholesky of S failed at {k_label} (info={info})")
    a, info = hegst(h, L, itype=1, lower=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"LAPACK reduction to standard form failed at {k_label} (info={info})")
    w, y = standard(a, 0 if eigvals_only else 1)
    if eigvals_only:
        return w, None, 0
    v, info = trtrs(L, y, lower=1, trans=2)
    return w, v, 0


def generalized_eigh(
    H: np.ndarray,
    S: np.ndarray,
    *,
    eigvals_only: bool = False,
    driver: Driver = "evd",
    overlap_threshold: float = 1e-6,
    k_offset: int = 0,
):
    """Solve H c = e S c for one (n, n) or a batch (nk, n, n) of Hermitian pairs.

    Parameters
    ----------
    driver:
        LAPACK eigensolver of the reduced standard problem: ``"evd"`` (divide and conquer,
        default), ``"evr"`` (MRRR) or ``"ev"`` (QR).
    overlap_threshold:
        S(k) eigenvectors with eigenvalue below this are removed (canonical orthogonalization)
        with an :class:`IllConditionedOverlapWarning`; the missing eigenvalues are NaN at the top
        of the spectrum.

    Returns
    -------
    eigenvalues (nk, n) ascending (same unit as H), and, unless ``eigvals_only``, eigenvectors
    (nk, n, n) with columns S-orthonormal (c^H S c = 1).  Without a batch axis for (n, n) input.
    """
    H = np.asarray(H)
    S = np.asarray(S)
    _check_square_pair(H, S)
    single = H.ndim == 2
    if single:
        H, S = H[None], S[None]
    nk, n, _ = H.shape
    cplx = np.iscomplexobj(H) or np.iscomplexobj(S)
    w_all = np.full((nk, n), np.nan)
    v_all = None if eigvals_only else np.zeros((nk, n, n), dtype=complex if cplx else float)
    removed = {}
    for k in range(nk):
        w, v, nrem = _solve_one(
            H[k], S[k], eigvals_only=eigvals_only, driver=driver,
            overlap_threshold=overlap_threshold, k_label=f"k-point index {k + k_offset}",
        )
        w_all[k, : len(w)] = w
        if v is not None:
            v_all[k, :, : v.shape[1]] = v
        if nrem:
            removed[k] = nrem
    if removed:
        worst = max(removed.values())
        warnings.warn(
            f"the overlap is nearly singular at {len(removed)} of {nk} k-points: up to {worst} "
            f"basis combinations with S eigenvalue < overlap_threshold={overlap_threshold:g} were "
            f"removed there (their eigenvalues are NaN). Raise or lower overlap_threshold to change this.",
            IllConditionedOverlapWarning,
            stacklevel=2,
        )
    if single:
        return w_all[0] if eigvals_only else (w_all[0], v_all[0])
    return w_all if eigvals_only else (w_all, v_all)


def _check_pair(H: RealSpaceOperator, S: RealSpaceOperator) -> None:
    if not np.array_equal(H.orbital_counts, S.orbital_counts):
        raise OperatorError(
            f"H and S do not belong to the same structure/basis: {H.natoms} vs {S.natoms} atoms, "
            f"{H.norb} vs {S.norb} orbitals"
        )


def solve_k(
    H: RealSpaceOperator,
    S: RealSpaceOperator,
    kpts,
    *,
    eigvals_only: bool = True,
    driver: Driver = "evd",
    overlap_threshold: float = 1e-6,
    batch: int | None = None,
):
    """Bloch-sum H and S at ``kpts`` (fractional, (nk, 3)) and solve; see :func:`generalized_eigh`.

    k-points are processed in batches (``batch`` k-points, default chosen to keep the dense
    H(k), S(k) under ~0.5 GB) so memory stays bounded for large cells.
    """
    _check_pair(H, S)
    k, single = as_kpoints(kpts)
    n = H.norb
    if batch is None:
        batch = max(1, int((1 << 29) // max(1, 2 * 16 * n * n)))
    ws, vs = [], []
    for s in range(0, len(k), batch):
        kb = k[s : s + batch]
        hk, sk = H.bloch(kb), S.bloch(kb)
        if not (H.periodic or S.periodic) or np.allclose(kb, 0):
            hk, sk = hk.real, sk.real
        res = generalized_eigh(
            hk, sk, eigvals_only=eigvals_only, driver=driver, overlap_threshold=overlap_threshold, k_offset=s
        )
        if eigvals_only:
            ws.append(res)
        else:
            ws.append(res[0])
            vs.append(res[1])
    w = np.concatenate(ws)
    if eigvals_only:
        return w[0] if single else w
    v = np.concatenate(vs)
    return (w[0], v[0]) if single else (w, v)


def band_energies(H: RealSpaceOperator, S: RealSpaceOperator, kpts, **kwargs) -> np.ndarray:
    """Band energies (nk, nbands) at fractional ``kpts`` (nk, 3), ascending, in H's unit (eV)."""
    return solve_k(H, S, kpts, eigvals_only=True, **kwargs)


DENSE_ROW_FILL = 400  # mean non-zeros per row above which eigs_near factorizes densely


def eigs_near(
    H: RealSpaceOperator,
    S: RealSpaceOperator,
    sigma: float,
    nev: int = 10,
    kpt=(0.0, 0.0, 0.0),
    *,
    eigvals_only: bool = True,
    tol: float = 0.0,
    factorization: str = "auto",
):
    """The ``nev`` eigenpairs of H(k) c = e S(k) c nearest ``sigma`` (eV) by shift-invert.

    For large cells where dense diagonalization is out of reach: H(k) - sigma S(k) is factorized
    once and ARPACK finds the eigenvalues of its inverse largest in magnitude.
    ``factorization``: ``"sparse"`` (SuperLU), ``"dense"`` (LAPACK getrf on the dense matrix,
    norb^2 numbers of memory) or ``"auto"`` (default): dense when rows hold more than
    ``DENSE_ROW_FILL`` non-zeros on average -- long-ranged bases in 3D (e.g. gth-dzvp silicon
    at 10 Å, ~2700 per row), whose sparse LU fills in to a nearly dense one and exceeds
    SuperLU's 32-bit index range -- else sparse.
    Returns eigenvalues (nev,) ascending (and eigenvectors (norb, nev)).
    """
    import scipy.linalg as sla
    import scipy.sparse.linalg as spla

    _check_pair(H, S)
    if nev >= H.norb - 1:
        raise ValueError(f"nev={nev} must be smaller than the number of orbitals minus one ({H.norb - 1}); use band_energies")
    if factorization not in ("auto", "sparse", "dense"):
        raise ValueError(f"factorization must be 'auto', 'sparse' or 'dense', got {factorization!r}")
    hk, sk = H.bloch_sparse(kpt), S.bloch_sparse(kpt)
    shifted = (hk - sigma * sk).tocsc()
    if factorization == "auto":
        factorization = "dense" if shifted.nnz > DENSE_ROW_FILL * shifted.shape[0] else "sparse"
    if factorization == "sparse":
        solve = spla.splu(shifted).solve
    else:
        lu_piv = sla.lu_factor(shifted.toarray(), overwrite_a=True, check_finite=False)
        del shifted

        def solve(x):
            return sla.lu_solve(lu_piv, x, check_finite=False)
    op_inv = spla.LinearOperator(hk.shape, matvec=solve, dtype=np.result_type(hk.dtype, sk.dtype))
    w, v = spla.eigsh(hk, k=nev, M=sk, sigma=sigma, which="LM", OPinv=op_inv, tol=tol)
    order = np.argsort(w)
    w, v = w[order], v[:, order]
    return w if eigvals_only else (w, v)

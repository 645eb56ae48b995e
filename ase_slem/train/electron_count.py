"""Electron-count term of the training loss: Tr(D_pred S) against Tr(D_DFT S) per frame.

The block loss weighs every element of D alike, but the number of electrons a predicted
density matrix holds, N = Tr(D S) = sum over blocks of <D_ij(R), S_ij(R)>, is a sum of some
30,000 terms per silicon atom (13 orbitals, about 200 neighbours within 10 Å), so element
errors far below the loss's resolution add up to a few hundredths of an electron.  This term
trains that sum directly: for each frame the signed difference

    dN = sum_i <D_pred_ii - D_ii, S_ii> + 2 sum_(i<j or R>0) <D_pred_ij(R) - D_ij(R), S_ij(R)>

over the blocks the model predicts (onsite blocks once; each bond twice, for itself and
its transpose, the reverse block D_ji(-R) = D_ij(R)^T), with the DFT overlap.  Its target is
the truncated DFT sum over the same blocks, not N_e, so blocks beyond r_bond are not asked of
the predicted ones.
"""
from __future__ import annotations

import torch
from torch import Tensor


def electron_count_errors(outputs, batch) -> Tensor:
    """(n_frames,) signed error of Tr(D S) per frame of a collated ``batch`` (electrons).

    ``outputs`` holds ``density_matrix_onsite`` (N, M, M) and ``density_matrix_bond``
    (P, M, M); ``batch.targets`` the DFT ``density_matrix`` and ``overlap`` blocks in the
    same padded layout (padding is zero in the overlap, so it adds nothing).
    """
    d_on, d_b = outputs["density_matrix_onsite"], outputs["density_matrix_bond"]
    t_on, t_b = batch.targets["density_matrix"]
    s_on, s_b = batch.targets["overlap"]
    per_atom = ((d_on - t_on.to(d_on.dtype)) * s_on.to(d_on.dtype)).sum((1, 2))
    per_bond = 2.0 * ((d_b - t_b.to(d_b.dtype)) * s_b.to(d_b.dtype)).sum((1, 2))
    n_frames = len(batch.n_atoms)
    atom_frame = _frame_index(batch.n_atoms, d_on.device)
    bond_frame = _frame_index(batch.n_bonds, d_on.device)
    err = per_atom.new_zeros(n_frames)
    err = err.index_add(0, atom_frame, per_atom)
    return err.index_add(0, bond_frame, per_bond)


def _frame_index(counts, device) -> Tensor:
    """(sum(counts),) frame number of each consecutive row."""
    return torch.repeat_interleave(torch.arange(len(counts), device=device),
                                   torch.as_tensor(list(counts), device=device))

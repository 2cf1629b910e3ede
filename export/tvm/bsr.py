"""Dense weight matrices <-> block sparse rows (BSR) with blocks of ``bsr`` output × 1 input channel.

A 1×1 convolution's weight ``W [C_out, C_in]`` (ONNX ``[C_out, C_in, 1, 1]`` squeezed) is cut into
block rows of ``bsr`` consecutive output channels; within a block row, each input channel whose
``bsr`` weights are not all zero is one stored block. That is exactly a 1×N mask's structure, so a
1×N-pruned layer stores only its kept blocks. The last block row is zero-padded when ``bsr`` does
not divide ``C_out``.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from onexn_tf.errors import InvalidArgument

BLOCK_ROWS = (1, 2, 4, 8, 16, 32)


class Bsr(NamedTuple):
    data: np.ndarray  # [nnz_blocks, bsr] float32: the weights of each stored block
    indices: np.ndarray  # [nnz_blocks] int32: the input channel of each stored block
    indptr: np.ndarray  # [block_rows + 1] int32: stored blocks of block row i are indptr[i]:indptr[i+1]
    shape: tuple  # (C_out, C_in)

    @property
    def bsr(self) -> int:
        return int(self.data.shape[1])

    @property
    def block_rows(self) -> int:
        return int(self.indptr.size - 1)

    @property
    def nnz(self) -> int:
        return int(self.indices.size)

    @property
    def block_sparsity(self) -> float:
        return 1.0 - self.nnz / (self.block_rows * self.shape[1])


def check_block(bsr: int, bsc: int = 1) -> int:
    if bsc != 1:
        raise InvalidArgument(f"bsc={bsc} is not supported: blocks are bsr output × 1 input channel (bsc=1)")
    if bsr not in BLOCK_ROWS:
        raise InvalidArgument(f"bsr={bsr} is not allowed: choose one of {', '.join(map(str, BLOCK_ROWS))}")
    return bsr


def to_bsr(weight: np.ndarray, bsr: int) -> Bsr:
    """BSR of a [C_out, C_in] (or [C_out, C_in, 1, 1]) weight."""
    weight = np.asarray(weight, np.float32)
    if weight.ndim == 4:
        weight = weight.reshape(weight.shape[0], weight.shape[1])
    c_out, c_in = weight.shape
    rows = -(-c_out // bsr)
    padded = np.zeros((rows * bsr, c_in), np.float32)
    padded[:c_out] = weight
    blocks = padded.reshape(rows, bsr, c_in).transpose(0, 2, 1)  # [rows, C_in, bsr]
    kept = np.any(blocks != 0, axis=2)
    row_ids, col_ids = np.nonzero(kept)  # row-major: each row's blocks in input-channel order
    indptr = np.concatenate([[0], np.cumsum(kept.sum(axis=1))]).astype(np.int32)
    return Bsr(np.ascontiguousarray(blocks[row_ids, col_ids]), col_ids.astype(np.int32), indptr, (c_out, c_in))


def to_dense(matrix: Bsr) -> np.ndarray:
    c_out, c_in = matrix.shape
    dense = np.zeros((matrix.block_rows * matrix.bsr, c_in), np.float32)
    for row in range(matrix.block_rows):
        for k in range(matrix.indptr[row], matrix.indptr[row + 1]):
            dense[row * matrix.bsr:(row + 1) * matrix.bsr, matrix.indices[k]] = matrix.data[k]
    return dense[:c_out]


def block_sparsity(weight: np.ndarray, bsr: int) -> float:
    """Fraction of (bsr × 1) blocks that are entirely zero."""
    return to_bsr(weight, bsr).block_sparsity

"""Pointwise (1×1) convolution over NCHW: a block-sparse (BSR) or dense weight matrix times the
``[C_in, H·W]`` pixel matrix, the layout XNNPACK's sparse inference uses.

Micro-tile: ``vectors`` vectors of pixels × the ``bsr`` output channels of one block row, held in
registers from the bias to the fused epilogue. Per stored block (one input channel of the block row)
the kernel loads the tile's pixels of that input channel once and reuses them for the ``bsr`` weight
broadcasts. A block's input channel is stored pre-multiplied by H·W (``offsets``), so the inner loop
only adds it to a base address. The last pixel tile overlaps its neighbour instead of needing a tail.

Loop orders (``outer``): ``pixels`` walks pixel groups outermost (a group of ``group`` tiles keeps
its input slab ``C_in × group·tile`` in cache while every block row passes over it; large maps),
``rows`` walks block rows outermost (a block row's weights stay in L1 while the pixels stream; small
maps with many channels). The outer loop is the parallel one. A dense layer is the same kernel over a
matrix whose every block is stored.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from tvm import tirx
from tvm.tirx.script import builder as T

from export.tvm.kernels.tir import Epilogue, bcast, buffer_arg, f32, flat, parallel_or_serial, prim_func, vload, vstore


@dataclasses.dataclass(frozen=True)
class PointwiseShape:
    batch: int
    c_in: int
    height: int
    width: int
    c_out: int
    bsr: int
    nnz: int  # stored blocks

    @property
    def pixels(self) -> int:
        return self.height * self.width

    @property
    def block_rows(self) -> int:
        return -(-self.c_out // self.bsr)

    def inputs(self, epilogue: Epilogue) -> list[tuple]:
        x = (self.batch, self.c_in, self.height, self.width)
        return [x, self.output()] if epilogue.residual else [x]

    def constants(self) -> list[tuple]:
        return [(max(self.nnz, 1) * self.bsr,), (max(self.nnz, 1),), (self.block_rows + 1,),
                (self.block_rows * self.bsr,)]

    def output(self) -> tuple:
        return (self.batch, self.c_out, self.height, self.width)

    def macs(self) -> int:
        return self.batch * self.nnz * self.bsr * self.pixels


@dataclasses.dataclass(frozen=True)
class PointwiseKnobs:
    vectors: int = 2  # pixel vectors per micro-tile
    group: int = 0  # pixel tiles per group (0: all), with outer="pixels"
    outer: str = "pixels"  # or "rows"
    parallel: bool = True
    chunk: int = 0  # input channels per reduction chunk (0: all), with outer="pixels"


def chunks(shape: PointwiseShape, knobs: PointwiseKnobs) -> int:
    return -(-shape.c_in // knobs.chunk) if knobs.chunk and knobs.outer == "pixels" else 1


def candidates(shape: PointwiseShape, lanes: int, cores: int) -> list[PointwiseKnobs]:
    parallel = cores > 1
    tiles_max = max(1, shape.pixels // lanes)
    out = []
    for v in (1, 2, 3):
        if v > tiles_max and v > 1:
            continue
        out.append(PointwiseKnobs(v, 0, "rows", parallel))
        for group in (1, 4, 16):
            if group * v * lanes < shape.pixels or group == 1:
                out.append(PointwiseKnobs(v, group, "pixels", parallel))
        for chunk in (64, 128):  # a chunk's input slab (chunk × tile) stays in L1
            if shape.c_in >= 2 * chunk and v > 1:
                out.append(PointwiseKnobs(v, 4, "pixels", parallel, chunk))
    return out


def default_knobs(shape: PointwiseShape, lanes: int, cores: int) -> PointwiseKnobs:
    return PointwiseKnobs(2, 4, "pixels", cores > 1)


def constants_for(shape: PointwiseShape, knobs: PointwiseKnobs, constants: list) -> list:
    """The kernel's constant arrays for ``knobs``: with chunks, ``indptr`` becomes, per block row, the
    first block of every chunk of input channels (``[block_rows · (chunks + 1)]``)."""
    n = chunks(shape, knobs)
    if n == 1:
        return constants
    data, offsets, indptr, bias = constants
    channels = offsets // shape.pixels if shape.nnz else np.zeros(0, np.int32)
    bounds = np.arange(n + 1) * knobs.chunk
    table = np.empty((shape.block_rows, n + 1), np.int32)
    for rb in range(shape.block_rows):
        lo, hi = int(indptr[rb]), int(indptr[rb + 1])
        table[rb] = lo + np.searchsorted(channels[lo:hi], bounds, side="left") if shape.nnz else 0
        table[rb, -1] = hi
    return [data, offsets, table.reshape(-1), bias]


def tiling(P: int, lanes: int, vectors: int) -> tuple[int, int, int, int]:
    """``(V, m, full tiles, tail vectors)``: full tiles of m vectors of V lanes from pixel 0, then one
    narrower tail tile of just enough vectors ending at the last pixel (overlapping the tile before by
    less than a vector)."""
    V = lanes if P >= lanes else 1
    m = max(1, min(vectors, P // V))
    full = P // (m * V)
    rest = P - full * m * V
    return V, m, full, -(-rest // V)


def generate(shape: PointwiseShape, epilogue: Epilogue, knobs: PointwiseKnobs, lanes: int, name: str):
    """``(x, [residual], data, offsets, indptr, bias, y)`` with x ``[N, C_in, H, W]`` (P = H·W), data
    ``[nnz·bsr]`` (block k's bsr weights), offsets ``[nnz]`` (input channel · P), indptr ``[block_rows + 1]``
    (with chunks: :func:`constants_for`'s table). Chunked, each chunk's partial sums go through Y."""
    N, CI, P, CO, R = shape.batch, shape.c_in, shape.pixels, shape.c_out, shape.bsr
    rows = shape.block_rows
    V, m, full, tail = tiling(P, lanes, knobs.vectors)
    tile = m * V
    G = full if knobs.group <= 0 else min(knobs.group, full)
    groups = -(-full // G)
    nch = chunks(shape, knobs)
    with prim_func(name) as fn:
        X = buffer_arg("x", shape.inputs(epilogue)[0])
        Res = buffer_arg("residual", shape.output()) if epilogue.residual else None
        D = buffer_arg("data", (max(shape.nnz, 1) * R,))
        O = buffer_arg("offsets", (max(shape.nnz, 1),), "int32")
        IP = buffer_arg("indptr", (rows * (nch + 1),) if nch > 1 else (rows + 1,), "int32")
        B = buffer_arg("bias", (rows * R,))
        Y = buffer_arg("y", shape.output())
        Xf, Yf = flat(X, N * CI * P), flat(Y, N * CO * P)
        Rf = flat(Res, N * CO * P) if Res is not None else None

        def micro(n, rb, p0, mm, chunk=0, whole=False):
            """``mm`` vectors of pixels from ``p0`` for block row ``rb``; ``chunk``: which input-channel
            chunk (``whole``: all of them at once)."""
            first, last = chunk == 0 or whole, chunk == nch - 1 or whole
            width = mm * V
            acc = T.alloc_buffer((R * width,), "float32", scope="local")

            def out_at(r, j):
                return n * (CO * P) + (rb * R + r) * P + p0 + j * V

            for r in range(R):
                for j in range(mm):
                    if first:
                        init = bcast(B[rb * R + r], V) if epilogue.bias else bcast(f32(0), V)
                    elif CO % R and r >= CO % R:  # rows past C_out are never stored: any value will do
                        init = vload(Yf, tirx.min(out_at(r, j), N * CO * P - V), V)
                    else:  # the partial sums of the chunks before
                        init = vload(Yf, out_at(r, j), V)
                    vstore(acc, r * width + j * V, init, V)
            if nch > 1:
                start = IP[rb * (nch + 1) + (0 if whole else chunk)]
                stop = IP[rb * (nch + 1) + (nch if whole else chunk + 1)]
            else:
                start, stop = IP[rb], IP[rb + 1]
            with T.serial(start, stop) as k:
                base = n * (CI * P) + O[k] + p0
                xs = [vload(Xf, base + j * V, V) for j in range(mm)]
                for r in range(R):
                    w = bcast(D[k * R + r], V)
                    for j in range(mm):
                        vstore(acc, r * width + j * V, vload(acc, r * width + j * V, V) + w * xs[j], V)
            for r in range(R):
                def store(r=r):
                    for j in range(mm):
                        at = out_at(r, j)
                        value = vload(acc, r * width + j * V, V)
                        if last:
                            residual = vload(Rf, at, V) if Rf is not None else None
                            value = epilogue.apply(value, V, residual)
                        vstore(Yf, at, value, V)
                if CO % R and r >= CO % R:  # rows past C_out exist only in the last block row
                    with T.If(rb * R + r < CO):
                        with T.Then():
                            store()
                else:
                    store()

        outer = parallel_or_serial(knobs.parallel)
        with T.serial(0, N) as n:
            if knobs.outer == "pixels":
                with outer(0, groups) as g:
                    for chunk in range(nch):
                        with T.serial(0, rows) as rb:
                            with T.serial(0, G) as tt:
                                if groups * G != full:
                                    with T.If(g * G + tt < full):
                                        with T.Then():
                                            micro(n, rb, (g * G + tt) * tile, m, chunk)
                                else:
                                    micro(n, rb, (g * G + tt) * tile, m, chunk)
            else:
                with outer(0, rows) as rb:
                    with T.serial(0, full) as t:
                        micro(n, rb, t * tile, m, whole=True)
            if tail:
                # after every full tile: all chunks at once from the bias, so the pixels it shares with
                # the last full tile are written again with their final value, never summed twice
                with outer(0, rows) as rb:
                    micro(n, rb, P - tail * V, tail, whole=True)
    return fn.func

"""A pointwise convolution fused into the depthwise convolution that consumes it (MobileNetV2/V3's
expand → depthwise, V1's pointwise → depthwise), in row bands, so the expanded tensor is never
written out: at 112×112×96 it is 4.8 MB, which the two kernels apart write to and read back from
memory (at 90 % sparsity that traffic, not arithmetic, is what the pair costs).

Per band of ``band`` depthwise output rows (bands in parallel): the input rows the band needs — a
window of ``(band-1)·stride + K`` rows, clamped into the image — one block row at a time: the
pointwise kernel computes the block row's ``bsr`` channels of the window into a scratch, with the same
micro-tiles as :mod:`pointwise`, and the depthwise kernel of :mod:`spatial` reads those planes from
the scratch straight after. The scratch holds one block row, so it stays in L1 (V2's 80×80 16 → 96
pair at p = 0.9, 1 core of a Zen 5: 42 µs, against 60 with every channel of the window in an
L2-sized scratch; the pointwise part's stores and the depthwise part's loads went to L2). Windows of
neighbouring bands overlap by ``K - stride`` rows, which are computed twice: the knob search weighs
that against the memory traffic saved, and keeps the two kernels apart (``split``) when fusing does
not pay.

With ``tasks`` the pair runs over whole planes instead: each task takes a run of the pointwise
layer's block rows, balanced by multiply-adds, and for each block row computes its channels over the
whole plane, then their depthwise planes. On small maps with several cores this splits the pair by
channels: the depthwise layer reads only what its own core just wrote, and the pair is one parallel
launch, not two (a 10×10 map has 3 bands of 4 rows for 2 cores; there, as on 7×7 and 14×14 maps, the
pair used to run apart, each half paying its own launch, join and the crossing of the whole tensor
between the cores). On one core it computes no row twice (V2's 20×20 24 → 144 pair at p = 0.9: 10.9
µs, against 11.4 apart).
"""
from __future__ import annotations

import dataclasses

import numpy as np
from tvm import tirx
from tvm.tirx.script import builder as T

from export.tvm.kernels import pointwise, spatial
from export.tvm.kernels.tir import Epilogue, buffer_arg, flat, parallel_or_serial, prim_func


@dataclasses.dataclass(frozen=True)
class FusedShape:
    pointwise: pointwise.PointwiseShape
    pointwise_epilogue: Epilogue
    depthwise: spatial.SpatialShape

    def inputs(self, epilogue=None) -> list[tuple]:
        return self.pointwise.inputs(self.pointwise_epilogue)

    def constants(self) -> list[tuple]:
        return self.pointwise.constants() + self.depthwise.constants()

    def output(self) -> tuple:
        return self.depthwise.output()

    def macs(self) -> int:
        return self.pointwise.macs() + self.depthwise.macs()


@dataclasses.dataclass(frozen=True)
class FusedKnobs:
    band: int = 4  # depthwise output rows per band
    vectors: int = 4  # pointwise micro-tile: pixel vectors
    dw_vectors: int = 2
    dw_rows: int = 1  # depthwise output rows computed together (divides band)
    parallel: bool = True
    split: bool = False  # run the two kernels apart (their own knobs); chosen by the knob search
    tasks: int = 0  # parallel: this many tasks, each a run of block rows over the whole plane (0: bands)
    dw_flat: bool = False  # with tasks: the depthwise planes flattened (spatial.flat_plane_ok)
    prefetch: int = 0  # the pointwise part prefetches its input this many blocks ahead (0: not at all)


# One core runs the pair block row by block row over whole planes (``tasks`` = 1) only where one block
# row's planes (bsr × H × W floats) fit in this (L1): 20×20 or 28×28 at bsr 4, not 56×56.
TASK_SCRATCH_BYTES = 32 * 1024


def window(shape: FusedShape, band: int) -> int:
    """Input rows a band of ``band`` output rows reads (its scratch height)."""
    dw = shape.depthwise
    return min(dw.height, (band - 1) * dw.stride + dw.kernel)


def feasible(shape: FusedShape, band: int) -> bool:
    """The middle bands (between the first and the last, emitted with a runtime row offset) must hold
    only interior rows, and a window must fit the image unless one band covers everything."""
    dw = shape.depthwise
    em = _geometry(dw)
    bands = -(-dw.out_height // band)
    if bands == 1:
        return True
    if dw.height < (band - 1) * dw.stride + dw.kernel:
        return False
    return bands == 2 or (em["TL"] <= band and em["BR"] >= (bands - 1) * band)


def _geometry(dw: spatial.SpatialShape) -> dict:
    K, S, pt = dw.kernel, dw.stride, dw.pads[0]
    TL = -(-pt // S)
    return {"TL": TL, "BR": max(TL, (dw.height - K + pt) // S + 1)}


def candidates(shape: FusedShape, lanes: int, cores: int) -> list[FusedKnobs]:
    parallel = cores > 1
    widest = pointwise._vector_choices(shape.pointwise, lanes)[0]
    out = []
    for band in (2, 4, 8):
        if band > shape.depthwise.out_height or not feasible(shape, band):
            continue
        for dw_vectors, dw_rows in ((2, 1), (1, 2)):
            out.append(FusedKnobs(band, widest, dw_vectors, dw_rows, parallel))
    if channel_tasks_ok(shape, cores):
        whole = shape.depthwise.out_height
        out += [FusedKnobs(whole, widest, v, r, parallel, tasks=cores) for v, r in ((2, 1), (1, 2))]
        if spatial.flat_plane_ok(shape.depthwise):
            out.append(FusedKnobs(whole, widest, 0, 1, parallel, tasks=cores, dw_flat=True))
    return out + pointwise.input_prefetch_variants(out, shape.pointwise.pixels, cores)


def channel_tasks_ok(shape: FusedShape, cores: int) -> bool:
    """Whether the pair may run block row by block row over whole planes (``tasks``: one run of block
    rows per core, at least two rows each). With several cores only on small maps, which have too few
    bands for the cores (the pointwise layer's own block-row tasks' limit); on one core wherever a
    block row's planes stay in L1, as they then need no rows computed twice, as bands do."""
    pw = shape.pointwise
    if cores > 1:
        small = pw.pixels <= pointwise.ROW_SHARE_PIXELS
    else:
        small = pw.bsr * pw.pixels * 4 <= TASK_SCRATCH_BYTES
    return small and pw.block_rows >= 2 * cores


def constants_for(shape: FusedShape, knobs: FusedKnobs, constants: list) -> list:
    """With ``tasks``, the tasks' block-row bounds (:func:`task_bounds`) follow ``indptr``."""
    if not knobs.tasks or knobs.split:
        return constants
    data, offsets, indptr, *rest = constants
    bounds = task_bounds(shape, indptr, knobs.tasks)
    return [data, offsets, np.concatenate([indptr, bounds]).astype(np.int32), *rest]


def task_bounds(shape: FusedShape, indptr: np.ndarray, tasks: int) -> np.ndarray:
    """``tasks + 1`` block-row bounds giving each task as equal a share of the pair's multiply-adds as
    whole rows allow: a row's pointwise work is its stored blocks', its depthwise work the same for
    every row (at p = 0.9 the depthwise layer does most of the work, so blocks alone would not do)."""
    pw, dw = shape.pointwise, shape.depthwise
    per_block = pw.bsr * pw.pixels
    per_row = pw.bsr * dw.out_height * dw.out_width * dw.kernel * dw.kernel
    work = np.asarray(indptr, np.float64) * per_block + np.arange(len(indptr)) * per_row
    return pointwise.balanced_rows(work, tasks)


def default_knobs(shape: FusedShape, lanes: int, cores: int) -> FusedKnobs:
    """Untuned: apart, as two kernels (fusing pays only where the knob search has measured it does)."""
    return FusedKnobs(split=True, parallel=cores > 1)


def generate(shape: FusedShape, epilogue: Epilogue, knobs: FusedKnobs, lanes: int, name: str):
    """``(x, data, offsets, indptr, pw_bias, w, bias, y)``: x ``[N, C_in, H, W]``, the pointwise layer's BSR
    constants (as :mod:`pointwise`), the depthwise weights ``[C, K·K]`` and bias, y the depthwise output.
    ``epilogue`` is the depthwise one; the pointwise one is part of the shape."""
    pw, dw, pw_epi = shape.pointwise, shape.depthwise, shape.pointwise_epilogue
    N, CI, H, W, C, R = pw.batch, pw.c_in, pw.height, pw.width, pw.c_out, pw.bsr
    K, S, pt = dw.kernel, dw.stride, dw.pads[0]
    OH, OW = dw.out_height, dw.out_width
    band = max(1, min(knobs.band, OH))
    if knobs.split or not feasible(shape, band) or pw_epi.residual:
        raise ValueError(f"no fused kernel for {shape} with {knobs}")
    if knobs.tasks:
        return _generate_tasks(shape, epilogue, knobs, lanes, name)
    RW = window(shape, band)
    PB = RW * W
    bands = -(-OH // band)
    rows_pw = pw.block_rows
    tl = pointwise.tiling(PB, lanes, knobs.vectors)
    dw_rows = knobs.dw_rows if band % knobs.dw_rows == 0 else 1
    dw_knobs = spatial.SpatialKnobs(knobs.dw_vectors, dw_rows, 1, False)
    with prim_func(name) as fn:
        Xf, D, O, IP, BP, Wf, BD, Yf = _arguments(shape, rows_pw + 1)
        with T.serial(0, N) as n:
            with parallel_or_serial(knobs.parallel)(0, bands) as b:
                scratch = T.alloc_buffer((R * PB,), "float32", scope="global")
                Ef = flat(scratch, R * PB)
                s0 = tirx.max(0, tirx.min(b * (band * S) - pt, H - RW))  # first input row of the window
                tile = pointwise.tile_emitter(pw, pw_epi, tl, PB, 1, D, O, IP, BP, Xf, Ef, None,
                                              x_base=lambda n_: n_ * (CI * H * W) + s0 * W,
                                              out_at=lambda n_, row, pixel: _in_block(row, R) * PB + pixel,
                                              guard_rows=False,
                                              input_prefetch=knobs.prefetch)

                def depthwise(rb, first_row, emit):
                    """``emit(em)`` for each channel of block row ``rb``, its window's first row ``first_row``."""
                    em = spatial.Emitter(dw, epilogue, dw_knobs, lanes, Ef, Wf, BD, Yf,
                                         in_row=lambda ci, iy: _in_block(ci, R) * PB + (iy - first_row) * W,
                                         out_row=lambda co, oy: (n * C + co) * (OH * OW) + oy * OW)
                    with T.serial(0, _block_channels(rb, R, C)) as r:
                        em.group(rb * R + r, 1, [rb * R + r])
                        emit(em)

                def static_band(rb, index):
                    lo, hi = index * band, min(OH, index * band + band)
                    depthwise(rb, max(0, min(index * band * S - pt, H - RW)), lambda em: em.row_range(lo, hi))

                def middle_band(em):
                    for block in range(band // dw_rows):
                        em.rows([b * band + block * dw_rows + r for r in range(dw_rows)], list(range(K)))

                with T.serial(0, rows_pw) as rb:
                    with T.serial(0, tl.tiles) as t:
                        tile(n, rb, t)
                    if bands == 1:
                        static_band(rb, 0)
                    else:
                        with T.If(b == 0):
                            with T.Then():
                                static_band(rb, 0)
                            with T.Else():
                                if bands == 2:
                                    static_band(rb, 1)
                                else:
                                    with T.If(b == bands - 1):
                                        with T.Then():
                                            static_band(rb, bands - 1)
                                        with T.Else():
                                            depthwise(rb, b * (band * S) - pt, middle_band)
    return fn.func


def _arguments(shape: FusedShape, indptr_length: int) -> tuple:
    """Both generators' arguments, ``(x, data, offsets, indptr, pw_bias, w, bias, y)``, with x, w and y as
    flat views; ``indptr`` holds ``indptr_length`` entries (the tasks' bounds follow the rows')."""
    pw, dw = shape.pointwise, shape.depthwise
    N, CI, H, W, C, R, K = pw.batch, pw.c_in, pw.height, pw.width, pw.c_out, pw.bsr, dw.kernel
    X = buffer_arg("x", (N, CI, H, W))
    D = buffer_arg("data", (max(pw.nnz, 1) * R,))
    O = buffer_arg("offsets", (max(pw.nnz, 1),), "int32")
    IP = buffer_arg("indptr", (indptr_length,), "int32")
    BP = buffer_arg("pw_bias", (pw.block_rows * R,))
    Wd = buffer_arg("w", (C, K * K))
    BD = buffer_arg("bias", (C,))
    Y = buffer_arg("y", (N, C, dw.out_height, dw.out_width))
    Xf, Yf, Wf = flat(X, N * CI * H * W), flat(Y, N * C * dw.out_height * dw.out_width), flat(Wd, C * K * K)
    return Xf, D, O, IP, BP, Wf, BD, Yf


def _generate_tasks(shape: FusedShape, epilogue: Epilogue, knobs: FusedKnobs, lanes: int, name: str):
    """The pair split by channels (``knobs.tasks``): the same arguments as :func:`generate`, ``indptr``
    followed by the tasks' block-row bounds (:func:`constants_for`)."""
    pw, dw, pw_epi = shape.pointwise, shape.depthwise, shape.pointwise_epilogue
    N, CI, W, C, R = pw.batch, pw.c_in, pw.width, pw.c_out, pw.bsr
    OH, OW, P = dw.out_height, dw.out_width, pw.height * pw.width
    if not channel_tasks_ok(shape, knobs.tasks) or (knobs.dw_flat and not spatial.flat_plane_ok(dw)):
        raise ValueError(f"no channel-task fused kernel for {shape} with {knobs}")
    rows_pw, tasks = pw.block_rows, knobs.tasks
    tl = pointwise.tiling(P, lanes, knobs.vectors)
    dw_rows = max(1, knobs.dw_rows)
    dw_knobs = spatial.SpatialKnobs(knobs.dw_vectors, dw_rows, 1, False, flat=knobs.dw_flat)
    with prim_func(name) as fn:
        Xf, D, O, IP, BP, Wf, BD, Yf = _arguments(shape, rows_pw + 1 + tasks + 1)
        with T.serial(0, N) as n:
            with parallel_or_serial(knobs.parallel)(0, tasks) as w:
                scratch = T.alloc_buffer((R * P,), "float32", scope="global")
                Ef = flat(scratch, R * P)
                first, last = IP[rows_pw + 1 + w], IP[rows_pw + 2 + w]
                tile = pointwise.tile_emitter(pw, pw_epi, tl, P, 1, D, O, IP, BP, Xf, Ef, None,
                                              x_base=lambda n_: n_ * (CI * P),
                                              out_at=lambda n_, row, pixel: _in_block(row, R) * P + pixel,
                                              guard_rows=False,
                                              input_prefetch=knobs.prefetch)
                em = spatial.Emitter(dw, epilogue, dw_knobs, lanes, Ef, Wf, BD, Yf,
                                     in_row=lambda ci, iy: _in_block(ci, R) * P + iy * W,
                                     out_row=lambda co, oy: (n * C + co) * (OH * OW) + oy * OW)
                with T.serial(0, last - first) as i:  # (a loop from first to last, not from 0, computed wrong rows)
                    rb = first + i
                    with T.serial(0, tl.tiles) as t:
                        tile(n, rb, t)
                    with T.serial(0, _block_channels(rb, R, C)) as r:
                        em.group(rb * R + r, 1, [rb * R + r])
                        if knobs.dw_flat:
                            em.flat_plane(lanes)
                        else:
                            em.row_range(0, OH)
    return fn.func


def _in_block(channel, R: int):
    """A channel's place in its block row's scratch (the scratch holds one block row at a time)."""
    return tirx.floormod(channel, R)


def _block_channels(rb, R: int, C: int):
    """The channels of block row ``rb`` (fewer than ``R`` in a partial last block row)."""
    return R if C % R == 0 else tirx.min(R, C - rb * R)

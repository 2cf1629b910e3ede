"""K×K convolutions on NCHW planes, stride 1 or 2, any zero padding: depthwise, and dense over a few
input channels (the stem).

Output pixels run along a row in vectors of the target's lanes, so a tap's inputs are one contiguous
load (stride 1) or two loads and a shuffle keeping every other lane (stride 2; no gather, no read
past the row). Every border is resolved when the kernel is generated: the interior columns and rows
take every tap unconditionally, the few border pixels (at most K//2 per side) are scalar code with
exactly their valid taps, and the last vector tile of a row overlaps its neighbour instead of
needing a tail. Several output rows (``rows``) and tiles (``vectors``) are computed together so
the input rows they share are loaded once and enough independent FMA chains are in flight.

Depthwise: one plane per channel, planes in parallel. Dense (``groups == 1``): ``out_block`` output
channels share each input load; blocks of output channels in parallel. An optional scalar affine
``a·x + b`` on the input (Keras' ``Rescaling`` before the stem) is applied to loaded values only,
so the zero padding stays zero exactly as in the original graph.
"""
from __future__ import annotations

import dataclasses

from tvm import tirx
from tvm.tirx.script import builder as T

from export.tvm.kernels.tir import (Epilogue, bcast, buffer_arg, f32, flat, parallel_or_serial, prim_func,
                                    shuffle_even, shuffle_odd, vload, vstore, with_serial)


@dataclasses.dataclass(frozen=True)
class SpatialShape:
    batch: int
    c_in: int
    height: int
    width: int
    c_out: int
    kernel: int
    stride: int
    pads: tuple  # top, left, bottom, right
    depthwise: bool
    affine: tuple | None = None  # (a, b): the input is a·x + b (padding stays 0)

    @property
    def out_height(self) -> int:
        return (self.height + self.pads[0] + self.pads[2] - self.kernel) // self.stride + 1

    @property
    def out_width(self) -> int:
        return (self.width + self.pads[1] + self.pads[3] - self.kernel) // self.stride + 1

    def inputs(self, epilogue=None) -> list[tuple]:
        return [(self.batch, self.c_in, self.height, self.width)]

    def constants(self) -> list[tuple]:
        per_out = self.kernel * self.kernel * (1 if self.depthwise else self.c_in)
        return [(self.c_out, per_out), (self.c_out,)]

    def output(self) -> tuple:
        return (self.batch, self.c_out, self.out_height, self.out_width)

    def macs(self) -> int:
        per_out = self.kernel * self.kernel * (1 if self.depthwise else self.c_in)
        return self.batch * self.c_out * self.out_height * self.out_width * per_out


@dataclasses.dataclass(frozen=True)
class SpatialKnobs:
    vectors: int = 2  # output vectors per tile along a row
    rows: int = 1  # output rows computed together
    out_block: int = 4  # dense: output channels sharing each input load (depthwise: 1)
    parallel: bool = True
    tap_loop: bool = False  # dense, rows=1: a runtime loop over (input channel, kernel row)


def supported(kernel: int, stride: int) -> bool:
    return stride in (1, 2) and kernel % 2 == 1 and kernel >= 1


def candidates(shape: SpatialShape, lanes: int, cores: int) -> list[SpatialKnobs]:
    parallel = cores > 1
    if shape.depthwise:
        knobs = [SpatialKnobs(v, r, 1, parallel) for v, r in ((1, 1), (2, 1), (2, 2), (1, 4), (4, 1), (2, 4))]
    else:
        knobs = [SpatialKnobs(v, r, b, parallel) for v, r, b in ((1, 1, 8), (2, 1, 4), (2, 1, 8), (1, 1, 16))]
        knobs += [SpatialKnobs(v, 1, b, parallel, tap_loop=True) for v, b in ((2, 8), (2, 12), (1, 16), (3, 8), (4, 4))]
    return with_serial(knobs, shape.macs(), cores)


def default_knobs(shape: SpatialShape, lanes: int, cores: int) -> SpatialKnobs:
    return SpatialKnobs(1, 1, 1 if shape.depthwise else 8, cores > 1)


def row_lanes(interior: int, lanes: int) -> int:
    """Vector width for rows of ``interior`` border-free output columns: the target's, halved (down to
    2) while a row is narrower, so 7×7 and 14×14 maps are vectorised too (AVX-512 rows of 16)."""
    V = lanes
    while V > 2 and interior < V:
        V //= 2
    return V


def _valid(o: int, stride: int, pad: int, k: int, size: int) -> list[int]:
    return [t for t in range(k) if 0 <= o * stride - pad + t <= size - 1]


def generate(shape: SpatialShape, epilogue: Epilogue, knobs: SpatialKnobs, lanes: int, name: str):
    """``(x, w, bias, y)``; ``w`` is ``[C_out, K·K]`` (depthwise) or ``[C_out, C_in·K·K]``."""
    N, CI, H, W, CO = shape.batch, shape.c_in, shape.height, shape.width, shape.c_out
    K, S = shape.kernel, shape.stride
    pt, pl, _, _ = shape.pads
    OH, OW = shape.out_height, shape.out_width
    if not supported(K, S) or (shape.depthwise and CI != CO):
        raise ValueError(f"unsupported spatial convolution {shape}")
    L = -(-pl // S)  # interior columns [L, RE): every tap inside the row
    RE = max(L, (W - K + pl) // S + 1)
    TL = -(-pt // S)  # interior rows [TL, BR)
    BR = max(TL, (H - K + pt) // S + 1)
    NI = RE - L
    V = row_lanes(NI, lanes)
    m = max(0, min(knobs.vectors, NI // V))
    tile = m * V
    OB = 1 if shape.depthwise else max(1, min(knobs.out_block, CO))
    groups = CO if shape.depthwise else -(-CO // OB)
    taps = K * K * (1 if shape.depthwise else CI)
    with prim_func(name) as fn:
        X = buffer_arg("x", (N, CI, H, W))
        Wt = buffer_arg("w", (CO, taps))
        B = buffer_arg("bias", (CO,))
        Y = buffer_arg("y", (N, CO, OH, OW))
        Xf, Yf, Wf = flat(X, N * CI * H * W), flat(Y, N * CO * OH * OW), flat(Wt, CO * taps)
        with T.serial(0, N) as n:
            with parallel_or_serial(knobs.parallel)(0, groups) as g:
                # output channels of this group: [co0, co0 + OB); the last group of a dense conv may be short
                def body(outs: int):
                    co0 = g * OB
                    cins = [g] if shape.depthwise else list(range(CI))

                    def weight(o, ci_index, ky, kx, lanes_):
                        return bcast(Wf[(co0 + o) * taps + (ci_index * K + ky) * K + kx], lanes_)

                    def bias(o, lanes_):
                        return bcast(B[co0 + o], lanes_) if epilogue.bias else bcast(f32(0), lanes_)

                    def prologue(value, lanes_):
                        if shape.affine is None:
                            return value
                        a, b = shape.affine
                        return value * bcast(f32(a), lanes_) + bcast(f32(b), lanes_)

                    def plane(ci):
                        return (n * CI + ci) * (H * W)

                    def vector_taps(ci, iy, x0):
                        """{kx: the V inputs tap kx reads for outputs x0 … x0+V-1, input row iy}."""
                        row = plane(ci) + iy * W
                        if S == 1:
                            return {kx: prologue(vload(Xf, row + x0 - pl + kx, V), V) for kx in range(K)}
                        base = row + 2 * x0 - pl

                        def pair(off):
                            return vload(Xf, base + off, V), vload(Xf, base + off + V, V)
                        out = {}
                        for kx in range(K):
                            if kx % 2 == 1 or kx == K - 1:  # the last even tap: odd lanes one earlier
                                out[kx] = shuffle_odd(*pair(kx - 1), V) if kx else shuffle_even(*pair(0), V)
                            else:
                                out[kx] = shuffle_even(*pair(kx), V)
                        return {kx: prologue(v, V) for kx, v in out.items()}

                    def emit_vector_row_tap_loop(oy):
                        """Dense (the stem), one interior output row: a runtime loop over (input channel,
                        kernel row), the K column taps unrolled. Each weight is loaded inside that loop
                        (so LLVM cannot hoist all C_in·K·K·out_block of them and spill them to the stack)
                        and feeds ``m`` FMAs; the accumulators and the m·K taps fit the registers."""
                        count = -(-NI // tile)
                        with T.serial(0, count) as t:
                            x0 = L + tirx.min(t * tile, NI - tile) if count > 1 else L
                            acc = T.alloc_buffer((outs * m * V,), "float32", scope="local")
                            for o in range(outs):
                                for j in range(m):
                                    vstore(acc, (o * m + j) * V, bias(o, V), V)
                            with T.serial(0, CI * K) as cik:
                                ci, ky = cik // K, cik % K
                                inputs = [vector_taps(ci, oy * S - pt + ky, x0 + j * V) for j in range(m)]
                                for o in range(outs):
                                    for kx in range(K):
                                        w = bcast(Wf[(co0 + o) * taps + cik * K + kx], V)
                                        for j in range(m):
                                            at = (o * m + j) * V
                                            vstore(acc, at, vload(acc, at, V) + w * inputs[j][kx], V)
                            for o in range(outs):
                                for j in range(m):
                                    at = (n * CO + co0 + o) * (OH * OW) + oy * OW + x0 + j * V
                                    vstore(Yf, at, epilogue.apply(vload(acc, (o * m + j) * V, V), V), V)

                    def emit_vector_rows(rows, kys):
                        """Dense (the stem): ``len(rows)`` output rows × ``m`` vectors at once: each input row a tile needs is
                        loaded once per input channel (its K taps kept in registers) and feeds every
                        output row and channel that uses it; statements in that order keep LLVM's
                        register pressure at the accumulators plus K taps."""
                        count = -(-NI // tile)
                        R_ = len(rows)
                        top = rows[0] * S - pt  # input row of output row rows[0], tap 0
                        with T.serial(0, count) as t:
                            x0 = L + tirx.min(t * tile, NI - tile) if count > 1 else L
                            acc = T.alloc_buffer((outs * R_ * m * V,), "float32", scope="local")
                            taps = T.alloc_buffer((K * V,), "float32", scope="local")

                            def slot(o, r, j):
                                return ((o * R_ + r) * m + j) * V
                            for o in range(outs):
                                for r in range(R_):
                                    for j in range(m):
                                        vstore(acc, slot(o, r, j), bias(o, V), V)
                            for ci_index, ci in enumerate(cins):
                                for rel in range((R_ - 1) * S + K):
                                    users = [(r, rel - r * S) for r in range(R_) if rel - r * S in kys]
                                    if not users:
                                        continue
                                    for j in range(m):
                                        for kx, value in vector_taps(ci, top + rel, x0 + j * V).items():
                                            vstore(taps, kx * V, value, V)
                                        for r, ky in users:
                                            for kx in range(K):
                                                tap = vload(taps, kx * V, V)
                                                for o in range(outs):
                                                    w = weight(o, 0 if shape.depthwise else ci_index, ky, kx, V)
                                                    at = slot(o, r, j)
                                                    vstore(acc, at, vload(acc, at, V) + w * tap, V)
                            for o in range(outs):
                                for r, oy in enumerate(rows):
                                    for j in range(m):
                                        at = (n * CO + co0 + o) * (OH * OW) + oy * OW + x0 + j * V
                                        vstore(Yf, at, epilogue.apply(vload(acc, slot(o, r, j), V), V), V)

                    def emit_vector_taps_expr(rows, kys):
                        """Depthwise (one output channel): each accumulator one expression over its taps,
                        which LLVM schedules better than explicit accumulator stores on narrow rows."""
                        count = -(-NI // tile)
                        with T.serial(0, count) as t:
                            x0 = L + tirx.min(t * tile, NI - tile) if count > 1 else L
                            for j in range(m):
                                xj = x0 + j * V
                                accs = {r: bias(0, V) for r in range(len(rows))}
                                for r, oy in enumerate(rows):
                                    for ky in kys:
                                        inputs = vector_taps(g, oy * S - pt + ky, xj)
                                        for kx in range(K):
                                            accs[r] = accs[r] + weight(0, 0, ky, kx, V) * inputs[kx]
                                for r, oy in enumerate(rows):
                                    at = (n * CO + co0) * (OH * OW) + oy * OW + xj
                                    vstore(Yf, at, epilogue.apply(accs[r], V), V)

                    def emit_scalar(oy, ox, kys, kxs):
                        for o in range(outs):
                            acc = bias(o, 1)
                            for ci_index, ci in enumerate(cins):
                                for ky in kys:
                                    iy = oy * S - pt + ky
                                    for kx in (kxs if kxs is not None else range(K)):
                                        ix = ox * S - pl + kx
                                        if kxs is not None:
                                            value = prologue(Xf[plane(ci) + iy * W + ix], 1)
                                        else:
                                            value = tirx.if_then_else(
                                                tirx.all(ix >= 0, ix < W),
                                                prologue(Xf[plane(ci) + iy * W + tirx.max(tirx.min(ix, W - 1), 0)], 1),
                                                f32(0))
                                        w = weight(o, 0 if shape.depthwise else ci_index, ky, kx, 1)
                                        acc = acc + w * value
                            at = (n * CO + co0 + o) * (OH * OW) + oy * OW + ox
                            T.buffer_store(Yf, epilogue.apply(acc, 1), [at])

                    def emit_rows(rows, kys):
                        if m:
                            if shape.depthwise:
                                emit_vector_taps_expr(rows, kys)
                            elif len(rows) == 1 and len(kys) == K and knobs.tap_loop:
                                emit_vector_row_tap_loop(rows[0])
                            else:
                                emit_vector_rows(rows, kys)
                            for ox in list(range(0, L)) + list(range(RE, OW)):
                                for oy in rows:
                                    emit_scalar(oy, ox, kys, _valid(ox, S, pl, K, W))
                        else:  # a row narrower than a vector: scalar, taps checked per column
                            with T.serial(0, OW) as ox:
                                for oy in rows:
                                    emit_scalar(oy, ox, kys, None)

                    for oy in range(0, min(TL, OH)):
                        emit_rows([oy], _valid(oy, S, pt, K, H))
                    R = max(1, knobs.rows)
                    blocks = (BR - TL) // R
                    if blocks:
                        with T.serial(0, blocks) as rb:
                            emit_rows([TL + rb * R + r for r in range(R)], list(range(K)))
                    if TL + blocks * R < BR:
                        with T.serial(TL + blocks * R, BR) as oy:
                            emit_rows([oy], list(range(K)))
                    for oy in range(max(BR, TL), OH):
                        emit_rows([oy], _valid(oy, S, pt, K, H))

                last = CO - (groups - 1) * OB
                if shape.depthwise or last == OB:
                    body(OB)
                else:
                    with T.If(g < groups - 1):
                        with T.Then():
                            body(OB)
                        with T.Else():
                            body(last)
    return fn.func

"""Pointwise (1×1) convolution over NCHW: a block-sparse (BSR) or dense weight matrix times the
``[C_in, H·W]`` pixel matrix, the layout XNNPACK's sparse inference uses.

Micro-tile: ``m`` vectors of pixels × the ``bsr`` output channels of one block row, held in registers
from the bias to the fused epilogue (``m`` is sized to the target's register file). Per stored block
(one input channel of the block row) the kernel loads the tile's pixels of that input channel once
and reuses each for the ``bsr`` weight broadcasts. A block's input channel is stored pre-multiplied
by H·W (``offsets``), so the inner loop only adds it to a base address.

Pixels: the ``ceil(P / V)`` vectors of a plane are cut into tiles of as equal a size as possible
(at most two sizes, so no narrow tail tile re-reads every weight for a few pixels); when V does not
divide P the plane's last vector is shifted back to end at the last pixel, overlapping its
neighbour in the same tile, which computes the same values for the shared pixels.

Loop orders (``outer``): ``pixels`` walks groups of ``group`` tiles outermost (a group's input slab
``C_in × group·tile`` stays in cache while every block row passes over it; large maps), ``rows``
walks block rows outermost (a block row's weights stay in L1 while the pixels stream; small maps
with many channels). The outer loop is the parallel one; with several cores, pixel tiles are not
handed out by TVM's parallel loop (contiguous runs of whole tiles: 5 and 4 of a 14×14 plane's 9) but
split as ``workers`` tasks of as equal a number of pixel vectors as possible, each tiled on its own;
on maps of at most ``ROW_SHARE_PIXELS`` (7×7, 14×14) the tasks may instead take equal runs of block
rows, each over the whole plane (``share="rows"``), so a core streams only its own weights and
writes whole output planes (AVX2, 2 cores: 960 → 160 at 7×7, p = 0.9, 1.3× the best pixel split;
V2 at p = 0.9 end to end 0.97–0.98× the time).
Those runs hold as equal a number of stored blocks as whole block rows allow, not of rows
(:func:`balanced_rows`; the bounds ride at the end of ``indptr``): a pruned layer's rows keep
different numbers of blocks (V2 at p = 0.9: one half of a layer's rows holds up to 18 % more).
With ``pack``, a group's input slab is first copied into a scratch row per input channel (aligned
vectors, channels ``group · tile`` floats apart, offsets rescaled to that stride): in NCHW a tile's
pixels of consecutive stored channels lie H·W floats apart at no fixed stride, so every block's
loads would miss L1 and no prefetcher would see them coming; in the slab they are a few cache
lines apart and in order.
``chunk`` splits the input channels so a chunk's slab stays in L1 (partial sums go through the
output; the blocks stored chunk-major, :func:`chunk_major`). The weights stream is prefetched
``PREFETCH_BYTES`` ahead of the block being multiplied: in a model they often come from memory.
With ``tail`` (:func:`tail_ok`), the tiles cover the plane's whole vectors only and the last tile
also computes the few pixels left, each as one vector of the block row's bsr output channels (one
more FMA a block and pixel, instead of a shifted vector's one FMA a block and row).
Chunks and a tail go together (the tail's partial sums go through the output too): a 7×7 plane of
1024 channels is 200 KiB, and V1's 1024 → 1024 layer at p = 0.5 ran 241-244 µs with both against
274-277 µs with the tail alone (Zen 5, 1 thread; 130 vs 139-147 µs at 2).
A dense layer is the same kernel over a matrix whose every block is stored.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from tvm import tirx
from tvm.tirx.script import builder as T

from export.tvm.kernels.tir import (PREFETCH_BYTES, Epilogue, bcast, buffer_arg, f32, flat, parallel_or_serial,
                                    plane_lanes, prefetch, prim_func, registers, row_ranges, vector_registers, vload,
                                    vstore, with_serial)


# The largest maps whose block rows the tasks may split (``share="rows"``). 14×14 maps were left out
# while the weights stream was not prefetched (on AVX2 it lost as often as it won, on a Zen 5 it
# tied); with it, V1's 512 → 512 layer at 2 threads on a Zen 5 took 79 against 83 µs for the best
# pixel split at p = 0.7 and 130 against 133 µs at p = 0.5.
ROW_SHARE_PIXELS = 256

# With the ``prefetch`` knob, how many stored blocks ahead a kernel prefetches the input rows of (its
# tile's pixels in the input channel of block k + this), and the largest maps with such candidates
# (multi-core ones only, and not packed ones, which read their own copy). On small maps a tile is most
# of a plane and consecutive blocks jump between planes, so no hardware prefetcher sees the next one
# coming; in a model at 2 threads the input was just written, which on an Intel Xeon (2 vCPUs) made it
# as slow to read as memory, whichever core had written it: V2's 576 -> 96 projection at 14x14, p =
# 0.9, took 14 us on an input it had read before, 30-36 us on one just written, 29 prefetched 8 blocks
# ahead (4 or 16: the same). At 1 thread an input just written was as fast as a warm one. In the knob
# search (2 threads, V2 at p = 0.9) the best prefetching candidate took 0.86-0.96x the best other one
# on most 7x7 and 14x14 maps, 1.02-1.07x on 28x28, 0.96-1.05x on 56x56 and 112x112 (not offered there:
# in the model they ran 5-15 % slower prefetching).
INPUT_PREFETCH_BLOCKS = 8
INPUT_PREFETCH_PIXELS = 1024


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
    vectors: int = 2  # pixel vectors per micro-tile (at most: tiles are balanced)
    group: int = 0  # pixel tiles per group (0: all), with outer="pixels"
    outer: str = "pixels"  # or "rows"
    parallel: bool = True
    chunk: int = 0  # input channels per reduction chunk (0: all), with outer="pixels"
    layout: str = "pixels"  # vectors along pixels (any matrix) or "channels" (a dense matrix, small maps)
    pixel_tile: int = 0  # layout="channels": pixels per micro-tile (each a broadcast input)
    lanes: int = 0  # layout="channels" or pack: vector width, which the packed constants depend on
    workers: int = 0  # outer="pixels", parallel: split the pixel vectors evenly over this many tasks (0: by tiles)
    pack: bool = False  # outer="pixels", group >= 1, no chunks: copy each group's input slab contiguous first
    share: str = "pixels"  # with workers: what the tasks divide, the pixel vectors or the block rows ("rows")
    tail: bool = False  # the plane's last P mod V pixels as bsr-lane vectors of output channels (see tail_ok)
    prefetch: int = 0  # prefetch the input rows of the block this many blocks ahead (0: none)


@dataclasses.dataclass(frozen=True)
class Tiling:
    """``vectors`` vectors of ``lanes`` pixels from the plane's vector ``first`` (the plane's last vector
    shifted back to end at the last pixel when ``lanes`` does not divide it), cut into ``tiles`` tiles:
    the first ``extra`` of ``base + 1`` vectors, the rest of ``base``."""

    lanes: int
    vectors: int
    tiles: int
    base: int
    extra: int
    first: int = 0

    @property
    def widest(self) -> int:
        return self.base + (1 if self.extra else 0)

    def first_vector(self, t):
        """The plane's vector number where tile ``t`` starts (``t`` may be a TIR expression)."""
        return self.first + t * self.base + (tirx.min(t, self.extra) if self.extra else 0)


def tiling(P: int, lanes: int, vectors: int, first: int = 0, count: int | None = None) -> Tiling:
    """Tiles of at most ``vectors`` vectors over the plane's vectors ``[first, first + count)`` (default:
    all of them)."""
    V = plane_lanes(P, lanes)
    count = -(-P // V) if count is None else count
    m = max(1, min(vectors, count))
    tiles = -(-count // m)
    base, extra = divmod(count, tiles)
    return Tiling(V, count, tiles, base, extra, first)


def worker_ranges(P: int, lanes: int, workers: int) -> list[tuple[int, int]]:
    """``(first, count)`` of each parallel task's pixel vectors: as equal as whole vectors allow (a
    parallel loop over tiles gives 5 tiles to one of two cores and 4 to the other, where 12 and 13
    vectors would be the even split). Tasks with no vector are left out."""
    return row_ranges(-(-P // plane_lanes(P, lanes)), workers)


def vector_pixel(vector, V: int, P: int):
    """First pixel of a plane's vector number ``vector`` (the last one shifted to end at pixel P-1)."""
    return vector * V if P % V == 0 else tirx.min(vector * V, P - V)


def rows_per_pass(bsr: int, vectors: int, lanes: int) -> int:
    """Output rows a micro-tile accumulates at once: all ``bsr`` when ``bsr · vectors`` accumulators,
    the ``vectors`` inputs and a broadcast fit in the register file, else as many as do."""
    regs = vector_registers(lanes)
    if bsr * vectors + vectors + 1 <= regs:
        return bsr
    return max(1, (regs - 1 - vectors) // vectors)


def chunkable(P: int, lanes: int, vectors: int, workers: int = 0) -> bool:
    """Whether partial sums may go through the output: not if the plane's shifted last vector overlaps
    a vector of another tile (the shared pixels would be summed twice)."""
    first, count = worker_ranges(P, lanes, workers)[-1] if workers > 1 else (0, None)
    tl = tiling(P, lanes, vectors, first, count)  # the tiles of the task holding the plane's last vector
    return P % tl.lanes == 0 or (tl.vectors >= 2 and (tl.base >= 2 or tl.tiles == 1))


def pixel_workers(knobs: PointwiseKnobs) -> int:
    """The tasks splitting the plane's pixel vectors (0: none, each task or the one loop covers them all)."""
    return knobs.workers if knobs.parallel and knobs.outer == "pixels" and knobs.share == "pixels" else 0


def chunks(shape: PointwiseShape, knobs: PointwiseKnobs) -> int:
    return -(-shape.c_in // knobs.chunk) if knobs.chunk and knobs.outer == "pixels" else 1


def _vector_choices(shape: PointwiseShape, lanes: int) -> list[int]:
    """Tile widths worth timing: the widest that fits the registers with every row at once, the next
    narrower one, and half of it (distinct tile counts only)."""
    regs = vector_registers(lanes)
    R = min(shape.bsr, 8)
    widest = max(1, (regs - 1) // (R + 1))
    out, counts = [], set()
    for v in (widest, widest - 1, widest // 2):
        t = tiling(shape.pixels, lanes, max(1, v))
        if v >= 1 and t.tiles not in counts:
            counts.add(t.tiles)
            out.append(v)
    return out


def candidates(shape: PointwiseShape, lanes: int, cores: int) -> list[PointwiseKnobs]:
    parallel = cores > 1
    workers = cores if parallel else 0
    out, tail_only = [], []  # (tail_only: chunked candidates whose shifted last vector would be summed twice)
    for v in _vector_choices(shape, lanes):
        tiles = tiling(shape.pixels, lanes, v).tiles
        out.append(PointwiseKnobs(v, 0, "rows", parallel))
        for group in (1, 4, 0):
            if group < tiles:
                out.append(PointwiseKnobs(v, group, "pixels", parallel, workers=workers))
        for group in (1, 4) if packable(shape) else ():
            if group < tiles:
                out.append(PointwiseKnobs(v, group, "pixels", parallel, lanes=lanes, workers=workers, pack=True))
        by_rows = workers and shape.block_rows >= 2 * workers and shape.pixels <= ROW_SHARE_PIXELS
        if by_rows:  # small maps: the tasks split the block rows instead (each over every pixel)
            out.append(PointwiseKnobs(v, 1, "pixels", parallel, lanes=lanes if packable(shape) else 0,
                                      workers=workers, pack=packable(shape), share="rows"))
        if shape.c_in >= 256:  # a chunk's input slab (chunk × tile) stays in L1
            chunked = [PointwiseKnobs(v, 4, "pixels", parallel, 128, workers=workers)]
            chunked += [dataclasses.replace(chunked[0], share="rows")] if by_rows else []
            for k in chunked:
                (out if chunkable(shape.pixels, lanes, v, pixel_workers(k)) else tail_only).append(k)
    if tail_ok(shape, lanes):  # (chunks too: with a tail, no vector overlaps another)
        out += [dataclasses.replace(k, tail=True) for k in out + tail_only]
    out += input_prefetch_variants([k for k in out if not k.pack], shape.pixels, cores)
    if is_dense(shape) and shape.pixels >= 2:
        out += _channel_candidates(shape, lanes, parallel)
    return with_serial(out, shape.macs(), cores)


def input_prefetch_variants(knobs: list, pixels: int, cores: int) -> list:
    """Copies of ``knobs`` that also prefetch their input (see :data:`INPUT_PREFETCH_BLOCKS`), to time
    beside them: with several cores on maps of at most :data:`INPUT_PREFETCH_PIXELS`, else none."""
    if cores <= 1 or pixels > INPUT_PREFETCH_PIXELS:
        return []
    return [dataclasses.replace(k, prefetch=INPUT_PREFETCH_BLOCKS) for k in knobs]


def tail_ok(shape: PointwiseShape, lanes: int) -> bool:
    """Whether the plane's last ``P mod V`` pixels may be computed apart, each as one vector of the block
    row's bsr output channels (one FMA a block and pixel) instead of in a pixel vector shifted back over
    its neighbour (one FMA a block and row): fewer FMAs when fewer pixels are left than bsr (7×7 in
    16-lane vectors: 3 vectors and 1 pixel, 13 FMAs a block of 4 rows instead of 16; V1's 7×7 layers
    at p = 0.5 on a Zen 5, 1 thread: 289 vs 318 µs and 144 vs 154 µs, the best knobs of each). Not
    for pixel tasks' shares of a longer tail (14×14, 2 tasks: 6 vectors and 2 pixels each, 26 FMAs a
    block where the 7-vector task has 28): 8-30 % slower on a Zen 5, its accumulators pushing 6-vector
    tiles past the register file, its loads costing 3-vector tiles more than its FMAs save."""
    V = plane_lanes(shape.pixels, lanes)
    return shape.pixels >= V and 0 < shape.pixels % V < shape.bsr


def packable(shape: PointwiseShape) -> bool:
    """Whether copying the input slab can pay: each input channel feeds 32 or more kept output rows
    on average (measured on AVX2: 7–14 % faster for V1's 14×14 and 28×28 layers at p = 0.5–0.7; 2×
    slower for a 144 → 24 projection at p = 0.9, where the copy is as long as the product)."""
    return shape.nnz * shape.bsr >= 32 * shape.c_in


def is_dense(shape: PointwiseShape) -> bool:
    """Every block stored: the layer may also run output-channel-vectorised (``layout="channels"``)."""
    return shape.nnz == shape.block_rows * shape.c_in


def _channel_candidates(shape: PointwiseShape, lanes: int, parallel: bool) -> list[PointwiseKnobs]:
    """Output-channel vectors × pixels per tile, largest register tiles first (MLAS's 4 × 6 on AVX-512)."""
    regs = vector_registers(lanes)
    vectors_max = -(-shape.c_out // lanes)
    out = []
    for ocv in (4, 3, 2, 1):
        if ocv > vectors_max:
            continue
        pt = min((regs - 1 - ocv) // ocv, 16, shape.pixels)
        if pt >= 2:
            out += [PointwiseKnobs(ocv, 0, outer, parallel, layout="channels", pixel_tile=pt, lanes=lanes)
                    for outer in ("pixels", "rows")]
        if len(out) >= 6:
            break
    return out


def default_knobs(shape: PointwiseShape, lanes: int, cores: int) -> PointwiseKnobs:
    return PointwiseKnobs(_vector_choices(shape, lanes)[0], 4, "pixels", cores > 1)


def slab_stride(shape: PointwiseShape, knobs: PointwiseKnobs) -> int:
    """Floats per input channel in a packed slab: room for ``group`` tiles of ``vectors`` vectors (with a
    tail, one vector more at the end: the plane's last vector, whose last lanes are the tail pixels)."""
    V = plane_lanes(shape.pixels, knobs.lanes)
    return knobs.group * knobs.vectors * V + (V if knobs.tail else 0)


def constants_for(shape: PointwiseShape, knobs: PointwiseKnobs, constants: list) -> list:
    """The kernel's constant arrays for ``knobs``: with chunks, the blocks in chunk-major order and
    ``indptr`` their ``[chunks, block_rows + 1]`` table (:func:`chunk_major`); with block-row tasks
    (:func:`row_shares`), their bounds (:func:`balanced_rows`) follow it."""
    if knobs.layout == "channels":
        return channel_constants(shape, knobs, constants)
    data, offsets, indptr, bias = constants
    tasks = row_shares(knobs)
    bounds = balanced_rows(indptr, tasks) if tasks else None  # from the rows' own blocks, before re-indexing
    n = chunks(shape, knobs)
    if knobs.pack:
        offsets = (offsets // shape.pixels * slab_stride(shape, knobs)).astype(np.int32)
    elif n > 1:
        data, offsets, indptr = chunk_major(shape, knobs, data, offsets, indptr)
    if bounds is not None:
        indptr = np.concatenate([indptr, bounds]).astype(np.int32)
    return [data, offsets, indptr, bias]


def chunk_major(shape: PointwiseShape, knobs: PointwiseKnobs, data, offsets, indptr):
    """The blocks in the order a chunked kernel reads them, chunk by chunk and in each its block rows'
    blocks (one stream the prefetchers follow; row-major, each row's run of a chunk is a short jump
    away from the last: V1's 512 → 1024 7×7 layer at p = 0.5, weights from memory, 1 thread, 245 µs
    chunked against 223 µs unchunked). ``indptr`` becomes ``[chunks, block_rows + 1]``: where each
    chunk's run of each row starts in that order, and the last row's end."""
    n, rows, R = chunks(shape, knobs), shape.block_rows, shape.bsr
    channels = offsets // shape.pixels if shape.nnz else np.zeros(0, np.int32)
    order, table = [], np.zeros((n, rows + 1), np.int32)
    for c in range(n):
        table[c, 0] = len(order)
        for rb in range(rows):
            lo, hi = int(indptr[rb]), int(indptr[rb + 1])
            a, b = lo + np.searchsorted(channels[lo:hi], [c * knobs.chunk, (c + 1) * knobs.chunk])
            order.extend(range(a, b))
            table[c, rb + 1] = len(order)
    order = np.array(order, np.int64)
    if shape.nnz:
        data = data.reshape(-1, R)[order].reshape(-1)
        offsets = offsets[order]
    return data, offsets, table.reshape(-1)


def row_shares(knobs: PointwiseKnobs) -> int:
    """How many tasks divide the block rows (``share="rows"``), else 0."""
    parallel_rows = knobs.parallel and knobs.outer == "pixels" and knobs.share == "rows"
    return knobs.workers if parallel_rows and knobs.workers > 1 else 0


def balanced_rows(indptr: np.ndarray, tasks: int) -> np.ndarray:
    """``tasks + 1`` block-row bounds giving each task as equal a number of stored blocks as whole rows
    allow (a task's time is its blocks'; at p = 0.5 equal runs of rows differ in blocks by several %).
    ``indptr`` may be any cumulative work per block row."""
    total = float(indptr[-1])
    targets = [total * i / tasks for i in range(tasks + 1)]
    bounds = [int(np.argmin(np.abs(indptr - t))) for t in targets]
    bounds[0], bounds[-1] = 0, len(indptr) - 1
    return np.maximum.accumulate(np.array(bounds, np.int32))


def channel_constants(shape: PointwiseShape, knobs: PointwiseKnobs, constants: list) -> list:
    """``[w [blocks, C_in, B], bias [blocks · B]]`` from a dense-stored BSR matrix's constants, B =
    ``vectors · lanes`` output channels per block, zero past C_out: each block's weights one
    contiguous stream (MLAS packs its filters so too), which the hardware prefetcher can follow."""
    data, offsets, indptr, bias = constants
    R, rows = shape.bsr, shape.block_rows
    B = knobs.vectors * knobs.lanes
    blocks = -(-shape.c_out // B)
    full = np.zeros((shape.c_in, blocks * B), np.float32)
    chunks_ = data.reshape(-1, R)
    channels = offsets // shape.pixels
    for rb in range(rows):
        lo, hi = int(indptr[rb]), int(indptr[rb + 1])
        full[channels[lo:hi], rb * R:rb * R + R] = chunks_[lo:hi]
    full[:, shape.c_out:] = 0
    b = np.zeros(blocks * B, np.float32)
    b[:shape.c_out] = bias[:shape.c_out]
    return [np.ascontiguousarray(full.reshape(shape.c_in, blocks, B).transpose(1, 0, 2)), b]


def generate(shape: PointwiseShape, epilogue: Epilogue, knobs: PointwiseKnobs, lanes: int, name: str):
    if knobs.layout == "channels":
        return _generate_channels(shape, epilogue, knobs, lanes, name)
    return _generate_pixels(shape, epilogue, knobs, lanes, name)


def _generate_channels(shape: PointwiseShape, epilogue: Epilogue, knobs: PointwiseKnobs, lanes: int, name: str):
    """``(x, [residual], w, bias, y)``, w and bias from :func:`channel_constants`: a dense 1×1
    convolution vectorised along output channels, as MLAS and XNNPACK do for small maps, where a
    pixel vector would be mostly waste or its input rows would stream from L2. Micro-tile:
    ``vectors`` output-channel vectors × ``pixel_tile`` pixels; per input channel, one weight vector
    load per channel vector and one broadcast per pixel. Outputs are stored lane by lane (NCHW puts
    a vector's channels a plane apart); the last pixel tile shifts back to end at the last pixel."""
    N, CI, P, CO = shape.batch, shape.c_in, shape.pixels, shape.c_out
    V, ocv = knobs.lanes, knobs.vectors
    OB = ocv * V
    blocks = -(-CO // OB)
    PT = max(1, min(knobs.pixel_tile or 6, P))
    tiles = -(-P // PT)
    with prim_func(name) as fn:
        X = buffer_arg("x", shape.inputs(epilogue)[0])
        Res = buffer_arg("residual", shape.output()) if epilogue.residual else None
        Wt = buffer_arg("w", (blocks, CI, OB))
        B = buffer_arg("bias", (blocks * OB,))
        Y = buffer_arg("y", shape.output())
        Xf, Yf, Wf = flat(X, N * CI * P), flat(Y, N * CO * P), flat(Wt, blocks * CI * OB)
        Rf = flat(Res, N * CO * P) if Res is not None else None

        def micro(n, b, t):
            o0 = b * OB
            p0 = t * PT if tiles * PT == P else tirx.min(t * PT, P - PT)
            accs = registers(ocv * PT, V)  # (i, q): channel vector i at pixel q
            for i in range(ocv):
                init = vload(B, o0 + i * V, V) if epilogue.bias else bcast(f32(0), V)
                for q in range(PT):
                    vstore(accs[i * PT + q], 0, init, V)
            with T.serial(0, CI) as c:
                xs = [bcast(Xf[n * (CI * P) + c * P + p0 + q], V) for q in range(PT)]
                for i in range(ocv):
                    w = vload(Wf, (b * CI + c) * OB + i * V, V)
                    for q in range(PT):
                        vstore(accs[i * PT + q], 0, vload(accs[i * PT + q], 0, V) + w * xs[q], V)
            plain = epilogue.activation()
            for i in range(ocv):
                for q in range(PT):
                    vstore(accs[i * PT + q], 0, plain.apply(vload(accs[i * PT + q], 0, V), V), V)
            for i in range(ocv):
                for lane in range(V):
                    o = o0 + i * V + lane

                    def store(i=i, lane=lane, o=o):
                        for q in range(PT):
                            at = n * (CO * P) + o * P + p0 + q
                            value = accs[i * PT + q][lane]
                            if Rf is not None:
                                value = value + Rf[at]
                            T.buffer_store(Yf, value, [at])
                    if blocks * OB == CO:
                        store()
                    else:
                        with T.If(o < CO):
                            with T.Then():
                                store()

        par = parallel_or_serial(knobs.parallel)
        with T.serial(0, N) as n:
            if knobs.outer == "rows":  # channel blocks outermost: a block's weights stay in cache
                with par(0, blocks) as b:
                    with T.serial(0, tiles) as t:
                        micro(n, b, t)
            else:  # pixel tiles outermost: a tile's inputs stay in L1 while the weights stream
                with par(0, tiles) as t:
                    with T.serial(0, blocks) as b:
                        micro(n, b, t)
    return fn.func


def tile_emitter(shape: PointwiseShape, epilogue: Epilogue, tl: Tiling, P: int, nch: int, D, O, IP, B, Xf, Yf, Rf,
                 x_base, out_at, guard_rows: bool = True, x_start=None, tail=None, input_prefetch: int = 0):
    """``tile(n, rb, t, chunk)``: emits pixel tile ``t`` of block row ``rb`` over ``P`` pixels (tiled by
    ``tl``). ``x_base(n)`` is added to a block's offset (input channel · H·W) to address its input
    row, and ``x_start(vector)`` (default: the vector's first pixel) to that to address a vector in
    it; ``out_at(n, row, pixel)`` addresses an output value. With ``guard_rows`` the rows past C_out
    of a partial last block row are not stored (without, the output has room for them).
    ``tail = (first pixel, count, x_offset(q))``: the last tile also computes those pixels (see
    :func:`tail_ok`), tail pixel ``q``'s input at ``x_base(n) + offset + x_offset(q)``.
    ``input_prefetch``: how many blocks ahead the input vectors are prefetched (0: not at all)."""
    N, CO, R = shape.batch, shape.c_out, shape.bsr
    rows = shape.block_rows
    V = tl.lanes
    partial = CO % R and guard_rows

    def pixel(vector):
        return vector_pixel(vector, V, P)

    x_start = x_start or pixel

    def row_guarded(rb, r, emit):
        """``emit()`` for row ``r`` of block row ``rb``, behind a check where rows past C_out may exist
        (only in a partial last block row)."""
        if partial and r >= CO % R:
            with T.If(rb * R + r < CO):
                with T.Then():
                    emit()
        else:
            emit()

    def micro(n, rb, first, mm, chunk=0, with_tail=False):
        """``mm`` vectors from vector ``first`` for block row ``rb``; ``chunk``: which input-channel chunk;
        ``with_tail``: the tail pixels too (one bsr-lane vector each, in the first pass over the blocks)."""
        first_chunk, last_chunk = chunk == 0, chunk == nch - 1
        starts = [pixel(first + j) for j in range(mm)]
        x_starts = [x_start(first + j) for j in range(mm)]
        row_at = chunk * (rows + 1) + rb  # (one chunk: the plain indptr; several: chunk_major's table)
        start, stop = IP[row_at], IP[row_at + 1]
        Rs = rows_per_pass(R, mm, V)
        for r0 in range(0, R, Rs):
            rr = list(range(r0, min(R, r0 + Rs)))
            accs = registers(len(rr), mm * V)
            for i, r in enumerate(rr):
                for j in range(mm):
                    at = out_at(n, rb * R + r, starts[j])
                    if first_chunk:
                        init = bcast(B[rb * R + r], V) if epilogue.bias else bcast(f32(0), V)
                    elif partial and r >= CO % R:  # rows past C_out are never stored: any value will do
                        init = vload(Yf, tirx.min(at, N * CO * P - V), V)
                    else:  # the partial sums of the chunks before
                        init = vload(Yf, at, V)
                    vstore(accs[i], j * V, init, V)
            extra = with_tail and r0 == 0
            if extra:
                t0, tn, t_offset = tail
                tacc = registers(1, tn * R)[0]
                if first_chunk:
                    tinit = vload(B, rb * R, R) if epilogue.bias else bcast(f32(0), R)
                    for q in range(tn):
                        vstore(tacc, q * R, tinit, R)
                else:  # the chunks before left their partial sums in the output (rows past C_out: any value)
                    for q in range(tn):
                        for r in range(R):
                            at = out_at(n, rb * R + r, t0 + q)
                            T.buffer_store(tacc, Yf[tirx.min(at, N * CO * P - 1) if partial else at], [q * R + r])
            with T.serial(start, stop) as k:
                base = x_base(n) + O[k]
                prefetch(D, tirx.min(k + PREFETCH_BYTES // (4 * R), O.shape[0] - 1) * R)  # the weights stream
                if input_prefetch:  # the input rows of a block further on: its vectors and the tile's last lane
                    ahead = x_base(n) + O[tirx.min(k + input_prefetch, O.shape[0] - 1)]
                    for j in range(mm):
                        prefetch(Xf, ahead + x_starts[j])
                    prefetch(Xf, ahead + x_starts[mm - 1] + V - 1)
                xs = [vload(Xf, base + x_starts[j], V) for j in range(mm)]
                for i, r in enumerate(rr):
                    w = bcast(D[k * R + r], V)
                    for j in range(mm):
                        vstore(accs[i], j * V, vload(accs[i], j * V, V) + w * xs[j], V)
                if extra:
                    w4 = vload(D, k * R, R)
                    for q in range(tn):
                        vstore(tacc, q * R, vload(tacc, q * R, R) + w4 * bcast(Xf[base + t_offset(q)], R), R)
            if extra:
                plain = epilogue.activation()
                for r in range(R):
                    def store_tail(r=r):
                        for q in range(tn):
                            at = out_at(n, rb * R + r, t0 + q)
                            value = tacc[q * R + r]
                            if last_chunk:
                                value = plain.apply(value, 1, Rf[at] if Rf is not None else None)
                            T.buffer_store(Yf, value, [at])
                    row_guarded(rb, r, store_tail)
            for i, r in enumerate(rr):
                def store(i=i, r=r):
                    for j in range(mm):
                        at = out_at(n, rb * R + r, starts[j])
                        value = vload(accs[i], j * V, V)
                        if last_chunk:
                            residual = vload(Rf, at, V) if Rf is not None else None
                            value = epilogue.apply(value, V, residual)
                        vstore(Yf, at, value, V)
                row_guarded(rb, r, store)

    def sized(n, rb, t, chunk, with_tail):
        """Tile ``t``: ``base + 1`` vectors for the first ``extra`` tiles, ``base`` after."""
        first = tl.first_vector(t)
        if not tl.extra:
            micro(n, rb, first, tl.base, chunk, with_tail)
        elif tl.extra == tl.tiles:
            micro(n, rb, first, tl.base + 1, chunk, with_tail)
        else:
            with T.If(t < tl.extra):
                with T.Then():
                    micro(n, rb, first, tl.base + 1, chunk, with_tail)
                with T.Else():
                    micro(n, rb, first, tl.base, chunk, with_tail)

    def tile(n, rb, t, chunk=0):
        if tail is None:
            sized(n, rb, t, chunk, False)
        elif tl.tiles == 1:
            sized(n, rb, t, chunk, True)
        else:
            with T.If(t == tl.tiles - 1):
                with T.Then():
                    sized(n, rb, t, chunk, True)
                with T.Else():
                    sized(n, rb, t, chunk, False)
    return tile


def _generate_pixels(shape: PointwiseShape, epilogue: Epilogue, knobs: PointwiseKnobs, lanes: int, name: str):
    """``(x, [residual], data, offsets, indptr, bias, y)`` with x ``[N, C_in, H, W]`` (P = H·W), data
    ``[nnz·bsr]`` (block k's bsr weights), offsets ``[nnz]`` (input channel · P), indptr ``[block_rows + 1]``
    (with chunks: :func:`constants_for`'s table). Chunked, each chunk's partial sums go through Y."""
    N, CI, P, CO, R = shape.batch, shape.c_in, shape.pixels, shape.c_out, shape.bsr
    rows = shape.block_rows
    nch = chunks(shape, knobs)
    workers = knobs.workers if knobs.parallel and knobs.outer == "pixels" and knobs.workers > 1 else 0
    if nch > 1 and not knobs.tail and not chunkable(P, lanes, knobs.vectors, pixel_workers(knobs)):
        raise ValueError(f"chunked pointwise kernel needs tiles of 2+ vectors for {P} pixels")
    pack = knobs.pack and knobs.outer == "pixels"
    if pack and (nch > 1 or knobs.group < 1 or knobs.lanes != lanes):
        raise ValueError(f"a packed pointwise kernel needs group >= 1, no chunks and lanes={lanes}: {knobs}")
    if knobs.tail and not tail_ok(shape, lanes):
        raise ValueError(f"no pointwise kernel with a tail for {shape} with {knobs}")
    V = plane_lanes(P, lanes)
    covered = P // V if knobs.tail else -(-P // V)  # vectors the tiles cover (with a tail, whole ones only)

    def tiled(first=0, count=None):
        return tiling(P, lanes, knobs.vectors, first, covered if count is None else count)
    with prim_func(name) as fn:
        X = buffer_arg("x", shape.inputs(epilogue)[0])
        Res = buffer_arg("residual", shape.output()) if epilogue.residual else None
        D = buffer_arg("data", (max(shape.nnz, 1) * R,))
        O = buffer_arg("offsets", (max(shape.nnz, 1),), "int32")
        shares = row_shares(knobs)  # with these, indptr ends with the tasks' block-row bounds (balanced_rows)
        at_bounds = nch * (rows + 1)
        IP = buffer_arg("indptr", (at_bounds + (shares + 1 if shares else 0),), "int32")
        B = buffer_arg("bias", (rows * R,))
        Y = buffer_arg("y", shape.output())
        Xf, Yf = flat(X, N * CI * P), flat(Y, N * CO * P)
        Rf = flat(Res, N * CO * P) if Res is not None else None

        def emitter(tl, source=Xf, x_base=lambda n: n * (CI * P), x_start=None, tail=None):
            return tile_emitter(shape, epilogue, tl, P, nch, D, O, IP, B, source, Yf, Rf, x_base=x_base,
                                out_at=lambda n, row, pixel: n * (CO * P) + row * P + pixel, x_start=x_start,
                                tail=tail, input_prefetch=knobs.prefetch)

        # the pixels past the covered vectors, their inputs in the plane
        tail = (covered * V, P - covered * V, lambda q: covered * V + q) if knobs.tail else None

        def packed_emitter(n, tl, g, G, tail=None):
            """Copies group ``g``'s input vectors of every channel into one contiguous row a channel
            (aligned vectors, channels a slab row apart, so the blocks' jumps stay within a few cache
            lines the prefetcher follows) and reads the tiles from there."""
            V, SW = tl.lanes, slab_stride(shape, knobs)
            v0 = tl.first_vector(g * G)
            count = tl.first_vector(tirx.min(g * G + G, tl.tiles)) - v0
            slab = T.alloc_buffer((CI * SW,), "float32", scope="global")
            Sf = flat(slab, CI * SW)
            with T.serial(0, CI) as c:
                with T.serial(0, count) as v:
                    vstore(Sf, c * SW + v * V, vload(Xf, n * (CI * P) + c * P + vector_pixel(v0 + v, V, P), V), V)
                if tail is not None:  # the plane's last vector at the row's end: its last lanes are the tail
                    vstore(Sf, c * SW + SW - V, vload(Xf, n * (CI * P) + c * P + P - V, V), V)
            packed_tail = None if tail is None else (tail[0], tail[1], lambda q: SW - tail[1] + q)
            return emitter(tl, Sf, x_base=lambda n_: 0, x_start=lambda vector: (vector - v0) * V, tail=packed_tail)

        def pixel_groups(n, tl, loop, first_row=0, row_count=rows, tail=None):
            """Groups of ``group`` tiles of ``tl`` (the ``loop`` over them), every block row of
            ``[first_row, first_row + row_count)`` over each group (``tail``: the last tile's extra pixels)."""
            shared = None if pack else emitter(tl, tail=tail)
            G = tl.tiles if knobs.group <= 0 else min(knobs.group, tl.tiles)
            groups = -(-tl.tiles // G)
            with loop(0, groups) as g:
                tile = packed_emitter(n, tl, g, G, tail) if pack else shared
                for chunk in range(nch):
                    with T.serial(0, row_count) as r:
                        rb = first_row + r
                        with T.serial(0, G) as tt:
                            if groups * G != tl.tiles:
                                with T.If(g * G + tt < tl.tiles):
                                    with T.Then():
                                        tile(n, rb, g * G + tt, chunk)
                            else:
                                tile(n, rb, g * G + tt, chunk)

        outer = parallel_or_serial(knobs.parallel)
        with T.serial(0, N) as n:
            if workers:  # one task per worker: its share of the block rows, or of the vectors tiled on its own
                if shares:  # bounds from the constants: as many stored blocks each, not as many rows
                    with T.parallel(0, shares) as w:
                        first = IP[at_bounds + w]
                        pixel_groups(n, tiled(), T.serial, first, IP[at_bounds + 1 + w] - first, tail=tail)
                else:
                    ranges = row_ranges(covered, workers)  # (without a tail: worker_ranges)
                    with T.parallel(0, len(ranges)) as w:
                        for i, (first, count) in enumerate(ranges):
                            with T.If(w == i):
                                with T.Then():  # (the last task's last tile also takes the tail pixels)
                                    pixel_groups(n, tiled(first, count), T.serial,
                                                 tail=tail if i == len(ranges) - 1 else None)
            elif knobs.outer == "pixels":
                pixel_groups(n, tiled(), outer, tail=tail)
            else:
                tl = tiled()
                tile = emitter(tl, tail=tail)
                with outer(0, rows) as rb:
                    with T.serial(0, tl.tiles) as t:
                        tile(n, rb, t)
    return fn.func

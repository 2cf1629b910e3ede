"""K×K convolutions on NCHW planes, stride 1 or 2, any zero padding: depthwise, and dense over a few
input channels (the stem).

Output pixels run along a row in vectors of the target's lanes, so a tap's inputs are one contiguous
load (stride 1) or, at stride 2, the even and odd inputs of two aligned loads split by two shuffles,
and the taps one input further on those moved one lane with the next input as the last lane (one
two-source permute and a scalar broadcast instead of two more loads across cache lines: 3×3 stride
2, one core of a Zen 5, 72 vs 60 GMAC/s); no gather, no read past the row. Every border is resolved
when the kernel is generated: the interior columns and rows take every tap unconditionally; a
depthwise row's border columns are vector tiles too, each tap's input window clamped into the row
and its padding lanes zeroed by one shuffle (scalar border pixels cost 1.3-1.7× on 14×14 and 7×7
maps), and so are the stem's with ``tap_loop`` (V2's 224² stem, one core of a Zen 5: 101 vs 112 µs,
the best knobs of each: a scalar border pixel a row was 27 taps × ``out_block`` scalar FMAs);
without it the stem's one border pixel a row is scalar code with exactly its valid taps; the last
vector tile of a row overlaps its neighbour instead of needing a tail.
Several output rows (``rows``) and tiles (``vectors``) are computed together so the input rows they
share are loaded once and enough independent FMA chains are in flight.

Small depthwise planes (stride 1, "same" padding, at most 576 pixels: 20×20, 14×14, 7×7, 5×5) may
instead run along the flattened plane (``flat``): rows back to back in vectors of the target's lanes,
each tap one load shifted by ``dy·W + dx``, and per kernel column the lanes that column moves off
their row zeroed by one blend, so a 7-wide row is not a 4-lane vector plus border shuffles (AVX2,
one core: 7×7 1.3×, 5×5 2×, 10×10 1.5×, 14×14 1.1×, 20×20 1.2× the row kernel; 28×28 is slower).

Depthwise: one plane per channel, planes in parallel. Dense (``groups == 1``): ``out_block`` output
channels share each input load; blocks of output channels in parallel, and with ``row_tasks`` each
block's output rows cut into that many runs, so the blocks need not divide among the cores (a stem of
24 channels in blocks of 16 gave one core two thirds of the work at 2 threads; V3's 16-channel stem in
one block had no parallel work at all). An optional scalar affine
``a·x + b`` on the input (Keras' ``Rescaling`` before the stem) is applied to loaded values only,
so the zero padding stays zero exactly as in the original graph.
"""
from __future__ import annotations

import dataclasses

from tvm import tirx
from tvm.tirx.script import builder as T

from export.tvm.kernels.tir import (Epilogue, bcast, buffer_arg, f32, flat, parallel_or_serial, plane_lanes,
                                    prim_func, registers, row_ranges, vload, vstore, with_serial)


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
    flat: bool = False  # depthwise on a small plane: vectors along the flattened plane (see flat_plane_ok);
    # with flat, ``vectors`` is how many vectors a block of straight-line code holds (0: the whole plane)
    row_tasks: int = 0  # dense, parallel: each block of output channels' rows in this many tasks (0: one)


def supported(kernel: int, stride: int) -> bool:
    return stride in (1, 2) and kernel % 2 == 1 and kernel >= 1


def candidates(shape: SpatialShape, lanes: int, cores: int) -> list[SpatialKnobs]:
    parallel = cores > 1
    if shape.depthwise:
        knobs = [SpatialKnobs(v, r, 1, parallel) for v, r in ((1, 1), (2, 1), (2, 2), (1, 4), (4, 1), (2, 4))]
        if flat_plane_ok(shape):
            knobs += [SpatialKnobs(v, 1, 1, parallel, flat=True) for v in (0, 4)]
    else:
        knobs = [SpatialKnobs(v, r, b, parallel) for v, r, b in ((1, 1, 8), (2, 1, 4), (2, 1, 8), (1, 1, 16))]
        knobs += [SpatialKnobs(v, 1, b, parallel, tap_loop=True) for v, b in ((2, 8), (2, 12), (1, 16), (3, 8), (4, 4))]
        if parallel:  # channels that blocks do not divide evenly among the cores: the rows too
            knobs += [dataclasses.replace(k, row_tasks=cores) for k in knobs
                      if shape.c_out % (k.out_block * cores) and shape.out_height >= 2 * cores]
    return with_serial(knobs, shape.macs(), cores)


def flat_plane_ok(shape: SpatialShape) -> bool:
    """Whether the flattened-plane depthwise applies: stride 1, output plane = input plane, ≤ 576 pixels
    (its vectors and taps are unrolled: 50 vectors × 9 taps on a 20×20 plane with AVX2)."""
    return (shape.depthwise and shape.stride == 1 and shape.affine is None and 2 <= shape.height * shape.width <= 576
            and (shape.out_height, shape.out_width) == (shape.height, shape.width))


def default_knobs(shape: SpatialShape, lanes: int, cores: int) -> SpatialKnobs:
    return SpatialKnobs(1, 1, 1 if shape.depthwise else 8, cores > 1)


def row_lanes(interior: int, lanes: int) -> int:
    """Vector width for rows of ``interior`` border-free output columns: the target's, halved (down to
    2) while a row is narrower, so 7×7 and 14×14 maps are vectorised too (AVX-512 rows of 16)."""
    V = lanes
    while V > 2 and interior < V:
        V //= 2
    return V


def lane_order(lanes: int, stride: int) -> list[int]:
    """Which output column each lane of a stride-2 tile holds: the order a 128-bit in-lane shuffle
    (x86 ``shufps``) leaves every other element of two vectors in. Taps are gathered in this order
    (one single-µop shuffle each, not two) and an accumulator is put back once, before its store.
    Identity for stride 1 and for 4-lane vectors (NEON's ``uzp1`` needs no reorder)."""
    if stride != 2 or lanes < 8:
        return list(range(lanes))
    order = []
    for j in range(lanes):
        chunk, within = divmod(j, 4)
        order.append(2 * chunk + within if within < 2 else lanes // 2 + 2 * chunk + within - 2)
    return order


def row_plan(left: int, right: int, width: int, lanes: int) -> tuple[list[int], int, int, list[int]]:
    """How vector tiles cover an output row whose columns [left, right) take every tap: the static
    starts of the single-vector tiles over the left border, the first interior column and the number
    of whole vectors from there inside the interior (a runtime loop), and the static starts of the
    tiles over the rest (the last one overlapping its neighbour). Needs ``width >= lanes``."""
    head = list(range(0, left, lanes))
    start = len(head) * lanes
    middle = max(0, (right - start) // lanes)
    tail = [min(x, width - lanes) for x in range(start + middle * lanes, width, lanes)]
    return head, start, middle, tail


def _valid(o: int, stride: int, pad: int, k: int, size: int) -> list[int]:
    return [t for t in range(k) if 0 <= o * stride - pad + t <= size - 1]


class Emitter:
    """Emits a K×K convolution's output rows into TIR (inside an IRBuilder function). ``in_row(ci, iy)``
    and ``out_row(co, oy)`` give the flat index of an input / output row, so the same code serves
    whole NCHW tensors and the row bands of a fused kernel; ``Xf``/``Yf`` are flat buffers."""

    def __init__(self, shape: SpatialShape, epilogue: Epilogue, knobs: SpatialKnobs, lanes: int, Xf, Wf, Bf, Yf,
                 in_row, out_row):
        K, S, W, H = shape.kernel, shape.stride, shape.width, shape.height
        pt, pl, _, _ = shape.pads
        self.shape, self.epilogue, self.knobs = shape, epilogue, knobs
        self.Xf, self.Wf, self.Bf, self.Yf, self.in_row, self.out_row = Xf, Wf, Bf, Yf, in_row, out_row
        self.K, self.S, self.pt, self.pl = K, S, pt, pl
        self.OH, self.OW = shape.out_height, shape.out_width
        self.L = -(-pl // S)  # interior columns [L, RE): every tap inside the row
        self.RE = max(self.L, (W - K + pl) // S + 1)
        self.TL = -(-pt // S)  # interior rows [TL, BR)
        self.BR = max(self.TL, (H - K + pt) // S + 1)
        self.NI = self.RE - self.L
        self.V = row_lanes(self.NI, lanes)
        self.m = max(0, min(knobs.vectors, self.NI // self.V))
        # border columns as vector tiles too: depthwise, and the stem with its weights loaded in the tap
        # loop (hoisted, its 27 taps × out_block weights, live across one more tile, spill)
        self.whole_rows = (shape.depthwise or knobs.tap_loop) and self.OW >= self.V and W >= S * self.V
        self.taps = K * K * (1 if shape.depthwise else shape.c_in)
        self.order = lane_order(self.V, S)
        self.co0, self.outs, self.cins = 0, 1, [0]

    def group(self, co0, outs: int, cins) -> None:
        """The output channels ``co0 … co0+outs-1`` and the input channels they read, for what follows."""
        self.co0, self.outs, self.cins = co0, outs, cins

    # --- values ------------------------------------------------------------------------------------

    def weight(self, o, ci_index, ky, kx, lanes):
        K = self.K
        return bcast(self.Wf[(self.co0 + o) * self.taps + (ci_index * K + ky) * K + kx], lanes)

    def bias(self, o, lanes):
        return bcast(self.Bf[self.co0 + o], lanes) if self.epilogue.bias else bcast(f32(0), lanes)

    def prologue(self, value, lanes):
        if self.shape.affine is None:
            return value
        a, b = self.shape.affine
        return value * bcast(f32(a), lanes) + bcast(f32(b), lanes)

    def vector_taps(self, ci, iy, x0) -> dict:
        """{kx: the V inputs tap kx reads for outputs x0 … x0+V-1, input row iy}."""
        K, S, V, Xf = self.K, self.S, self.V, self.Xf
        row = self.in_row(ci, iy)
        if isinstance(x0, int) and not self.L <= x0 <= self.RE - V:
            return self.window_taps(row, x0)
        if S == 1:
            return {kx: self.prologue(vload(Xf, row + x0 - self.pl + kx, V), V) for kx in range(K)}
        base = row + 2 * x0 - self.pl

        def pair(off):
            return [vload(Xf, base + off, V), vload(Xf, base + off + V, V)]
        halves = [tirx.Shuffle(pair(0), [2 * o + parity for o in self.order]) for parity in (0, 1)]
        shifted = [self.order.index(o + 1) if o + 1 < V else V for o in self.order]
        out = {}
        for kx in range(K):
            shift, parity = divmod(kx, 2)
            if shift == 0:  # the even or odd inputs of the tile's 2·V
                out[kx] = halves[parity]
            elif shift == 1:  # the same moved one output over, the last lane the next input of that parity
                out[kx] = tirx.Shuffle([halves[parity], bcast(Xf[base + 2 * V + parity], V)], shifted)
            else:  # 5×5, the last tap: odd lanes of the pair three inputs on
                out[kx] = tirx.Shuffle(pair(kx - 1), [2 * o + 1 for o in self.order])
        return {kx: self.prologue(v, V) for kx, v in out.items()}

    def restore(self, value):
        """An accumulator in :func:`lane_order` put back in output order (one shuffle per stored vector)."""
        if self.order == list(range(self.V)):
            return value
        return tirx.Shuffle([value], [self.order.index(i) for i in range(self.V)])

    def window_taps(self, row, x0: int) -> dict:
        """{kx: inputs} for a border tile (static ``x0``): each tap's S·V input window is clamped into
        the row and its lanes picked by one shuffle, with zeros where the tap falls in the padding, so
        border pixels are vector code too (as scalar code they cost 1.3-1.7× a 14×14 or 7×7 map)."""
        K, S, V, W = self.K, self.S, self.V, self.shape.width
        out = {}
        for kx in range(K):
            start = S * x0 - self.pl + kx
            at = min(max(start, 0), W - S * V)
            parts = [self.prologue(vload(self.Xf, row + at + q * V, V), V) for q in range(S)]
            lanes = [col - at if 0 <= col < W else S * V for col in (start + S * o for o in self.order)]
            if lanes == list(range(V)):
                out[kx] = parts[0]
            else:
                out[kx] = tirx.Shuffle(parts + [bcast(f32(0), V)], lanes)
        return out

    def tiles(self):
        """``(x0, vectors)`` of the vector tiles covering a row. Where the row is wide enough for border
        windows, whole rows: static single-vector tiles over the left and right border columns (taps
        from :meth:`window_taps`) and between them a runtime loop of ``knobs.vectors``-vector tiles,
        the last one overlapping its neighbour; a 14-wide row is two 8-lane tiles, not two tiles and
        two scalar pixels. Otherwise the interior columns only (borders are then scalar code)."""
        V = self.V
        if not self.whole_rows:
            yield from self._interior_loop(self.L, self.NI, self.m)
            return
        head, start, middle, tail = row_plan(self.L, self.RE, self.OW, V)
        for x0 in head:
            yield x0, 1
        if middle:
            yield from self._interior_loop(start, middle * V, min(self.knobs.vectors, middle))
        for x0 in tail:
            yield x0, 1

    def _interior_loop(self, start: int, span: int, m: int):
        """Tiles of ``m`` vectors over the interior columns ``[start, start + span)``, the last one
        overlapping its neighbour; a single tile is static (no loop)."""
        width = m * self.V
        count = -(-span // width)
        if count == 1:
            yield start, m
            return
        with T.serial(0, count) as t:
            yield start + tirx.min(t * width, span - width), m

    # --- rows --------------------------------------------------------------------------------------

    def vector_rows_expr(self, rows, kys) -> None:
        """Depthwise (one output channel): each accumulator two expressions over alternate taps (two
        FMA chains in flight), which LLVM schedules better than explicit accumulator stores on narrow
        rows."""
        V, K, S = self.V, self.K, self.S
        for x0, m in self.tiles():
            for j in range(m):
                xj = x0 + j * V
                accs = {r: [self.bias(0, V), None] for r in range(len(rows))}
                for r, oy in enumerate(rows):
                    n = 0
                    for ky in kys:
                        inputs = self.vector_taps(self.cins[0], oy * S - self.pt + ky, xj)
                        for kx in range(K):
                            term = self.weight(0, 0, ky, kx, V) * inputs[kx]
                            half = accs[r]
                            half[n % 2] = term if half[n % 2] is None else half[n % 2] + term
                            n += 1
                for r, oy in enumerate(rows):
                    total = accs[r][0] if accs[r][1] is None else accs[r][0] + accs[r][1]
                    vstore(self.Yf, self.out_row(self.co0, oy) + xj, self.epilogue.apply(self.restore(total), V), V)

    def vector_row_tap_loop(self, oy) -> None:
        """Dense (the stem), one interior output row: a runtime loop over (input channel, kernel row),
        the K column taps unrolled. Each weight is loaded inside that loop (so LLVM cannot hoist all
        C_in·K·K·out_block of them and spill them to the stack) and feeds ``m`` FMAs; the accumulators
        and the m·K taps fit the registers."""
        V, K, S, outs = self.V, self.K, self.S, self.outs
        CI = self.shape.c_in
        for x0, m in self.tiles():
            accs = registers(outs, m * V)
            for o in range(outs):
                for j in range(m):
                    vstore(accs[o], j * V, self.bias(o, V), V)
            with T.serial(0, CI * K) as cik:
                ci, ky = cik // K, cik % K
                inputs = [self.vector_taps(ci, oy * S - self.pt + ky, x0 + j * V) for j in range(m)]
                for o in range(outs):
                    for kx in range(K):
                        w = bcast(self.Wf[(self.co0 + o) * self.taps + cik * K + kx], V)
                        for j in range(m):
                            vstore(accs[o], j * V, vload(accs[o], j * V, V) + w * inputs[j][kx], V)
            for o in range(outs):
                for j in range(m):
                    value = self.epilogue.apply(self.restore(vload(accs[o], j * V, V)), V)
                    vstore(self.Yf, self.out_row(self.co0 + o, oy) + x0 + j * V, value, V)

    def vector_rows(self, rows, kys) -> None:
        """Dense: ``len(rows)`` output rows × ``m`` vectors at once: each input row a tile needs is loaded
        once per input channel (its K taps kept in registers) and feeds every output row and channel
        that uses it; statements in that order keep LLVM's register pressure at the accumulators plus
        K taps."""
        V, K, S, outs = self.V, self.K, self.S, self.outs
        R_ = len(rows)
        top = rows[0] * S - self.pt  # input row of output row rows[0], tap 0
        for x0, m in self.tiles():
            accs = registers(outs * R_, m * V)
            taps = registers(1, K * V)[0]

            def slot(o, r, j):
                return accs[o * R_ + r], j * V
            for o in range(outs):
                for r in range(R_):
                    for j in range(m):
                        vstore(*slot(o, r, j), self.bias(o, V), V)
            for ci_index, ci in enumerate(self.cins):
                for rel in range((R_ - 1) * S + K):
                    users = [(r, rel - r * S) for r in range(R_) if rel - r * S in kys]
                    if not users:
                        continue
                    for j in range(m):
                        for kx, value in self.vector_taps(ci, top + rel, x0 + j * V).items():
                            vstore(taps, kx * V, value, V)
                        for r, ky in users:
                            for kx in range(K):
                                tap = vload(taps, kx * V, V)
                                for o in range(outs):
                                    w = self.weight(o, ci_index, ky, kx, V)
                                    at = slot(o, r, j)
                                    vstore(*at, vload(*at, V) + w * tap, V)
            for o in range(outs):
                for r, oy in enumerate(rows):
                    for j in range(m):
                        value = self.epilogue.apply(self.restore(vload(*slot(o, r, j), V)), V)
                        vstore(self.Yf, self.out_row(self.co0 + o, oy) + x0 + j * V, value, V)

    def scalar(self, oy, ox, kys, kxs) -> None:
        """One output pixel per channel with exactly the taps ``kys`` × ``kxs`` (None: checked per column)."""
        K, S, W = self.K, self.S, self.shape.width
        depthwise = self.shape.depthwise
        for o in range(self.outs):
            acc = self.bias(o, 1)
            for ci_index, ci in enumerate(self.cins):
                for ky in kys:
                    row = self.in_row(ci, oy * S - self.pt + ky)
                    for kx in (kxs if kxs is not None else range(K)):
                        ix = ox * S - self.pl + kx
                        if kxs is not None:
                            value = self.prologue(self.Xf[row + ix], 1)
                        else:
                            value = tirx.if_then_else(tirx.all(ix >= 0, ix < W),
                                                      self.prologue(self.Xf[row + tirx.max(tirx.min(ix, W - 1), 0)], 1),
                                                      f32(0))
                        acc = acc + self.weight(o, 0 if depthwise else ci_index, ky, kx, 1) * value
            T.buffer_store(self.Yf, self.epilogue.apply(acc, 1), [self.out_row(self.co0 + o, oy) + ox])

    def flat_plane(self, lanes: int) -> None:
        """Depthwise, the whole plane of the current channel (:func:`flat_plane_ok`) as vectors along the
        flattened plane, the last one shifted back to end at the last pixel; tap (dy, dx) of the
        vector from pixel s reads pixels s + dy·W + dx …, with the lanes that fall off the plane
        zeroed as :meth:`_flat_vector` says. Every vector is static code (its lane patterns are known), the channel's
        K·K weights loaded once for all; with ``knobs.vectors`` = G > 0 the vectors run G at a time as
        the cases of a loop, so LLVM does not interleave a whole 14×14 plane's loads and spill them."""
        P = self.shape.height * self.shape.width
        V = plane_lanes(P, lanes)
        row0, out0 = self.in_row(self.cins[0], 0), self.out_row(self.co0, 0)
        starts = sorted({min(j * V, P - V) for j in range(-(-P // V))})
        G = self.knobs.vectors if self.knobs.vectors > 0 else len(starts)
        chunks = [starts[i:i + G] for i in range(0, len(starts), G)]

        def emit(index):
            for s in chunks[index]:
                self._flat_vector(s, V, row0, out0)

        def cases(k, index):  # chunk ``k`` of the loop: if k == index … else the next case
            if index == len(chunks) - 1:
                return emit(index)
            with T.If(k == index):
                with T.Then():
                    emit(index)
                with T.Else():
                    cases(k, index + 1)
        if len(chunks) == 1:
            emit(0)
        else:
            with T.serial(0, len(chunks)) as k:
                cases(k, 0)

    def _flat_vector(self, s: int, V: int, row0, out0) -> None:
        """The vector of outputs from pixel ``s``: per kernel column, the sum of its K taps, then the
        lanes whose column that kernel column moves off the row zeroed once (one blend per kernel
        column, not per tap). A tap's lanes whose row falls outside the plane, or whose read would
        leave it, are zeroed by the tap's own shuffle (only vectors on the first or last rows)."""
        K, W, H = self.K, self.shape.width, self.shape.height
        P = H * W
        zero = bcast(f32(0), V)
        rows = [(s + q) // W for q in range(V)]
        cols = [(s + q) % W for q in range(V)]
        total = self.bias(0, V)
        for kx in range(K):
            dx = kx - self.pl
            col_ok = [0 <= c + dx < W for c in cols]
            if not any(col_ok):
                continue
            column = None
            for ky in range(K):
                dy = ky - self.pt
                a = s + dy * W + dx
                keep = [0 <= y + dy < H and 0 <= a + q < P for q, y in enumerate(rows)]
                if not any(k and c for k, c in zip(keep, col_ok)):
                    continue
                at = min(max(a, 0), P - V)
                x = vload(self.Xf, row0 + at, V)
                pick = [a + q - at if k else V for q, k in enumerate(keep)]
                if pick != list(range(V)):
                    x = tirx.Shuffle([x, zero], pick)
                term = self.weight(0, 0, ky, kx, V) * x
                column = term if column is None else column + term
            if column is None:
                continue
            if not all(col_ok):
                column = tirx.Shuffle([column, zero], [q if ok else V for q, ok in enumerate(col_ok)])
            total = total + column
        vstore(self.Yf, out0 + s, self.epilogue.apply(total, V), V)

    def rows(self, rows, kys) -> None:
        """Output rows ``rows`` (expressions) that all take the kernel rows ``kys``, across the whole width."""
        W = self.shape.width
        if self.whole_rows or self.m:
            if self.shape.depthwise:
                self.vector_rows_expr(rows, kys)
            elif len(rows) == 1 and len(kys) == self.K and self.knobs.tap_loop:
                self.vector_row_tap_loop(rows[0])
            else:
                self.vector_rows(rows, kys)
            if not self.whole_rows:
                for ox in list(range(0, self.L)) + list(range(self.RE, self.OW)):
                    for oy in rows:
                        self.scalar(oy, ox, kys, _valid(ox, self.S, self.pl, self.K, W))
        else:  # a row narrower than a vector: scalar, taps checked per column
            with T.serial(0, self.OW) as ox:
                for oy in rows:
                    self.scalar(oy, ox, kys, None)

    def row_range(self, lo: int, hi: int) -> None:
        """Output rows ``lo … hi-1`` (static): border rows with their valid kernel rows, the interior in
        blocks of ``knobs.rows``."""
        K, S, H = self.K, self.S, self.shape.height
        TL, BR = max(self.TL, lo), min(self.BR, hi)
        for oy in range(lo, min(TL, hi)):
            self.rows([oy], _valid(oy, S, self.pt, K, H))
        if TL < BR:
            R = max(1, self.knobs.rows)
            blocks = (BR - TL) // R
            if blocks:
                with T.serial(0, blocks) as rb:
                    self.rows([TL + rb * R + r for r in range(R)], list(range(K)))
            if TL + blocks * R < BR:
                with T.serial(TL + blocks * R, BR) as oy:
                    self.rows([oy], list(range(K)))
        for oy in range(max(BR, TL, lo), hi):
            self.rows([oy], _valid(oy, S, self.pt, K, H))


def generate(shape: SpatialShape, epilogue: Epilogue, knobs: SpatialKnobs, lanes: int, name: str):
    """``(x, w, bias, y)``; ``w`` is ``[C_out, K·K]`` (depthwise) or ``[C_out, C_in·K·K]``."""
    N, CI, H, W, CO = shape.batch, shape.c_in, shape.height, shape.width, shape.c_out
    OH, OW = shape.out_height, shape.out_width
    if not supported(shape.kernel, shape.stride) or (shape.depthwise and CI != CO):
        raise ValueError(f"unsupported spatial convolution {shape}")
    if knobs.flat and not flat_plane_ok(shape):
        raise ValueError(f"no flattened-plane kernel for {shape}")
    OB = 1 if shape.depthwise else max(1, min(knobs.out_block, CO))
    groups = CO if shape.depthwise else -(-CO // OB)
    tasks = knobs.row_tasks if knobs.parallel and not shape.depthwise else 0
    runs = [(first, first + count) for first, count in row_ranges(OH, max(1, tasks))]
    taps = shape.kernel ** 2 * (1 if shape.depthwise else CI)
    with prim_func(name) as fn:
        X = buffer_arg("x", (N, CI, H, W))
        Wt = buffer_arg("w", (CO, taps))
        B = buffer_arg("bias", (CO,))
        Y = buffer_arg("y", (N, CO, OH, OW))
        Xf, Yf, Wf = flat(X, N * CI * H * W), flat(Y, N * CO * OH * OW), flat(Wt, CO * taps)
        with T.serial(0, N) as n:
            em = Emitter(shape, epilogue, knobs, lanes, Xf, Wf, B, Yf,
                         in_row=lambda ci, iy: (n * CI + ci) * (H * W) + iy * W,
                         out_row=lambda co, oy: (n * CO + co) * (OH * OW) + oy * OW)
            with parallel_or_serial(knobs.parallel)(0, groups * len(runs)) as task:
                # run-major: TVM gives each core a contiguous range of tasks, so each gets one run of every block
                g = task % groups if len(runs) > 1 else task

                # output channels of this group: [g·OB, g·OB + OB); the last group of a dense conv may be short
                def body(outs: int):
                    em.group(g * OB, outs, [g] if shape.depthwise else list(range(CI)))
                    if knobs.flat:
                        em.flat_plane(lanes)
                    else:
                        _chain(task // groups, [lambda lo=lo, hi=hi: em.row_range(lo, hi) for lo, hi in runs])

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


def _chain(index, emits: list, first: int = 0) -> None:
    """``emits[index]()`` for a runtime ``index``, as an if-else chain (the code of each is static)."""
    if first == len(emits) - 1:
        emits[first]()
        return
    with T.If(index == first):
        with T.Then():
            emits[first]()
        with T.Else():
            _chain(index, emits, first + 1)

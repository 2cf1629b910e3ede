"""Every TIR kernel of export/tvm/kernels against numpy, on odd shapes: 1, 7×7, 15×15 (odd, stride 2),
112×112 pixels, channel counts that are not multiples of the tile or of bsr, empty block rows, p = 0
and p = 1, the fused residual add, 5×5 depthwise, hard-swish; vector widths of NEON (4), AVX2 (8) and
AVX-512 (16) lanes (LLVM splits what the host lacks, so all run here)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

tvm = pytest.importorskip("tvm", reason="the tvm extra is not installed (pip install -e .[tvm])")

from export.tvm import bsr as bsr_format  # noqa: E402
from export.tvm.kernels import Epilogue, Kernel, gemv, pointwise, reduce, spatial  # noqa: E402

TARGET = None


def run(kernel: Kernel, knobs, lanes: int, arrays: list[np.ndarray]) -> np.ndarray:
    global TARGET
    if TARGET is None:
        from export.tvm import targets
        TARGET = targets.resolve("host", num_cores=2).target()
    func = kernel.build(knobs, lanes, "k")
    lib = tvm.compile(func, target=TARGET).jit()
    out = np.full(kernel.output(), np.nan, np.float32)
    tensors = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays] + [tvm.runtime.tensor(out)]
    lib["k"](*tensors)
    return tensors[-1].numpy()


def epilogue_ref(y, epi: Epilogue, residual=None):
    if epi.lower is not None:
        y = np.maximum(y, epi.lower)
    if epi.upper is not None:
        y = np.minimum(y, epi.upper)
    if epi.hswish:
        y = y * np.clip(y + 3, 0, 6) / 6
    if epi.hsigmoid:
        y = np.clip(y + 3, 0, 6) / 6
    if residual is not None:
        y = y + residual
    return y


def close(got, want, rtol=2e-6):
    assert not np.isnan(got).any(), "an output element was never written"
    scale = max(np.abs(want).max(), 1e-6)
    assert np.abs(got - want).max() <= rtol * scale * 10, np.abs(got - want).max() / scale


def block_sparse(rng, c_out, c_in, bsr, p):
    w = rng.standard_normal((c_out, c_in)).astype(np.float32)
    rows = -(-c_out // bsr)
    keep = rng.random((rows, c_in)) >= p
    if p >= 1:
        keep[:] = False
    keep[rows // 2] = False if rows > 2 else keep[rows // 2]  # an empty block row
    mask = np.repeat(keep, bsr, axis=0)[:c_out]
    return w * mask


EPILOGUES = [Epilogue(True, 0.0, 6.0), Epilogue(True, residual=True), Epilogue(True, hswish=True),
             Epilogue(False, 0.0, None)]


@pytest.mark.parametrize("c_in, pixels, c_out, bsr, p, lanes", [
    (16, 49, 24, 4, 0.5, 8),  # 7×7
    (8, 225, 13, 4, 0.7, 8),  # 15×15, C_out % bsr != 0
    (32, 12544, 20, 4, 0.9, 16),  # 112×112
    (12, 35, 30, 2, 0.0, 4),  # p = 0, bsr 2
    (16, 100, 16, 8, 1.0, 8),  # p = 1: bias only
    (5, 3, 9, 1, 0.5, 8),  # fewer pixels than a vector
    (24, 49, 37, 4, 0.0, 16),  # dense 7×7: also output-channel vectorised, C_out % 16 != 0
    (16, 196, 64, 4, 0.0, 8),  # dense 14×14
    (40, 25, 24, 4, 0.5, 16),  # 5×5: one tile of two vectors, the second shifted back over the first
])
def test_pointwise(rng, c_in, pixels, c_out, bsr, p, lanes):
    w = block_sparse(rng, c_out, c_in, bsr, p)
    m = bsr_format.to_bsr(w, bsr)
    height, width = (pixels, 1) if pixels % 7 else (7, pixels // 7)
    shape = pointwise.PointwiseShape(2, c_in, height, width, c_out, bsr, m.nnz)
    x = rng.standard_normal((2, c_in, height, width)).astype(np.float32)
    bias = np.zeros(shape.block_rows * bsr, np.float32)
    bias[:c_out] = rng.standard_normal(c_out)
    residual = rng.standard_normal((2, c_out, height, width)).astype(np.float32)
    consts = [m.data.reshape(-1) if m.nnz else np.zeros(bsr, np.float32),
              (m.indices * pixels).astype(np.int32) if m.nnz else np.zeros(1, np.int32), m.indptr, bias]
    for epi in EPILOGUES:
        kernel = Kernel("pointwise", shape, epi)
        want = epilogue_ref(np.einsum("oc,nchw->nohw", w.astype(np.float64), x) + bias[:c_out, None, None] * epi.bias, epi,
                            residual if epi.residual else None)
        chunked = [pointwise.PointwiseKnobs(v, g, "pixels", True, c, workers=w)
                   for v, g, c, w in ((3, 2, 8, 0), (2, 1, 5, 0), (6, 0, 3, 0), (3, 2, 8, 3), (2, 0, 5, 2))
                   if pointwise.chunkable(shape.pixels, lanes, v, w)]
        chunked += [pointwise.PointwiseKnobs(v, g, "pixels", True, workers=w) for v, g, w in ((3, 1, 3), (1, 0, 4))]
        chunked += [pointwise.PointwiseKnobs(v, g, "pixels", w > 0, lanes=lanes, workers=w, pack=True)
                    for v, g, w in ((3, 1, 0), (2, 4, 2), (1, 2, 3))]
        # the tasks split the block rows (3 tasks over 2-9 block rows: uneven runs, a partial last row)
        chunked += [pointwise.PointwiseKnobs(v, g, "pixels", True, workers=w, share="rows") for v, g, w in ((2, 1, 3), (3, 0, 2))]
        chunked += [pointwise.PointwiseKnobs(2, 1, "pixels", True, lanes=lanes, workers=3, pack=True, share="rows")]
        if pointwise.chunkable(shape.pixels, lanes, 3, 0):  # block-row tasks over chunks of input channels
            chunked += [pointwise.PointwiseKnobs(3, 1, "pixels", True, 5, workers=2, share="rows")]
        if pixels == 49 and bsr == 4:  # 1 pixel past the whole vectors: also computed apart, as a tail
            tails = [k for k in kernel.candidates(lanes, 2) if k.tail]
            assert {k.outer for k in tails} == {"rows", "pixels"}
            assert any(k.pack for k in tails) == any(k.pack for k in kernel.candidates(lanes, 2))
            assert any(k.workers and k.share == "pixels" for k in tails) and any(k.share == "rows" for k in tails)
            assert any(k.tail for k in kernel.candidates(lanes, 1))
            # partial sums through the output, the tail's too: one loop, pixel tasks, block-row tasks
            chunked += [pointwise.PointwiseKnobs(v, g, "pixels", True, 5, workers=w, share=share, tail=True)
                        for v, g, w, share in ((3, 2, 0, "pixels"), (1, 1, 2, "pixels"), (2, 4, 3, "rows"))]
        # every candidate, those with a tail or an input prefetch once per loop structure (they differ from
        # their twins only there)
        structures = {}
        candidates = kernel.candidates(lanes, 2)
        for k in candidates:
            structure = (k.tail, k.prefetch, k.outer, k.share, k.pack, k.workers, k.parallel)
            structures.setdefault(structure if k.tail or k.prefetch else k, k)
        prefetching = [k for k in candidates if k.prefetch]
        assert bool(prefetching) == (pixels <= pointwise.INPUT_PREFETCH_PIXELS)  # multi-core, small maps
        assert not any(k.pack for k in prefetching) and not any(k.prefetch for k in kernel.candidates(lanes, 1))
        for knobs in list(structures.values()) + [pointwise.PointwiseKnobs(3, 2, "pixels", True)] + chunked:
            inputs = [x, residual] if epi.residual else [x]
            close(run(kernel, knobs, lanes, inputs + kernel.constants_for(knobs, consts)), want)


@pytest.mark.parametrize("rows, workers", [(96, 2), (40, 2), (9, 3), (4, 3), (2, 4)])
def test_pointwise_row_ranges(rows, workers):
    """Runs over items (the pixel vectors the tasks split) cover each item once, in order, and differ by
    at most one item."""
    ranges = pointwise.row_ranges(rows, workers)
    assert [first for first, _ in ranges] == list(np.cumsum([0] + [count for _, count in ranges])[:-1])
    assert sum(count for _, count in ranges) == rows and len(ranges) == min(workers, rows)
    assert max(c for _, c in ranges) - min(c for _, c in ranges) <= 1


@pytest.mark.parametrize("per_row, tasks", [
    ([30, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], 2),  # one heavy row first: the first task takes it alone
    ([0, 0, 5, 5, 0, 5, 5, 0], 2), ([3] * 9, 3), ([0, 0, 0], 2), ([7, 2], 4),
])
def test_pointwise_rows_balanced_by_blocks(per_row, tasks):
    """Tasks splitting the block rows get as equal a number of stored blocks as whole rows allow,
    from bounds appended to ``indptr``: every row once, in order."""
    indptr = np.concatenate([[0], np.cumsum(per_row)]).astype(np.int32)
    bounds = pointwise.balanced_rows(indptr, tasks)
    assert len(bounds) == tasks + 1 and bounds[0] == 0 and bounds[-1] == len(per_row)
    assert np.all(np.diff(bounds) >= 0)
    blocks = np.diff(indptr[bounds])
    assert blocks.max() - blocks.min() <= max(per_row, default=0)
    if per_row == [30] + [1] * 10:
        assert list(bounds) == [0, 1, 11]  # equal runs of rows would give 35 and 5 blocks
    knobs = pointwise.PointwiseKnobs(2, 1, "pixels", True, workers=tasks, share="rows")
    shape = pointwise.PointwiseShape(1, 8, 7, 7, 4 * len(per_row), 4, int(indptr[-1]))
    consts = [np.zeros(4 * max(1, shape.nnz), np.float32), np.zeros(max(1, shape.nnz), np.int32), indptr,
              np.zeros(4 * len(per_row), np.float32)]
    np.testing.assert_array_equal(pointwise.constants_for(shape, knobs, consts)[2], np.concatenate([indptr, bounds]))
    chunked = dataclasses.replace(knobs, chunk=4)  # 2 chunks of the 8 input channels: the bounds follow their table
    got = pointwise.constants_for(shape, chunked, consts)[2]
    assert len(got) == 2 * (len(per_row) + 1) + tasks + 1  # (2 chunks × (rows + 1) starts, see chunk_major)
    np.testing.assert_array_equal(got[-(tasks + 1):], bounds)


@pytest.mark.parametrize("pixels, lanes, workers", [(196, 8, 2), (49, 8, 2), (12544, 16, 4), (3, 8, 4), (225, 4, 3)])
def test_pointwise_worker_ranges(pixels, lanes, workers):
    """The parallel tasks cover every pixel vector once, in order, and differ by at most one vector."""
    ranges = pointwise.worker_ranges(pixels, lanes, workers)
    total = -(-pixels // pointwise.plane_lanes(pixels, lanes))
    assert [first for first, _ in ranges] == list(np.cumsum([0] + [count for _, count in ranges])[:-1])
    assert sum(count for _, count in ranges) == total
    assert max(c for _, c in ranges) - min(c for _, c in ranges) <= 1 and len(ranges) == min(workers, total)


@pytest.mark.parametrize("c_in, c_out, bsr, p, lanes, spatial_", [
    (24, 37, 4, 0.5, 8, False), (40, 16, 16, 0.0, 8, True), (7, 5, 8, 1.0, 4, False), (33, 1000, 16, 0.0, 16, True),
    (9, 10, 2, 0.3, 8, False)])
def test_gemv(rng, c_in, c_out, bsr, p, lanes, spatial_):
    w = block_sparse(rng, c_out, c_in, bsr, p)
    m = bsr_format.to_bsr(w, bsr)
    shape = gemv.GemvShape(3, c_in, c_out, bsr, m.nnz, spatial_)
    x = rng.standard_normal(shape.inputs(Epilogue())[0]).astype(np.float32)
    bias = np.zeros(shape.block_rows * bsr, np.float32)
    bias[:c_out] = rng.standard_normal(c_out)
    consts = [m.data.reshape(-1) if m.nnz else np.zeros(bsr, np.float32),
              m.indices if m.nnz else np.zeros(1, np.int32), m.indptr, bias]
    residual = rng.standard_normal(shape.output()).astype(np.float32)
    for epi in (Epilogue(True, 0.0, None), Epilogue(True, hsigmoid=True), Epilogue(True, hswish=True),
                Epilogue(True, residual=True)):
        kernel = Kernel("gemv", shape, epi)
        want = epilogue_ref(x.reshape(3, c_in).astype(np.float64) @ w.T + bias[:c_out], epi,
                            residual.reshape(3, c_out) if epi.residual else None).reshape(shape.output())
        for knobs in kernel.candidates(lanes, 2):
            close(run(kernel, knobs, lanes, [x] + ([residual] if epi.residual else []) + consts), want)


def conv_ref(x, w, bias, shape: spatial.SpatialShape, epi: Epilogue):
    if shape.affine is not None:
        x = x * shape.affine[0] + shape.affine[1]
    pt, pl, pb, pr = shape.pads
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    K, S, OH, OW = shape.kernel, shape.stride, shape.out_height, shape.out_width
    y = np.zeros(shape.output())
    for ky in range(K):
        for kx in range(K):
            window = xp[:, :, ky:ky + S * (OH - 1) + 1:S, kx:kx + S * (OW - 1) + 1:S]
            if shape.depthwise:
                y += w.reshape(shape.c_out, K, K)[None, :, ky, kx, None, None] * window
            else:
                y += np.einsum("oc,nchw->nohw", w.reshape(shape.c_out, shape.c_in, K, K)[:, :, ky, kx], window)
    return epilogue_ref(y + bias[None, :, None, None], epi)


@pytest.mark.parametrize("size, kernel, stride, pads", [
    ((1, 1), 3, 1, (1, 1, 1, 1)), ((7, 7), 3, 1, (1, 1, 1, 1)), ((15, 15), 3, 2, (1, 1, 1, 1)),
    ((15, 15), 3, 2, (0, 0, 1, 1)), ((16, 16), 3, 2, (0, 0, 1, 1)), ((14, 14), 5, 2, (1, 1, 2, 2)),
    ((28, 20), 5, 1, (2, 2, 2, 2)), ((112, 112), 3, 1, (1, 1, 1, 1)), ((9, 40), 3, 2, (1, 1, 1, 1)),
    ((5, 3), 3, 1, (0, 0, 0, 0)), ((14, 14), 3, 1, (1, 1, 1, 1)), ((7, 7), 5, 1, (2, 2, 2, 2)),
    ((9, 72), 5, 2, (1, 1, 2, 2)),  # 5×5 stride 2 with interior tiles of 8 and 16 lanes
])
def test_depthwise(rng, size, kernel, stride, pads):
    channels = 3 if size == (112, 112) else 5
    shape = spatial.SpatialShape(2, channels, *size, channels, kernel, stride, pads, depthwise=True)
    x = rng.standard_normal((2, channels, *size)).astype(np.float32)
    w = rng.standard_normal((channels, kernel * kernel)).astype(np.float32)
    b = rng.standard_normal(channels).astype(np.float32)
    for epi in (Epilogue(True, 0.0, 6.0), Epilogue(True, hswish=True)):
        kernel_ = Kernel("depthwise", shape, epi)
        want = conv_ref(x, w, b, shape, epi)
        for lanes, knobs in zip((4, 8, 16, 8), kernel_.candidates(8, 2)[1:] if epi.hswish else kernel_.candidates(8, 2)):
            close(run(kernel_, knobs, lanes, [x, w, b]), want)


@pytest.mark.parametrize("size, kernel, pads, lanes", [
    ((7, 7), 3, (1, 1, 1, 1), 8), ((14, 14), 3, (1, 1, 1, 1), 8), ((5, 5), 3, (1, 1, 1, 1), 16),
    ((7, 7), 5, (2, 2, 2, 2), 8), ((3, 5), 3, (1, 1, 1, 1), 4), ((2, 1), 3, (1, 1, 1, 1), 8),
    ((15, 15), 5, (2, 2, 2, 2), 16), ((1, 9), 3, (1, 1, 1, 1), 8),
])
def test_depthwise_flattened_plane(rng, size, kernel, pads, lanes):
    """The flattened-plane depthwise (vectors across row ends, masked taps, clamped reads at the
    plane's ends, planes narrower than a vector) equals numpy, and is offered only where it applies."""
    channels = 6
    shape = spatial.SpatialShape(2, channels, *size, channels, kernel, 1, pads, depthwise=True)
    x = rng.standard_normal((2, channels, *size)).astype(np.float32)
    w = rng.standard_normal((channels, kernel * kernel)).astype(np.float32)
    b = rng.standard_normal(channels).astype(np.float32)
    for epi in (Epilogue(True, 0.0, 6.0), Epilogue(True, hswish=True)):
        kernel_ = Kernel("depthwise", shape, epi)
        flat = [k for k in kernel_.candidates(lanes, 2) if k.flat]
        assert flat
        for knobs in flat:  # parallel and, for small work, serial
            close(run(kernel_, knobs, lanes, [x, w, b]), conv_ref(x, w, b, shape, epi))
    for other in (spatial.SpatialShape(1, 4, 14, 14, 4, 3, 2, (0, 0, 1, 1), depthwise=True),  # stride 2
                  spatial.SpatialShape(1, 4, 28, 28, 4, 3, 1, (1, 1, 1, 1), depthwise=True),  # 784 pixels
                  spatial.SpatialShape(1, 4, 7, 7, 4, 3, 1, (0, 0, 0, 0), depthwise=True)):  # 5×5 output
        assert not any(k.flat for k in Kernel("depthwise", other, Epilogue(True)).candidates(8, 2))


@pytest.mark.parametrize("left, right, width, lanes", [
    (1, 13, 14, 8), (1, 6, 7, 4), (1, 111, 112, 8), (0, 55, 56, 8), (2, 26, 28, 8), (1, 15, 16, 16),
    (3, 9, 12, 2), (0, 8, 8, 8), (1, 4, 5, 4),
])
def test_depthwise_row_plan_covers_every_column(left, right, width, lanes):
    """Border tiles and the interior loop cover the row exactly: every column once or more, nothing
    outside it, interior-loop tiles only on columns that take every tap."""
    head, start, middle, tail = spatial.row_plan(left, right, width, lanes)
    covered = set()
    for x0 in head + tail:
        assert 0 <= x0 <= width - lanes
        covered |= set(range(x0, x0 + lanes))
    assert middle == 0 or left <= start and start + middle * lanes <= right
    covered |= set(range(start, start + middle * lanes))
    assert covered == set(range(width))
    assert len(head) + len(tail) + middle == -(-width // lanes) or left > lanes  # no tile more than needed


@pytest.mark.parametrize("lanes", [2, 4, 8, 16])
def test_stride2_lane_order_is_what_shufps_leaves(lanes):
    """Lane j of a stride-2 tile holds output column order[j]: x86's in-lane ``shufps`` of two vectors
    a, b (per 128-bit chunk: a0 a2 b0 b2) takes even element 2·order[j] of a ++ b; 4 lanes and fewer
    keep the natural order."""
    order = spatial.lane_order(lanes, 2)
    assert sorted(order) == list(range(lanes)) and spatial.lane_order(lanes, 1) == list(range(lanes))
    if lanes < 8:
        assert order == list(range(lanes))
        return
    a, b = np.arange(lanes), np.arange(lanes, 2 * lanes)
    shufps = np.concatenate([[a[4 * c], a[4 * c + 2], b[4 * c], b[4 * c + 2]] for c in range(lanes // 4)])
    assert list(shufps) == [2 * o for o in order]


@pytest.mark.parametrize("c_out, size, stride, pads, affine", [
    (32, (32, 32), 2, (0, 0, 1, 1), None), (13, (15, 17), 2, (1, 1, 1, 1), (1 / 127.5, -1.0)),
    (8, (9, 9), 1, (1, 1, 1, 1), (2.0, 0.5)),
])
def test_stem_conv(rng, c_out, size, stride, pads, affine):
    shape = spatial.SpatialShape(1, 3, *size, c_out, 3, stride, pads, depthwise=False, affine=affine)
    x = rng.standard_normal((1, 3, *size)).astype(np.float32)
    w = rng.standard_normal((c_out, 27)).astype(np.float32)
    b = rng.standard_normal(c_out).astype(np.float32)
    kernel = Kernel("conv", shape, Epilogue(True, hswish=True))
    want = conv_ref(x, w, b, shape, kernel.epilogue)
    candidates = kernel.candidates(8, 2)
    assert any(k.tap_loop for k in candidates) and any(not k.tap_loop for k in candidates)
    # blocks of output channels that do not share the channels evenly among 2 cores split the rows too
    assert {k.out_block for k in candidates if k.row_tasks == 2} == {
        k.out_block for k in candidates if c_out % (2 * k.out_block)} != set()
    for i, knobs in enumerate(candidates):
        close(run(kernel, knobs, (16, 8, 4)[i % 3], [x, w, b]), want)


@pytest.mark.parametrize("size", [(1, 1), (1, 7), (7, 7), (14, 14)])
def test_pool_scale_and_transpose(rng, size):
    x = rng.standard_normal((2, 11, *size)).astype(np.float32)
    s = rng.standard_normal((2, 11, 1, 1)).astype(np.float32)
    for lanes in (4, 8):
        close(run(Kernel("pool", reduce.PoolShape(2, 11, *size)), reduce.PlaneKnobs(True), lanes, [x]),
              x.mean(axis=(2, 3), keepdims=True))
        close(run(Kernel("scale", reduce.ScaleShape(2, 11, *size)), reduce.PlaneKnobs(True), lanes, [x, s]), x * s)
        nhwc = rng.standard_normal((2, *size, 3)).astype(np.float32)
        got = run(Kernel("to_nchw", reduce.ToNchwShape(2, 3, *size)), reduce.PlaneKnobs(True), lanes, [nhwc])
        np.testing.assert_array_equal(got, nhwc.transpose(0, 3, 1, 2))


@pytest.mark.parametrize("c_in, size, c, bsr, p, kernel, stride, pads, lanes", [
    (8, (15, 15), 13, 4, 0.5, 3, 2, (1, 1, 1, 1), 8),  # odd map, stride 2, partial block row
    (8, (14, 14), 16, 4, 0.0, 3, 1, (1, 1, 1, 1), 16),  # dense pointwise
    (5, (20, 17), 9, 4, 1.0, 5, 1, (2, 2, 2, 2), 4),  # 5×5, p = 1: the depthwise sees bias-only planes
    (6, (16, 16), 8, 2, 0.7, 3, 2, (0, 0, 1, 1), 16),  # Keras' asymmetric stride-2 padding
    (7, (9, 9), 18, 4, 1.0, 5, 1, (2, 2, 2, 2), 16),  # small map, p = 1: channel tasks, flattened 5×5 planes
])
def test_fused_pointwise_depthwise(rng, c_in, size, c, bsr, p, kernel, stride, pads, lanes):
    """The fused pair equals pointwise → depthwise in numpy for every band size it offers (first,
    middle and last bands, windows clamped at both image edges) and, on maps of at most 256 pixels,
    for its channel tasks (each task's run of block rows, balanced by stored blocks, the last one
    partial when C is not a multiple of bsr)."""
    from export.tvm.kernels import fused

    w = block_sparse(rng, c, c_in, bsr, p)
    m = bsr_format.to_bsr(w, bsr)
    pw = pointwise.PointwiseShape(1, c_in, *size, c, bsr, m.nnz)
    dw = spatial.SpatialShape(1, c, *size, c, kernel, stride, pads, depthwise=True)
    pw_epi, dw_epi = Epilogue(True, hswish=True), Epilogue(True, 0.0, 6.0)
    shape = fused.FusedShape(pw, pw_epi, dw)
    x = rng.standard_normal((1, c_in, *size)).astype(np.float32)
    pw_bias = np.zeros(pw.block_rows * bsr, np.float32)
    pw_bias[:c] = rng.standard_normal(c)
    wd = rng.standard_normal((c, kernel * kernel)).astype(np.float32)
    bd = rng.standard_normal(c).astype(np.float32)
    consts = [m.data.reshape(-1) if m.nnz else np.zeros(bsr, np.float32),
              (m.indices * pw.pixels).astype(np.int32) if m.nnz else np.zeros(1, np.int32), m.indptr, pw_bias, wd, bd]
    expanded = epilogue_ref(np.einsum("oc,nchw->nohw", w.astype(np.float64), x) + pw_bias[:c, None, None], pw_epi)
    want = conv_ref(expanded.astype(np.float32), wd, bd, dw, dw_epi)
    knobs = fused.candidates(shape, lanes, 2)
    assert {k.band for k in knobs if not k.tasks} >= ({2, 4} if size[0] > 9 else set())
    assert any(k.tasks == 2 for k in knobs) == (pw.pixels <= 256)
    assert any(k.dw_flat for k in knobs) == (pw.pixels <= 256 and stride == 1)
    one_core = [k for k in fused.candidates(shape, lanes, 1) if k.tasks]
    assert {k.tasks for k in one_core} == {1} and not any(k.parallel for k in one_core)
    assert any(k.prefetch for k in knobs) and not any(k.prefetch for k in fused.candidates(shape, lanes, 1))
    # an input prefetch changes no value: one prefetching candidate of each loop structure (bands, tasks)
    knobs = [k for k in knobs if not k.prefetch] + list({bool(k.tasks): k for k in knobs if k.prefetch}.values())
    knobs += one_core
    kernel_ = Kernel("fused", shape, dw_epi)
    for k in knobs:
        close(run(kernel_, k, lanes, [x] + kernel_.constants_for(k, consts)), want)


def test_fused_tasks_share_the_pairs_work():
    """The tasks' block-row bounds balance the pair's multiply-adds, not only the pointwise blocks: with
    the blocks all in the first rows, the depthwise work of the others still counts."""
    from export.tvm.kernels import fused

    pw = pointwise.PointwiseShape(1, 16, 10, 10, 64, 4, 32)
    dw = spatial.SpatialShape(1, 64, 10, 10, 64, 3, 1, (1, 1, 1, 1), depthwise=True)
    shape = fused.FusedShape(pw, Epilogue(True, 0.0, 6.0), dw)
    indptr = np.array([0, 8, 16, 24, 32] + [32] * 12, np.int32)  # 16 block rows, blocks in the first 4
    bounds = fused.task_bounds(shape, indptr, 2)
    work = indptr * 4 * 100 + np.arange(17) * 4 * 100 * 9
    shares = np.diff(work[bounds])
    assert bounds[0] == 0 and bounds[-1] == 16 and shares.max() - shares.min() <= 4 * 100 * (8 + 9)
    assert list(pointwise.balanced_rows(indptr, 2)) == [0, 2, 16]  # blocks alone: 2 rows against 14


def test_pointwise_chunked_tails_offered():
    """A wide 7×7 layer (its input slab past L1, one pixel past the whole vectors) gets candidates with
    chunks and a tail together, in one loop and, with 2 cores, in block-row tasks."""
    shape = pointwise.PointwiseShape(1, 1024, 7, 7, 1024, 4, 131072)
    one = [k for k in pointwise.candidates(shape, 16, 1) if k.chunk and k.tail]
    two = [k for k in pointwise.candidates(shape, 16, 2) if k.chunk and k.tail]
    assert one and all(pointwise.chunks(shape, k) == 8 for k in one)
    assert {k.share for k in two} == {"pixels", "rows"}


def test_pointwise_chunk_major(rng):
    """A chunked kernel's blocks in the order it reads them: chunk by chunk, each chunk's run of every
    block row in turn; the table's entries bound each run, which holds exactly that row's blocks of
    that chunk's input channels with their weights, in their order."""
    c_in, bsr, rows, pixels = 10, 4, 5, 6
    w = block_sparse(rng, rows * bsr, c_in, bsr, 0.5)
    m = bsr_format.to_bsr(w, bsr)
    shape = pointwise.PointwiseShape(1, c_in, 2, 3, rows * bsr, bsr, m.nnz)
    knobs = pointwise.PointwiseKnobs(2, 1, "pixels", False, 4)  # chunks of 4, 4 and 2 input channels
    data, offsets, table = pointwise.chunk_major(shape, knobs, m.data.reshape(-1), (m.indices * pixels).astype(np.int32),
                                                 m.indptr)
    table = table.reshape(3, rows + 1)
    assert table[0, 0] == 0 and table[-1, -1] == m.nnz and np.all(np.diff(table.reshape(-1)) >= 0)
    for c in range(3):
        for rb in range(rows):
            lo, hi = m.indptr[rb], m.indptr[rb + 1]
            keep = [k for k in range(lo, hi) if c * 4 <= m.indices[k] < c * 4 + 4]
            a, b = table[c, rb], table[c, rb + 1]
            np.testing.assert_array_equal(offsets[a:b], m.indices[keep] * pixels)
            np.testing.assert_array_equal(data.reshape(-1, bsr)[a:b], m.data.reshape(-1, bsr)[keep])
        if c + 1 < 3:
            assert table[c, -1] == table[c + 1, 0]


def test_pointwise_row_tasks_offered_up_to_14x14():
    """With 2 cores, maps up to ROW_SHARE_PIXELS get block-row task candidates (14×14 included, and 5×5,
    one tile: chunked too); a 28×28 map and 1 core do not."""
    def shares(h, cores):
        shape = pointwise.PointwiseShape(1, 512, h, h, 512, 4, 32768)
        return {k.share for k in pointwise.candidates(shape, 16, cores)}
    assert "rows" in shares(14, 2) and "rows" in shares(7, 2) and "rows" in shares(5, 2)
    five = pointwise.PointwiseShape(1, 512, 5, 5, 512, 4, 32768)
    assert any(k.chunk and k.share == "rows" for k in pointwise.candidates(five, 16, 2))
    assert shares(28, 2) == {"pixels"} and shares(14, 1) == {"pixels"}

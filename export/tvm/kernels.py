"""The BSR 1×1-convolution kernel, written in TIR (TVMScript) here: TVM 0.27 has no sparse ops.

``Y[n, o, p] = act(bias[o] + sum over stored blocks k of block row o // bsr: data[k, o % bsr] ·
X[n, indices[k], p])`` for NCHW tensors (p runs over the H·W pixels). One loop nest per layer shape:

- the loop over a block row's stored blocks is data-dependent (``indptr``), so MetaSchedule cannot
  tile it; these kernels are scheduled by hand and tuned over their knobs (:class:`Knobs`);
- pixels are processed in tiles of ``pixel_tile`` (a multiple of the target's vector lanes), the
  ``bsr`` output rows of a tile are unrolled, and their accumulators start from the bias and end in
  the fused activation (ReLU / ReLU6 clip) before a single store;
- a partial last block row (C_out % bsr) is guarded and empty block rows give bias-only outputs;
  when pixel_tile does not divide H·W, the last tile starts at H·W − pixel_tile, overlapping the one
  before (its pixels are recomputed and written again with the same values), so every pixel stays
  vectorized; only a layer with fewer pixels than one tile takes a scalar loop.
"""
from __future__ import annotations

import dataclasses
import functools

from onexn_tf.errors import InvalidArgument

PARALLEL = ("rows", "pixels", "none")


@dataclasses.dataclass(frozen=True)
class ConvShape:
    batch: int
    c_in: int
    height: int
    width: int
    c_out: int
    bsr: int
    nnz: int

    @property
    def pixels(self) -> int:
        return self.height * self.width

    @property
    def block_rows(self) -> int:
        return -(-self.c_out // self.bsr)


@dataclasses.dataclass(frozen=True)
class Epilogue:
    """What follows the convolution and is fused into the kernel."""

    bias: bool = True
    lower: float | None = None  # ReLU: 0; ReLU6: 0
    upper: float | None = None  # ReLU6: 6


@dataclasses.dataclass(frozen=True)
class Knobs:
    pixel_tile: int = 16
    parallel: str = "rows"

    def __post_init__(self):
        if self.pixel_tile < 1:
            raise InvalidArgument(f"pixel_tile={self.pixel_tile} must be >= 1")
        if self.parallel not in PARALLEL:
            raise InvalidArgument(f"parallel={self.parallel!r} is not allowed: choose one of {PARALLEL}")


def candidate_knobs(shape: ConvShape, lanes: int, num_cores: int = 2) -> list[Knobs]:
    """The search space for one layer: pixel tiles of 1, 2 and 4 vectors; block rows or pixel tiles in
    parallel (on one core: no parallel loop)."""
    tiles = sorted({lanes * m for m in (1, 2, 4) if lanes * m <= max(lanes, shape.pixels)})
    layouts = ("none",) if num_cores == 1 else ("rows", "pixels")
    return [Knobs(tile, parallel) for tile in tiles for parallel in layouts]


def bsr_conv1x1(shape: ConvShape, epilogue: Epilogue = Epilogue(), knobs: Knobs = Knobs(), name: str = "bsr_conv1x1"):
    """A TIR PrimFunc ``(X, data, indices, indptr, bias, Y)`` computing one BSR 1×1 convolution.

    Marked scheduled and opaque: MetaSchedule must not re-tune it and FuseOps must not fuse into it.
    """
    import tvm

    PT = min(knobs.pixel_tile, shape.pixels)
    generic = _parsed_kernel(shape.bsr, epilogue, PT, knobs.parallel, shape.c_out % shape.bsr != 0)
    params = list(generic.params)
    dims = [(shape.batch, shape.c_in, shape.height, shape.width), (max(shape.nnz, 1), shape.bsr), (max(shape.nnz, 1),),
            (shape.block_rows + 1,), (shape.block_rows * shape.bsr,), (shape.batch, shape.c_out, shape.height, shape.width)]
    dtypes = ["float32", "float32", "int32", "int32", "float32", "float32"]
    buffers = {param: tvm.tirx.decl_buffer(dim, dtype, name=str(param.name))
               for param, dim, dtype in zip(params, dims, dtypes)}
    return generic.specialize(buffers).with_attr("global_symbol", name)


@functools.lru_cache(maxsize=64)
def _parsed_kernel(bsr: int, epilogue: Epilogue, PT: int, parallel: str, partial: bool):
    """The kernel with symbolic sizes, parsed once per structure: parsing TVMScript costs ~0.4 s,
    specializing the sizes (:func:`bsr_conv1x1`) almost nothing."""
    from tvm.script import tirx as T

    rows_parallel = parallel == "rows"
    pixels_parallel = parallel == "pixels"
    has_bias, lower, upper = epilogue.bias, epilogue.lower, epilogue.upper

    def activation(value):  # evaluated while parsing: the fused epilogue as a TIR expression
        if lower is not None:
            value = T.max(value, T.float32(lower))
        if upper is not None:
            value = T.min(value, T.float32(upper))
        return value

    @T.macro
    def _tile(acc, Xf, Yf, data, indices, indptr, bias, n, rb, pt, C_in, C_out, P):
        for r in T.unroll(bsr):
            for v in T.vectorized(PT):
                acc[r, v] = bias[rb * bsr + r] if has_bias else T.float32(0)
        for k in T.serial(indptr[rb], indptr[rb + 1]):
            for r in T.unroll(bsr):
                for v in T.vectorized(PT):
                    acc[r, v] = acc[r, v] + data[k, r] * Xf[(n * C_in + indices[k]) * P + T.min(pt * PT, P - PT) + v]
        for r in T.unroll(bsr):
            if partial:
                if rb * bsr + r < C_out:
                    for v in T.vectorized(PT):
                        Yf[(n * C_out + rb * bsr + r) * P + T.min(pt * PT, P - PT) + v] = activation(acc[r, v])
            else:
                for v in T.vectorized(PT):
                    Yf[(n * C_out + rb * bsr + r) * P + T.min(pt * PT, P - PT) + v] = activation(acc[r, v])

    @T.prim_func
    def kernel(x: T.handle, d: T.handle, i: T.handle, p: T.handle, b: T.handle, y: T.handle):
        T.func_attr({"global_symbol": "bsr_conv1x1", "tirx.noalias": True, "tirx.is_scheduled": True,
                     "op_pattern": 8})
        N, C_in, H, W, C_out = T.int32(), T.int32(), T.int32(), T.int32(), T.int32()
        R1, RB, nnz = T.int32(), T.int32(), T.int32()  # block rows + 1, block rows * bsr, stored blocks
        X = T.match_buffer(x, (N, C_in, H, W), "float32")
        data = T.match_buffer(d, (nnz, bsr), "float32")
        indices = T.match_buffer(i, (nnz,), "int32")
        indptr = T.match_buffer(p, (R1,), "int32")
        bias = T.match_buffer(b, (RB,), "float32")
        Y = T.match_buffer(y, (N, C_out, H, W), "float32")
        Xf = T.decl_buffer((N * C_in * H * W,), "float32", data=X.data)
        Yf = T.decl_buffer((N * C_out * H * W,), "float32", data=Y.data)
        # the last tile overlaps its neighbour when PT does not divide H·W
        for n in range(N):
            if rows_parallel:
                for rb in T.parallel(R1 - 1):
                    acc = T.alloc_buffer((bsr, PT), "float32", scope="local")
                    for pt in range((H * W + PT - 1) // PT):
                        _tile(acc, Xf, Yf, data, indices, indptr, bias, n, rb, pt, C_in, C_out, H * W)
            elif pixels_parallel:
                for pt in T.parallel((H * W + PT - 1) // PT):
                    acc = T.alloc_buffer((bsr, PT), "float32", scope="local")
                    for rb in range(R1 - 1):
                        _tile(acc, Xf, Yf, data, indices, indptr, bias, n, rb, pt, C_in, C_out, H * W)
            else:
                for rb in range(R1 - 1):
                    acc = T.alloc_buffer((bsr, PT), "float32", scope="local")
                    for pt in range((H * W + PT - 1) // PT):
                        _tile(acc, Xf, Yf, data, indices, indptr, bias, n, rb, pt, C_in, C_out, H * W)

    return kernel

"""Matrix × vector: a 1×1 convolution on a 1×1 map (squeeze-excite, a classifier head) or a MatMul.

With one pixel there is nothing to vectorise over but the output channels, so the vector is a
block row: ``bsr`` consecutive output channels, whose weights for one input channel are contiguous
in the BSR data. Per stored block: one vector load, one broadcast input, one FMA; two accumulators
alternate so consecutive FMAs do not wait on each other. A dense layer is stored with blocks of
two vectors' worth of output channels. Block rows run in parallel.
"""
from __future__ import annotations

import dataclasses

from tvm.tirx.script import builder as T

from export.tvm.kernels.tir import (Epilogue, bcast, buffer_arg, f32, flat, parallel_or_serial, prim_func, registers,
                                    vload, vstore)


@dataclasses.dataclass(frozen=True)
class GemvShape:
    batch: int
    c_in: int
    c_out: int
    bsr: int
    nnz: int
    spatial: bool = False  # a 1×1 convolution: tensors [N, C, 1, 1] (else a MatMul: [N, C])

    @property
    def block_rows(self) -> int:
        return -(-self.c_out // self.bsr)

    def inputs(self, epilogue: Epilogue) -> list[tuple]:
        x = (self.batch, self.c_in) + ((1, 1) if self.spatial else ())
        return [x, self.output()] if epilogue.residual else [x]

    def constants(self) -> list[tuple]:
        return [(max(self.nnz, 1) * self.bsr,), (max(self.nnz, 1),), (self.block_rows + 1,),
                (self.block_rows * self.bsr,)]

    def output(self) -> tuple:
        return (self.batch, self.c_out) + ((1, 1) if self.spatial else ())

    def macs(self) -> int:
        return self.batch * self.nnz * self.bsr


@dataclasses.dataclass(frozen=True)
class GemvKnobs:
    parallel: bool = True


def candidates(shape: GemvShape, lanes: int, cores: int) -> list[GemvKnobs]:
    return [GemvKnobs(True), GemvKnobs(False)] if cores > 1 else [GemvKnobs(False)]


def default_knobs(shape: GemvShape, lanes: int, cores: int) -> GemvKnobs:
    return GemvKnobs(cores > 1 and shape.nnz * shape.bsr > 1 << 16)


def dense_block(lanes: int) -> int:
    """Block height for a dense matrix-vector product: two vectors of output channels."""
    return 2 * lanes


def generate(shape: GemvShape, epilogue: Epilogue, knobs: GemvKnobs, lanes: int, name: str):
    """``(x, [residual], data, indices, indptr, bias, y)``: x ``[N, C_in]``, y ``[N, C_out]`` (or with
    trailing 1×1 dims)."""
    N, CI, CO, R = shape.batch, shape.c_in, shape.c_out, shape.bsr
    rows = shape.block_rows
    with prim_func(name) as fn:
        X = buffer_arg("x", shape.inputs(epilogue)[0])
        Res = buffer_arg("residual", shape.output()) if epilogue.residual else None
        D = buffer_arg("data", (max(shape.nnz, 1) * R,))
        I = buffer_arg("indices", (max(shape.nnz, 1),), "int32")
        IP = buffer_arg("indptr", (rows + 1,), "int32")
        B = buffer_arg("bias", (rows * R,))
        Y = buffer_arg("y", shape.output())
        Xf, Yf = flat(X, N * CI), flat(Y, N * CO)
        Rf = flat(Res, N * CO) if Res is not None else None
        with T.serial(0, N) as n:
            with parallel_or_serial(knobs.parallel)(0, rows) as rb:
                acc = registers(1, 2 * R)[0]
                vstore(acc, 0, vload(B, rb * R, R) if epilogue.bias else bcast(f32(0), R), R)
                vstore(acc, R, bcast(f32(0), R), R)
                start, stop = IP[rb], IP[rb + 1]
                with T.serial(0, (stop - start) // 2) as q:
                    for half in range(2):
                        k = start + 2 * q + half
                        product = vload(D, k * R, R) * bcast(Xf[n * CI + I[k]], R)
                        vstore(acc, half * R, vload(acc, half * R, R) + product, R)
                with T.If((stop - start) % 2 == 1):
                    with T.Then():
                        k = stop - 1
                        vstore(acc, 0, vload(acc, 0, R) + vload(D, k * R, R) * bcast(Xf[n * CI + I[k]], R), R)
                residual = vload(Rf, n * CO + rb * R, R) if Rf is not None else None
                value = epilogue.apply(vload(acc, 0, R) + vload(acc, R, R), R, residual)
                if CO % R == 0:
                    vstore(Yf, n * CO + rb * R, value, R)
                else:
                    with T.If(rb < rows - 1):
                        with T.Then():
                            vstore(Yf, n * CO + rb * R, value, R)
                        with T.Else():
                            for r in range(CO % R):
                                at = n * CO + rb * R + r
                                res = Rf[at] if Rf is not None else None
                                T.buffer_store(Yf, epilogue.apply(acc[r] + acc[R + r], 1, res), [at])
    return fn.func

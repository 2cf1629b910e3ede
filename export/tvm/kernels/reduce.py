"""Small NCHW kernels around the convolutions: global average pooling, the squeeze-excite channel
scale, and the NHWC → NCHW transpose of a network input with a few channels."""
from __future__ import annotations

import dataclasses

from tvm import tirx
from tvm.tirx.script import builder as T

from export.tvm.kernels.tir import (Epilogue, bcast, buffer_arg, f32, flat, lane_sum, parallel_or_serial, prim_func,
                                    registers, vload, vstore)


@dataclasses.dataclass(frozen=True)
class PlaneShape:
    """``batch × channels`` planes of ``height × width`` values."""
    batch: int
    channels: int
    height: int
    width: int

    @property
    def pixels(self) -> int:
        return self.height * self.width

    def planes(self) -> tuple:
        return (self.batch, self.channels, self.height, self.width)

    def constants(self) -> list[tuple]:
        return []


@dataclasses.dataclass(frozen=True)
class PoolShape(PlaneShape):
    def inputs(self, epilogue: Epilogue) -> list[tuple]:
        return [self.planes()]

    def output(self) -> tuple:
        return (self.batch, self.channels, 1, 1)


@dataclasses.dataclass(frozen=True)
class ScaleShape(PlaneShape):
    def inputs(self, epilogue: Epilogue) -> list[tuple]:
        return [self.planes(), (self.batch, self.channels, 1, 1)]

    def output(self) -> tuple:
        return self.planes()


@dataclasses.dataclass(frozen=True)
class ToNchwShape(PlaneShape):
    def inputs(self, epilogue: Epilogue) -> list[tuple]:
        return [(self.batch, self.height, self.width, self.channels)]

    def output(self) -> tuple:
        return self.planes()


@dataclasses.dataclass(frozen=True)
class PlaneKnobs:
    parallel: bool = True


def candidates(shape: PlaneShape, lanes: int, cores: int) -> list[PlaneKnobs]:
    return [PlaneKnobs(True), PlaneKnobs(False)] if cores > 1 else [PlaneKnobs(False)]


def default_knobs(shape: PlaneShape, lanes: int, cores: int) -> PlaneKnobs:
    return PlaneKnobs(cores > 1 and shape.batch * shape.channels * shape.pixels > 1 << 15)


def _plane_vectors(shape: PlaneShape, lanes: int) -> tuple:
    """``(N, C, P, V, full)``: planes of P pixels walked in ``full`` vectors of V lanes (then a scalar tail)."""
    V = lanes if shape.pixels >= lanes else 1
    return shape.batch, shape.channels, shape.pixels, V, shape.pixels // V


def pool(shape: PoolShape, epilogue: Epilogue, knobs: PlaneKnobs, lanes: int, name: str):
    """``(x [N, C, H, W], y [N, C, 1, 1])``: the mean of every plane."""
    N, C, P, V, full = _plane_vectors(shape, lanes)
    with prim_func(name) as fn:
        X = buffer_arg("x", shape.inputs(epilogue)[0])
        Y = buffer_arg("y", shape.output())
        Xf, Yf = flat(X, N * C * P), flat(Y, N * C)
        with parallel_or_serial(knobs.parallel)(0, N * C) as nc:
            acc = registers(1, V)[0]
            vstore(acc, 0, bcast(f32(0), V), V)
            with T.serial(0, full) as t:
                vstore(acc, 0, vload(acc, 0, V) + vload(Xf, nc * P + t * V, V), V)
            total = lane_sum(vload(acc, 0, V), V)
            for p in range(full * V, P):
                total = total + Xf[nc * P + p]
            T.buffer_store(Yf, epilogue.apply(total * f32(1.0 / P), 1), [nc])
    return fn.func


def scale(shape: ScaleShape, epilogue: Epilogue, knobs: PlaneKnobs, lanes: int, name: str):
    """``(x [N, C, H, W], s [N, C, 1, 1], y [N, C, H, W])``: every plane times its channel's scale."""
    N, C, P, V, full = _plane_vectors(shape, lanes)
    with prim_func(name) as fn:
        X, S = (buffer_arg(n, s) for n, s in zip(("x", "s"), shape.inputs(epilogue)))
        Y = buffer_arg("y", shape.output())
        Xf, Sf, Yf = flat(X, N * C * P), flat(S, N * C), flat(Y, N * C * P)
        with parallel_or_serial(knobs.parallel)(0, N * C) as nc:
            s = Sf[nc]
            with T.serial(0, full) as t:
                vstore(Yf, nc * P + t * V, vload(Xf, nc * P + t * V, V) * bcast(s, V), V)
            for p in range(full * V, P):
                T.buffer_store(Yf, Xf[nc * P + p] * s, [nc * P + p])
    return fn.func


def to_nchw(shape: ToNchwShape, epilogue: Epilogue, knobs: PlaneKnobs, lanes: int, name: str):
    """``(x [N, H, W, C], y [N, C, H, W])`` for a few channels: C vector loads cover V pixels, one shuffle
    per channel picks its lanes."""
    N, C, P, V, full = _plane_vectors(shape, lanes)
    with prim_func(name) as fn:
        X = buffer_arg("x", shape.inputs(epilogue)[0])
        Y = buffer_arg("y", shape.output())
        Xf, Yf = flat(X, N * C * P), flat(Y, N * C * P)
        with T.serial(0, N) as n:
            with parallel_or_serial(knobs.parallel)(0, full) as t:
                base = n * (P * C) + t * (V * C)
                parts = [vload(Xf, base + i * V, V) for i in range(C)]
                for c in range(C):
                    if V == 1:
                        value = Xf[base + c]
                    else:
                        value = tirx.Shuffle(parts, [p * C + c for p in range(V)])
                    vstore(Yf, (n * C + c) * P + t * V, value, V)
            for p in range(full * V, P):
                for c in range(C):
                    T.buffer_store(Yf, Xf[n * (P * C) + p * C + c], [(n * C + c) * P + p])
    return fn.func

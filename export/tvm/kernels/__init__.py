"""Our TIR kernels for every operation of a pruned MobileNet in NCHW (TVM 0.27 has no sparse ops, and
its default schedules leave depthwise and stem convolutions several times slower than onnxruntime).

Each kind has a shape (what the kernel is generated for), knobs (how: tile sizes, loop order,
parallel loop) with a small candidate list the knob search times, and a generator. A :class:`Kernel`
is one operation of a graph: kind, shape and fused epilogue.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from export.tvm.kernels import fused, gemv, pointwise, reduce, spatial
from export.tvm.kernels.tir import Epilogue


@dataclasses.dataclass(frozen=True)
class Kind:
    generate: Callable  # (shape, epilogue, knobs, lanes, name) -> PrimFunc
    candidates: Callable  # (shape, lanes, cores) -> [knobs]
    default: Callable  # (shape, lanes, cores) -> knobs
    knobs: type
    constants_for: Callable = staticmethod(lambda shape, knobs, constants: constants)  # knob-dependent arrays


KINDS = {
    "pointwise": Kind(pointwise.generate, pointwise.candidates, pointwise.default_knobs, pointwise.PointwiseKnobs,
                      pointwise.constants_for),
    "gemv": Kind(gemv.generate, gemv.candidates, gemv.default_knobs, gemv.GemvKnobs),
    "depthwise": Kind(spatial.generate, spatial.candidates, spatial.default_knobs, spatial.SpatialKnobs),
    "conv": Kind(spatial.generate, spatial.candidates, spatial.default_knobs, spatial.SpatialKnobs),
    "pool": Kind(reduce.pool, reduce.candidates, reduce.default_knobs, reduce.PlaneKnobs),
    "scale": Kind(reduce.scale, reduce.candidates, reduce.default_knobs, reduce.PlaneKnobs),
    "to_nchw": Kind(reduce.to_nchw, reduce.candidates, reduce.default_knobs, reduce.PlaneKnobs),
    "fused": Kind(fused.generate, fused.candidates, fused.default_knobs, fused.FusedKnobs, fused.constants_for),
}


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One operation to generate: what it computes; the knobs say how."""

    kind: str
    shape: object
    epilogue: Epilogue = Epilogue(bias=False)

    def inputs(self) -> list[tuple]:
        return list(self.shape.inputs(self.epilogue))

    def constants(self) -> list[tuple]:
        return list(self.shape.constants())

    def output(self) -> tuple:
        return tuple(self.shape.output())

    def candidates(self, lanes: int, cores: int) -> list:
        return KINDS[self.kind].candidates(self.shape, lanes, cores)

    def default_knobs(self, lanes: int, cores: int):
        return KINDS[self.kind].default(self.shape, lanes, cores)

    def knobs_from(self, values: dict):
        return KINDS[self.kind].knobs(**values)

    def constants_for(self, knobs, constants: list) -> list:
        """The constant arrays the kernel built with ``knobs`` takes (some knobs re-index them)."""
        return KINDS[self.kind].constants_for(self.shape, knobs, constants)

    def build(self, knobs, lanes: int, name: str):
        return KINDS[self.kind].generate(self.shape, self.epilogue, knobs, lanes, name)

    def key(self) -> list:
        """What identifies the kernel in the knob cache (with the target)."""
        return [self.kind, type(self.shape).__name__, dataclasses.astuple(self.shape), dataclasses.astuple(self.epilogue)]


__all__ = ["Epilogue", "Kernel", "KINDS", "fused", "gemv", "pointwise", "reduce", "spatial"]

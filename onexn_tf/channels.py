"""Channel spaces of a functional Keras model: who produces, carries and consumes each set of channels.

Permuting the output channels of a conv is only safe if everything downstream that indexes those
channels is permuted the same way. This module finds, for every set of channels ("group"):
- *producers*: Conv2D / Dense layers whose output channels they are (kernel last axis, bias);
- *per-channel* layers that carry them with per-channel weights (BatchNorm, depthwise conv);
- *consumers*: Conv2D / Dense layers that read them (kernel input axis);
- *ties*: residual ``Add`` and SE ``Multiply`` layers, which merge the channels of all their inputs
  into one group (every producer feeding a residual stream must share one permutation);
- *pinned* reasons: the channels reach the model's input or output, or a layer this analysis does
  not understand, so their order must not change.

Per-tensor *origins* (the producers whose channels a tensor carries before any tie merges them)
identify the reference's rearranged layers: the ones whose own channels reach a depthwise conv or
the final global pooling (expand convs and the last 1×1 conv; every pointwise conv of MobileNetV1).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from onexn_tf.errors import InvalidArgument
from onexn_tf._keras import keras, tf

L = keras.layers

_PASS_THROUGH = (L.Activation, L.ReLU, L.LeakyReLU, L.ELU, L.Softmax, L.ZeroPadding2D, L.Cropping2D,
                 L.MaxPooling2D, L.AveragePooling2D, L.UpSampling2D, L.Dropout, L.SpatialDropout2D,
                 L.GaussianNoise, L.GaussianDropout, L.ActivityRegularization)
_GLOBAL_POOLING = (L.GlobalAveragePooling2D, L.GlobalMaxPooling2D)
_TIES = (L.Add, L.Multiply, L.Subtract, L.Maximum, L.Minimum, L.Average)
# TFOpLambda functions that act elementwise: with one tensor and scalars they carry channels as
# they are (hard_sigmoid's ``x + 3`` and ``* (1/6)`` in Keras MobileNetV3); with two tensors they tie.
_ELEMENTWISE_OPS = {"__operators__.add", "math.add", "math.multiply", "math.subtract", "__operators__.sub",
                    "math.truediv", "math.divide", "math.maximum", "math.minimum", "nn.relu", "nn.relu6",
                    "math.sigmoid", "math.tanh", "nn.silu", "nn.swish", "math.negative", "math.abs"}


@dataclasses.dataclass
class ChannelGroup:
    index: int
    channels: int
    producers: list[str] = dataclasses.field(default_factory=list)
    consumers: list[str] = dataclasses.field(default_factory=list)
    per_channel: list[str] = dataclasses.field(default_factory=list)
    ties: list[str] = dataclasses.field(default_factory=list)
    pinned: list[str] = dataclasses.field(default_factory=list)

    @property
    def is_pinned(self) -> bool:
        return bool(self.pinned)

    def describe(self) -> str:
        tied = f", tied by {', '.join(self.ties)}" if self.ties else ""
        return f"channel group {self.index} ({self.channels} channels; producers {', '.join(self.producers)}{tied})"


@dataclasses.dataclass
class ChannelMap:
    groups: list[ChannelGroup]
    leads: set[str]  # producers whose own channels reach a depthwise conv or the final global pooling

    def group_of(self, producer: str) -> ChannelGroup:
        for group in self.groups:
            if producer in group.producers:
                return group
        raise InvalidArgument(f"layer {producer!r} produces no channel group (it is not a Conv2D/Dense of the model)")


class _Spaces:
    """Union-find over channel spaces, each accumulating a group's members."""

    def __init__(self):
        self.parent: list[int] = []
        self.info: list[ChannelGroup] = []

    def new(self, channels: int, pinned: str | None = None) -> int:
        self.parent.append(len(self.parent))
        self.info.append(ChannelGroup(index=-1, channels=channels, pinned=[pinned] if pinned else []))
        return len(self.parent) - 1

    def find(self, space: int) -> int:
        while self.parent[space] != space:
            self.parent[space] = self.parent[self.parent[space]]
            space = self.parent[space]
        return space

    def union(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[b] = a
            ia, ib = self.info[a], self.info[b]
            for field in ("producers", "consumers", "per_channel", "ties", "pinned"):
                getattr(ia, field).extend(getattr(ib, field))
        return a

    def get(self, space: int) -> ChannelGroup:
        return self.info[self.find(space)]


def _channels(tensor) -> int | None:
    shape = tensor.shape
    return int(shape[-1]) if shape.rank and shape[-1] is not None else None


def _unwrap(layer):
    """Analyse a tfmot pruning wrapper as the layer it wraps."""
    inner = getattr(layer, "layer", None)
    return inner if isinstance(layer, L.Wrapper) and isinstance(inner, L.Layer) else layer


def _is_producer(layer) -> bool:
    if isinstance(layer, L.Dense):
        return True
    return (isinstance(layer, L.Conv2D) and not isinstance(layer, L.Conv2DTranspose) and layer.groups == 1
            and layer.data_format == "channels_last")


def _per_channel_axis_ok(layer, tensor) -> bool:
    axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    rank = tensor.shape.rank
    return [a % rank for a in axis] == [rank - 1]


def _squeezes_to_channels(layer, tensor_in, tensor_out) -> bool:
    """Reshape/Flatten that only drops or adds 1-sized spatial dims keeps channel identity."""
    shape_in, shape_out = tensor_in.shape, tensor_out.shape
    return (shape_in[-1] is not None and shape_in[-1] == shape_out[-1]
            and all(d == 1 for d in shape_in[1:-1]) and all(d == 1 for d in shape_out[1:-1]))


def _tfop_kind(layer, node) -> str:
    function = layer.get_config().get("function", "")
    if function not in _ELEMENTWISE_OPS:
        return "unknown"
    tensors = node.keras_inputs
    others = [a for a in tf.nest.flatten((node.call_args, node.call_kwargs))
              if not isinstance(a, (str, type(None))) and not any(a is t for t in tensors)]
    # numbers, or one-element arrays (the XNNPACK-ready V3's [[[[1/6]]]]): a broadcast keeps channels apart
    if not all(isinstance(a, (int, float)) or (isinstance(a, (list, tuple)) and np.size(a) == 1) for a in others):
        return "unknown"
    return "tie" if len(tensors) > 1 else "pass"


def analyze(model) -> ChannelMap:
    """The channel groups of a functional model (see module docstring)."""
    if not getattr(model, "_is_graph_network", False):
        raise InvalidArgument(f"model {model.name!r} is not a functional model: channel analysis needs its layer graph")
    spaces = _Spaces()
    where: dict[int, tuple[int, frozenset]] = {}  # id(KerasTensor) -> (space, origins)
    depthwise_inputs, pooling_inputs = [], []

    def source(tensor):
        return where[id(tensor)]

    def pin_inputs(node, reason):
        for tensor in node.keras_inputs:
            if id(tensor) in where:
                spaces.get(source(tensor)[0]).pinned.append(reason)

    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            layer = _unwrap(node.layer)
            ins = node.keras_inputs
            outs = tf.nest.flatten(node.outputs)
            name = layer.name
            if isinstance(layer, L.InputLayer) or not ins:
                for out in outs:
                    where[id(out)] = (spaces.new(_channels(out) or 0, "model input"), frozenset())
                continue
            first = source(ins[0]) if ins else None
            kind = "unknown"
            if _is_producer(layer) and len(ins) == 1:
                kind = "produce"
            elif isinstance(layer, L.DepthwiseConv2D):
                kind = "depthwise" if layer.depth_multiplier == 1 and layer.data_format == "channels_last" else "unknown"
            elif isinstance(layer, L.BatchNormalization):
                kind = "per_channel" if _per_channel_axis_ok(layer, ins[0]) else "unknown"
            elif isinstance(layer, L.Rescaling):
                kind = "pass" if np.size(layer.scale) == 1 and np.size(layer.offset) == 1 else "unknown"
            elif isinstance(layer, _PASS_THROUGH):
                kind = "pass" if len(ins) == 1 else "unknown"
            elif isinstance(layer, _GLOBAL_POOLING):
                kind = "pool"
            elif isinstance(layer, (L.Reshape, L.Flatten)):
                kind = "pass" if _squeezes_to_channels(layer, ins[0], outs[0]) else "unknown"
            elif isinstance(layer, _TIES):
                kind = "tie"
            elif type(layer).__name__ == "TFOpLambda":
                kind = _tfop_kind(layer, node)

            if kind == "tie" and len({_channels(t) for t in ins}) != 1:
                kind = "unknown"  # broadcasting across the channel axis: not a channel-preserving merge

            if kind == "produce":
                spaces.get(first[0]).consumers.append(name)
                space = spaces.new(_channels(outs[0]))
                spaces.get(space).producers.append(name)
                where[id(outs[0])] = (space, frozenset([name]))
            elif kind in ("depthwise", "per_channel", "pass", "pool"):
                if kind in ("depthwise", "per_channel"):
                    spaces.get(first[0]).per_channel.append(name)
                if kind == "depthwise":
                    depthwise_inputs.append(first[1])
                if kind == "pool":
                    pooling_inputs.append(first[1])
                for out in outs:
                    where[id(out)] = first
            elif kind == "tie":
                space = first[0]
                origins = set(first[1])
                merged = {spaces.find(source(t)[0]) for t in ins}
                for tensor in ins[1:]:
                    other = source(tensor)
                    space = spaces.union(space, other[0])
                    origins |= other[1]
                if len(merged) > 1:  # hard-swish's Multiply(x, f(x)) merges a space with itself
                    spaces.get(space).ties.append(name)
                where[id(outs[0])] = (space, frozenset(origins))
            else:
                pin_inputs(node, f"read by {name} ({type(layer).__name__}), which this analysis does not handle")
                for out in outs:
                    where[id(out)] = (spaces.new(_channels(out) or 0, f"made by {name} ({type(layer).__name__})"),
                                      frozenset())

    for out in tf.nest.flatten(model.outputs):
        spaces.get(source(out)[0]).pinned.append("model output")

    roots = sorted({spaces.find(i) for i in range(len(spaces.parent))})
    groups = []
    for root in roots:
        group = spaces.info[root]
        if not (group.producers or group.consumers or group.per_channel):
            continue
        group.index = len(groups)
        group.pinned = list(dict.fromkeys(group.pinned))
        groups.append(group)
    final_pool = pooling_inputs[-1:] if pooling_inputs else []
    leads = {next(iter(origins)) for origins in depthwise_inputs + final_pool if len(origins) == 1}
    return ChannelMap(groups=groups, leads=leads)

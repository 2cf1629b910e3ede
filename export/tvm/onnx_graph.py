"""ONNX graph preparation before the Relax import: load with clear errors, fold Pad into Conv.

tf2onnx writes Keras' ``ZeroPadding2D`` + ``valid`` conv as ``Pad -> Conv``. Relax imports the Pad as a
separate PrimFunc, which MetaSchedule then fuses into the conv and, in TVM 0.27, miscompiles (the
last padded row/column is never written: ~8 % output error). Folding a constant zero Pad over the
spatial axes into the Conv's own ``pads`` gives the same arithmetic and removes the trap.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from onexn_tf.errors import InvalidArgument, first_line


def load(path) -> "onnx.ModelProto":
    import onnx

    path = Path(path)
    if not path.is_file():
        raise InvalidArgument(f"ONNX model {path} does not exist")
    try:
        model = onnx.load(str(path))
    except Exception as error:  # protobuf's DecodeError and others: bytes that do not parse
        raise InvalidArgument(f"{path} cannot be read as an ONNX model: it is truncated, damaged or another kind "
                              f"of file ({first_line(error)})") from None
    if not model.graph.node:  # protobuf parses many foreign files as an empty message
        raise InvalidArgument(f"{path} holds no ONNX graph (no nodes): it is not an ONNX model, or an empty one")
    return model


def input_shape(model) -> tuple[str, tuple[int, ...]]:
    """Name and static shape of the single graph input (a dynamic batch becomes 1)."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise InvalidArgument(f"the ONNX model has {len(inputs)} inputs; exactly one image input is supported")
    dims = []
    for i, d in enumerate(inputs[0].type.tensor_type.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        elif i == 0:
            dims.append(1)
        else:
            raise InvalidArgument(f"input {inputs[0].name!r} has a dynamic dimension {i}: export with a fixed image size")
    return inputs[0].name, tuple(dims)


def simplify(model, batch: int = 1):
    """Fix the batch size and let onnxruntime's basic (ONNX-standard) optimizations fold what is
    constant. tf2onnx leaves ``Shape -> Gather -> Concat -> Reshape`` chains for a dynamic batch,
    which the Relax importer cannot turn into static shapes."""
    import onnx
    import onnxruntime as ort

    model = onnx.ModelProto.FromString(model.SerializeToString())
    initializers = {t.name for t in model.graph.initializer}
    graph_input = next(i for i in model.graph.input if i.name not in initializers)
    graph_input.type.tensor_type.shape.dim[0].dim_value = batch
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    with tempfile.TemporaryDirectory() as tmp:
        options.optimized_model_filepath = os.path.join(tmp, "simplified.onnx")
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)


def _constant(model, name):
    from onnx import numpy_helper

    for tensor in model.graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def _zero_spatial_pads(model, pad) -> list[int] | None:
    """The [top, left, bottom, right] of a constant-zero NCHW Pad touching only H and W, else None."""
    attrs = {a.name: a for a in pad.attribute}
    mode = attrs["mode"].s.decode() if "mode" in attrs else "constant"
    if mode != "constant":
        return None
    if "pads" in attrs:  # opset < 11
        pads = list(attrs["pads"].ints)
        value = attrs["value"].f if "value" in attrs else 0.0
    else:
        pads = _constant(model, pad.input[1]) if len(pad.input) > 1 else None
        if pads is None:
            return None
        pads = [int(p) for p in pads]
        value = 0.0
        if len(pad.input) > 2 and pad.input[2]:
            v = _constant(model, pad.input[2])
            if v is None:
                return None
            value = float(np.asarray(v).reshape(-1)[0]) if np.size(v) else 0.0
        if len(pad.input) > 3 and pad.input[3]:  # opset 18 "axes": rare, keep it simple
            return None
    if len(pads) != 8 or value != 0.0 or any(pads[i] for i in (0, 1, 4, 5)) or min(pads) < 0:
        return None
    return [pads[2], pads[3], pads[6], pads[7]]


def fold_pads(model) -> tuple["onnx.ModelProto", int]:
    """Fold every ``Pad -> Conv`` (zero, spatial, Pad used only by that Conv) into the Conv; returns a copy."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in model.graph.output}
    folded = []
    for pad in model.graph.node:
        if pad.op_type != "Pad" or pad.output[0] in graph_outputs:
            continue
        users = consumers.get(pad.output[0], [])
        if len(users) != 1 or users[0].op_type != "Conv" or users[0].input[0] != pad.output[0]:
            continue
        conv = users[0]
        extra = _zero_spatial_pads(model, pad)
        attrs = {a.name: a for a in conv.attribute}
        if extra is None or ("auto_pad" in attrs and attrs["auto_pad"].s not in (b"", b"NOTSET")):
            continue
        old = list(attrs["pads"].ints) if "pads" in attrs else [0, 0, 0, 0]
        if len(old) != 4:
            continue
        new = [a + b for a, b in zip(old, extra)]  # ONNX Conv pads: [top, left, bottom, right]
        if "pads" in attrs:
            conv.attribute.remove(attrs["pads"])
        conv.attribute.append(onnx.helper.make_attribute("pads", new))
        conv.input[0] = pad.input[0]
        folded.append(pad)
    for pad in folded:
        model.graph.node.remove(pad)
    return model, len(folded)


def drop_identity_reshapes(model) -> tuple["onnx.ModelProto", int]:
    """Remove every Reshape whose static input and output shapes are equal (what onnxruntime makes of
    an NHWC <-> NCHW transpose on a 1×1 map); returns a copy. They would split a layer's chain."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.ModelProto.FromString(model.SerializeToString()))
    shapes = {}
    for info in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = info.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims) and dims:
            shapes[info.name] = tuple(d.dim_value for d in dims)
    graph_outputs = {o.name for o in model.graph.output}
    removed = []
    for node in model.graph.node:
        if (node.op_type == "Reshape" and node.output[0] not in graph_outputs
                and shapes.get(node.input[0]) is not None and shapes.get(node.input[0]) == shapes.get(node.output[0])):
            removed.append(node)
    renames = {node.output[0]: node.input[0] for node in removed}
    for node in removed:
        model.graph.node.remove(node)
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            while name in renames:
                name = renames[name]
            node.input[i] = name
    return model, len(removed)


def fold_batchnorm(model) -> tuple["onnx.ModelProto", int]:
    """Fold every inference ``BatchNormalization`` that follows a Conv (its only consumer, constant
    weights) into the Conv's weights and bias; returns a copy. tf2onnx and onnxruntime fold most of
    them, but not all (e.g. some small-map MobileNet layers), and a left-over BatchNorm is a separate
    pass over the tensor that none of our kernels would compute."""
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {t.name: t for t in model.graph.initializer}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    producers = {out: node for node in model.graph.node for out in node.output}
    graph_outputs = {o.name for o in model.graph.output}
    removed = []
    for bn in model.graph.node:
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1:
            continue
        conv = producers.get(bn.input[0])
        params = [_constant(model, name) for name in bn.input[1:5]]
        if (conv is None or conv.op_type != "Conv" or conv.input[1] not in inits or any(p is None for p in params)
                or len(consumers.get(conv.output[0], [])) != 1 or conv.output[0] in graph_outputs):
            continue
        if len(conv.input) > 2 and conv.input[2] and conv.input[2] not in inits:
            continue
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (np.asarray(p, np.float64) for p in params)
        scale = gamma / np.sqrt(var + eps)
        weight = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
        bias = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) if len(conv.input) > 2 and conv.input[2] \
            else np.zeros(weight.shape[0])
        weight_name, bias_name = conv.output[0] + "_bn_weight", conv.output[0] + "_bn_bias"
        model.graph.initializer.append(numpy_helper.from_array(
            (weight * scale.reshape(-1, 1, 1, 1)).astype(np.float32), weight_name))
        model.graph.initializer.append(numpy_helper.from_array(((bias - mean) * scale + beta).astype(np.float32),
                                                               bias_name))
        del conv.input[1:]
        conv.input.extend([weight_name, bias_name])
        conv.output[0] = bn.output[0]
        removed.append(bn)
    for bn in removed:
        model.graph.node.remove(bn)
    return model, len(removed)


def pointwise_layers(model) -> list[dict]:
    """The 1×1 convs (group 1) and matmuls of an ONNX model, in graph order: ``{"layer", "weight",
    "c_in", "c_out", "transposed"}``, the layer named as Keras named it (tf2onnx keeps
    ``model/<layer>/<op>``)."""
    inits = {i.name: i for i in model.graph.initializer}
    out = []
    for node in model.graph.node:
        weight = inits.get(node.input[1]) if len(node.input) > 1 else None
        if weight is None:
            continue
        dims = list(weight.dims)
        attrs = {a.name: a.i for a in node.attribute}
        parts = node.name.split("/")
        layer = "/".join(parts[1:-1]) if len(parts) > 2 else node.name
        if node.op_type == "Conv" and len(dims) == 4 and dims[2:] == [1, 1] and attrs.get("group", 1) == 1:
            out.append({"layer": layer, "weight": weight.name, "c_in": dims[1], "c_out": dims[0], "transposed": False})
        elif node.op_type in ("MatMul", "Gemm") and len(dims) == 2:
            transposed = bool(attrs.get("transB", 0))
            c_in, c_out = (dims[1], dims[0]) if transposed else dims
            out.append({"layer": layer, "weight": weight.name, "c_in": c_in, "c_out": c_out, "transposed": transposed})
    return out


def _to_keras(weight: np.ndarray, transposed: bool) -> np.ndarray:
    """ONNX weight -> the Keras kernel layout the masks expect ([1, 1, C_in, C_out] or [C_in, C_out])."""
    if weight.ndim == 4:
        return weight.transpose(2, 3, 1, 0)
    return weight.T if transposed else weight


def _from_keras(kernel: np.ndarray, transposed: bool) -> np.ndarray:
    if kernel.ndim == 4:
        return kernel.transpose(3, 2, 0, 1)
    return kernel.T if transposed else kernel


def block_prune_pointwise(model, n: int, sparsity: float, *, skip_out_channels: int | None = None,
                          matmuls: bool = False, densify: bool = False):
    """A copy of ``model`` whose pointwise (1×1, ungrouped) Conv weights (``matmuls``: and MatMul /
    Gemm weights) are 1×``n``-pruned at ``sparsity`` with the library's block-L1 criterion: latency
    probes at sparsities nobody trained (their outputs are not the trained model's). Layers with
    ``skip_out_channels`` outputs (a classifier) are left alone. ``densify``: zero weights (an already
    pruned model) first become tiny, so they are the first pruned and a sparsity of 0 is really dense.
    Returns (model, number of layers pruned)."""
    import onnx
    from onnx import numpy_helper

    from onexn_tf import masks

    model = onnx.ModelProto.FromString(model.SerializeToString())
    weights = {t.name: t for t in model.graph.initializer}
    rng = np.random.default_rng(0)
    count = 0
    for layer in pointwise_layers(model):
        if layer["c_out"] == skip_out_channels or (not matmuls and layer["weight"] not in _conv_weights(model)):
            continue
        w = numpy_helper.to_array(weights[layer["weight"]]).astype(np.float32)
        if densify:
            w = np.where(w == 0, rng.uniform(1e-7, 2e-7, w.shape) * (float(np.abs(w).max()) or 1.0), w)
        kernel = _to_keras(w, layer["transposed"])
        if sparsity > 0:
            kernel = kernel * masks.compute_mask(kernel, sparsity, n=n).mask
        pruned = _from_keras(kernel, layer["transposed"]).astype(np.float32)
        weights[layer["weight"]].CopyFrom(numpy_helper.from_array(pruned, layer["weight"]))
        count += 1
    return model, count


def _conv_weights(model) -> set:
    return {node.input[1] for node in model.graph.node if node.op_type == "Conv" and len(node.input) > 1}

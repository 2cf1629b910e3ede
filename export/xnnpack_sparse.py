"""Will TFLite's XNNPACK delegate run this ``.tflite`` file on its sparse (NCHW) path? A structural
check of the flatbuffer, op by op, that replays what XNNPACK does.

XNNPACK's sparse inference (Elsen et al., "Fast Sparse ConvNets") runs the part of a network between
a 3×3 stride-2 stem and a global mean in CHW layout, its 1×1 convolutions as block-sparse matrix
products. Whether it engages is decided silently at load time (release builds log nothing, and on
x86 CPUs with AVX the path is disabled), so the only way to know from here is to replay the
decision on the artifact. The rules and their order follow the sources of TFLite's XNNPACK delegate
(``tflite/delegates/xnnpack/xnnpack_delegate.cc``) and XNNPACK (``src/subgraph.c``:
``xnn_subgraph_fusion``, ``xnn_check_nchw_compatibility``, ``xnn_subgraph_rewrite_for_nchw``;
``src/operators/convolution-nchw.c``: block choice), XNNPACK commit 25b42dfd (the one TensorFlow
2.21 and ai-edge-litert 2.1.2 build with; the rules are unchanged up to XNNPACK's 2026-08 master):

1. the delegate asks for sparse inference only if some delegated op reads a ``DENSIFY`` output
   (the 1×1 weights stored as TFLite sparse tensors, as ``EXPERIMENTAL_SPARSITY`` writes them);
2. a 1×1 stride-1 unpadded CONV_2D becomes a fully-connected node; ``SAME`` padding becomes explicit
   only at stride 1; a zero ``PAD`` of H/W alone is folded into the CONV_2D / DEPTHWISE_CONV_2D it
   feeds (its only consumer);
3. per node: the stem must be a 3×3 stride-2 conv over 3 channels with padding 1 on every side;
   depthwise 3×3 / 5×5 with padding 1 / 2 on every side, stride 1 or 2, multiplier 1; 1×1 convs
   without padding or stride; ADD / MUL of rank-4 tensors; unary ops on rank-4 tensors; MEAN / SUM
   of a rank-4 tensor ends the cluster; anything else (reshape, softmax, pooling, an unfused pad, …)
   cannot be in it;
4. clusters are grown from the MEAN back to the stem; a cluster is rejected as a whole if any of its
   nodes has a producer that cannot be in it, or a value it reads is read by a node outside it;
5. a cluster runs sparse only if its 1×1 weights (all of them, the classifier's too when it is a 1×1
   conv after the mean) are **more than 2/3 zeros**;
6. each 1×1 layer then uses blocks of 4 output channels when its non-zero 4-blocks are ≥ 90 % full,
   else 2, else 1.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from export import tflite_graph

# XNNPACK's layout flags (src/subgraph.c)
NCHW, NHWC2NCHW, NCHW2NHWC, INCOMPATIBLE = 1, 2, 4, 8
SAME, VALID = 0, 1  # TFLite Padding
_ACTIVATIONS = {0: None, 1: "relu", 2: "relu_n1_to_1", 3: "relu6", 4: "tanh", 5: "sign_bit"}
_UNARY = {"HARD_SWISH", "LOGISTIC", "TANH", "RELU", "RELU6", "RELU_N1_TO_1", "RELU_0_TO_1", "ELU", "LEAKY_RELU",
          "GELU", "ABS", "NEG", "SQRT", "RSQRT", "SQUARE", "EXP", "LOG", "SIN", "COS", "CEIL", "FLOOR", "ROUND",
          "SIGN", "CAST"}
_OTHER_DELEGATED = {"RESHAPE", "SOFTMAX", "AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION", "TRANSPOSE", "SLICE",
                    "STRIDED_SLICE", "SPACE_TO_DEPTH", "BATCH_MATMUL", "TRANSPOSE_CONV", "SPLIT", "QUANTIZE",
                    "DEQUANTIZE", "REDUCE_MAX", "REDUCE_MIN", "PRELU", "SUB", "DIV", "MAXIMUM", "MINIMUM",
                    "SQUARED_DIFFERENCE", "RESIZE_NEAREST_NEIGHBOR", "EXPAND_DIMS", "SQUEEZE", "LOG_SOFTMAX"}
THRESHOLD = 2 / 3


@dataclasses.dataclass
class _Node:
    """An XNNPACK subgraph node as the delegate defines it."""
    op: tflite_graph.Operator
    kind: str  # conv, dwconv, fc, pad, reduce, binary, unary, resize, d2s, other
    inputs: list[int]  # value ids: TFLite tensor ids, or negative ids for values the delegate adds
    outputs: list[int]
    params: dict = dataclasses.field(default_factory=dict)
    flags: int = 0
    capable: int = 0  # the flags xnn_check_nchw_compatibility gave (before the cluster steps change them)
    leader: int = 0
    reason: str | None = None  # why it cannot run in CHW (capable == 0)
    faults: list = dataclasses.field(default_factory=list)  # why its cluster was rejected because of it


@dataclasses.dataclass
class OpReport:
    index: int
    op: str
    layer: str
    role: str  # stem, pointwise, depthwise, pad, mean, add, mul, activation, weights, other
    sparse_path: bool  # runs on XNNPACK's NCHW (sparse) path
    reason: str | None  # why not, for an op that could have been in the cluster
    block: int | None = None  # pointwise on the sparse path: output channels per block (1, 2, 4)
    zero_fraction: float | None = None  # pointwise: of its weights

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Verdict:
    """The answer for one file: ``accepted`` when XNNPACK will run a cluster sparse."""
    accepted: bool
    reasons: list[str]  # why not (empty when accepted)
    sparse_hint: bool  # the delegate asks for sparse inference (DENSIFY ops present)
    zero_fraction: float | None  # of the 1×1 weights of the largest cluster
    threshold: float
    blocks: dict[str, int]  # pointwise layer -> block height XNNPACK picks
    ops: list[OpReport]
    note: str = ("XNNPACK runs this path on ARM (aarch64 NEON kernels) and on x86 only without AVX; "
                 "this is a structural check of the file, not a measurement")

    def summary(self) -> str:
        zeros = f"{self.zero_fraction:.3f}" if self.zero_fraction is not None else "n/a"
        if self.accepted:
            heights = sorted(set(self.blocks.values()), reverse=True)
            return (f"XNNPACK sparse path: yes ({sum(op.sparse_path for op in self.ops)} ops in CHW, 1x1 weights "
                    f"{zeros} zeros > 2/3, blocks of {'/'.join(map(str, heights))} output channels)")
        return f"XNNPACK sparse path: no ({self.reasons[0]})"

    def to_dict(self) -> dict:
        return {"accepted": self.accepted, "summary": self.summary(), "reasons": self.reasons,
                "sparse_hint": self.sparse_hint, "zero_fraction": self.zero_fraction, "threshold": self.threshold,
                "blocks": self.blocks, "note": self.note, "ops": [op.to_dict() for op in self.ops]}


def check(path) -> Verdict:
    """Replay XNNPACK's sparse-inference decision on the ``.tflite`` file ``path`` (module docstring)."""
    return check_graph(tflite_graph.read(path))


def check_graph(graph: tflite_graph.Graph) -> Verdict:
    static = _static_values(graph)
    nodes, undelegated, sparse_inputs = _define_nodes(graph, static)
    values = _Values(graph, nodes, static, undelegated)
    _fuse_pads(nodes, values)
    values = _Values(graph, nodes, static, undelegated)
    for node in nodes:
        node.flags, node.reason = _nchw_compatibility(node, values)
        node.capable = node.flags
    exit_found = _grow_clusters(nodes, values)
    hint = bool(sparse_inputs)
    clusters = _evaluate_clusters(nodes, values) if exit_found else {}
    return _verdict(graph, nodes, undelegated, hint, exit_found, clusters, values)


# --- the delegate: TFLite ops -> XNNPACK nodes -------------------------------------------------------

def _static_values(graph) -> set[int]:
    """Constants, and what DENSIFY / DEQUANTIZE make of constants at load time (no node)."""
    static = {t.index for t in graph.tensors if t.value is not None}
    for op in graph.operators:
        if op.op in ("DENSIFY", "DEQUANTIZE") and op.inputs and op.inputs[0] in static:
            static.update(op.outputs)
            graph.tensors[op.outputs[0]].value = graph.tensors[op.inputs[0]].value.astype(np.float32)
    return static


def _padding(options: dict, kernel: tuple[int, int], dilation: tuple[int, int]) -> tuple[dict, bool]:
    """(top/left/bottom/right, SAME flag kept) as the delegate + XNNPACK define a conv's padding."""
    stride = (options.get("strideH", 1), options.get("strideW", 1))
    if options.get("padding") == SAME:
        if stride == (1, 1):
            total_h, total_w = (kernel[0] - 1) * dilation[0], (kernel[1] - 1) * dilation[1]
            return {"top": total_h // 2, "bottom": total_h - total_h // 2, "left": total_w // 2,
                    "right": total_w - total_w // 2}, False
        return {"top": 0, "bottom": 0, "left": 0, "right": 0}, True
    return {"top": 0, "bottom": 0, "left": 0, "right": 0}, False


def _define_nodes(graph, static):
    """XNNPACK nodes in topological order; ops the delegate refuses (with why); DENSIFY-fed inputs."""
    nodes: list[_Node] = []
    undelegated: dict[int, str] = {}
    sparse_inputs = []
    densified = {t for op in graph.operators if op.op == "DENSIFY" for t in op.outputs}
    fresh = iter(range(-1, -10 ** 9, -1))
    for op in graph.operators:
        if op.op in ("DENSIFY", "DEQUANTIZE") and op.inputs and op.inputs[0] in static:
            continue  # unpacked at load time
        tensors = [graph.tensors[i] if i >= 0 else None for i in op.inputs]
        kind, params, why = _classify(op, tensors)
        if why:
            undelegated[op.index] = why
            continue
        if any(i in densified for i in op.inputs):
            sparse_inputs.append(op.index)
        # Axes, paddings, shapes and sizes are node parameters in XNNPACK, not values.
        inputs = [i for i in op.inputs if i >= 0][:1 if kind in ("pad", "reduce", "resize", "d2s") or op.op == "RESHAPE"
                                                   else None]
        if kind == "fc" and not op.options.get("keepNumDims", False) and op.op == "FULLY_CONNECTED":
            reshaped = next(fresh)  # the delegate reshapes the input to 2-D first
            nodes.append(_Node(op, "other", [inputs[0]], [reshaped], {"aux": "reshape before FULLY_CONNECTED"}))
            inputs = [reshaped] + inputs[1:]
        activation = _ACTIVATIONS.get(op.options.get("fusedActivationFunction", 0))
        if kind == "binary" and activation:  # XNNPACK adds a clamp node after a binary op
            clamped = next(fresh)
            nodes.append(_Node(op, kind, inputs, [clamped], params))
            nodes.append(_Node(op, "unary", [clamped], list(op.outputs), {"aux": f"{activation} after {op.op}"}))
            continue
        nodes.append(_Node(op, kind, inputs, list(op.outputs), params))
    return nodes, undelegated, sparse_inputs


def _classify(op, tensors):
    """(kind, params, None) for a delegated op, or (None, None, why the delegate refuses it)."""
    name, options = op.op, op.options
    activation = options.get("fusedActivationFunction", 0)
    if activation in (4, 5):
        return None, None, f"{name} with a fused {_ACTIVATIONS[activation]} is not delegated to XNNPACK"
    if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        if len(tensors) < 3 or tensors[2] is None:
            return None, None, f"{name} without bias is not delegated to XNNPACK"
        filt, x = tensors[1], tensors[0]
        kernel = (filt.shape[1], filt.shape[2])
        dilation = (options.get("dilationHFactor", 1), options.get("dilationWFactor", 1))
        pads, same = _padding(options, kernel, dilation)
        params = {"kernel": kernel, "stride": (options.get("strideH", 1), options.get("strideW", 1)),
                  "dilation": dilation, "pads": pads, "same": same}
        if name == "CONV_2D":
            group_in = filt.shape[3]
            groups = x.shape[3] // group_in if group_in else 1
            params.update(groups=groups, group_input_channels=group_in, output_channels=filt.shape[0])
            if (groups == 1 and kernel == (1, 1) and params["stride"] == (1, 1) and not same
                    and not any(pads.values()) and group_in + filt.shape[0] > 2):
                return "fc", params, None  # XNNPACK defines a 1x1 conv as fully connected
            return "conv", params, None
        params["multiplier"] = options.get("depthMultiplier", 1) or filt.shape[3] // max(x.shape[3], 1)
        return "dwconv", params, None
    if name == "FULLY_CONNECTED":
        if op.version == 8:
            return None, None, "FULLY_CONNECTED with sparse weights (op version 8) is not delegated to XNNPACK"
        return "fc", {}, None
    if name == "PAD":
        paddings = tensors[1].value if len(tensors) > 1 and tensors[1] is not None else None
        if paddings is None:
            return None, None, "PAD with non-constant paddings is not delegated to XNNPACK"
        return "pad", {"paddings": np.asarray(paddings).reshape(-1, 2)}, None
    if name in ("MEAN", "SUM"):
        return "reduce", {}, None
    if name in ("ADD", "MUL"):
        return "binary", {"operator": name}, None
    if name in _UNARY:
        return "unary", {"what": name}, None
    if name == "RESIZE_BILINEAR":
        return "resize", {}, None
    if name == "DEPTH_TO_SPACE":
        return "d2s", {}, None
    if name in _OTHER_DELEGATED:
        return "other", {}, None
    return None, None, f"{name} is not an op the XNNPACK delegate takes"


class _Values:
    """Producers and consumer counts of the subgraph's values (an external output counts once more)."""

    def __init__(self, graph, nodes, static, undelegated):
        self.graph = graph
        self.static = static
        self.weights = {t.index: t.value for t in graph.tensors if t.value is not None}
        self.shapes = {t.index: t.shape for t in graph.tensors}
        self.types = {t.index: t.type for t in graph.tensors}
        self.producer = {v: n for n, node in enumerate(nodes) for v in node.outputs}
        self.consumers: dict[int, int] = {}
        for node in nodes:
            for v in node.inputs:
                self.consumers[v] = self.consumers.get(v, 0) + 1
        produced = set(self.producer)
        read = {v for node in nodes for v in node.inputs}
        # External: the model's inputs/outputs, and values crossing to or from ops XNNPACK does not run.
        self.external = set(graph.inputs) | set(graph.outputs)
        self.external |= {v for v in read if v not in produced and v not in static}
        outside_reads = {t for op in graph.operators if op.index in undelegated for t in op.inputs if t >= 0}
        self.external |= {v for v in produced if v in outside_reads}
        for v in self.external & produced:
            self.consumers[v] = self.consumers.get(v, 0) + 1

    def shape(self, v):
        return self.shapes.get(v)


def _fuse_pads(nodes: list[_Node], values: _Values) -> None:
    """``xnn_subgraph_fusion``: a zero PAD of H/W alone, read only by a CONV_2D / DEPTHWISE_CONV_2D
    without the SAME flag, becomes that conv's padding."""
    for pad in [n for n in nodes if n.kind == "pad"]:
        out = pad.outputs[0]
        readers = [n for n in nodes if out in n.inputs]
        if values.consumers.get(out, 0) != 1 or len(readers) != 1:
            continue
        conv = readers[0]
        paddings = pad.params["paddings"]
        spatial_only = paddings.shape == (4, 2) and not paddings[0].any() and not paddings[3].any()
        if conv.kind in ("conv", "dwconv") and spatial_only and not conv.params["same"]:
            pads = conv.params["pads"]
            pads["top"] += int(paddings[1][0])
            pads["bottom"] += int(paddings[1][1])
            pads["left"] += int(paddings[2][0])
            pads["right"] += int(paddings[2][1])
            conv.inputs[0] = pad.inputs[0]
            conv.params["fused_pad"] = pad.op.index
            nodes.remove(pad)


# --- XNNPACK: which nodes can run in CHW, and the clusters --------------------------------------------

def _pads_text(pads: dict) -> str:
    return f"padding top/left/bottom/right {pads['top']}/{pads['left']}/{pads['bottom']}/{pads['right']}"


def _nchw_compatibility(node: _Node, values: _Values) -> tuple[int, str | None]:
    """``xnn_check_nchw_compatibility``: the node's layout flags, and why 0."""
    ids = [v for v in node.inputs + node.outputs if v >= 0]
    if any(values.types.get(v) not in tflite_graph.FLOAT_TYPES for v in ids):
        return 0, "not all of its values are floating point"
    p = node.params
    if node.kind == "fc":
        return NCHW, None
    if node.kind == "conv":
        if p["groups"] != 1:
            return 0, "a grouped convolution"
        if p["dilation"] != (1, 1):
            return 0, "a dilated convolution"
        if p["kernel"] == (1, 1):
            if p["same"] or any(p["pads"].values()) or p["stride"] != (1, 1):
                return 0, "a 1x1 convolution with padding or stride"
            return NCHW, None
        if p["kernel"] == (3, 3):
            if p["same"]:
                return 0, ("a 3x3 stride-2 convolution with TensorFlow SAME padding (0 before, 1 after on even "
                           "inputs): XNNPACK needs padding 1 on every side")
            if any(v != 1 for v in p["pads"].values()):
                return 0, f"{_pads_text(p['pads'])}: XNNPACK's stem needs 1 on every side"
            if p["stride"] != (2, 2):
                return 0, "a 3x3 convolution with stride other than 2 (only the 3x3 stride-2 stem can be in CHW)"
            if p["group_input_channels"] != 3:
                return 0, (f"a 3x3 stride-2 convolution over {p['group_input_channels']} channels (the stem must "
                           "have 3)")
            return NHWC2NCHW, None
        return 0, f"a {p['kernel'][0]}x{p['kernel'][1]} convolution (only 1x1 and the 3x3 stem)"
    if node.kind == "dwconv":
        if p["dilation"] != (1, 1):
            return 0, "a dilated depthwise convolution"
        if p["same"]:
            return 0, ("a stride-2 depthwise convolution with TensorFlow SAME padding (asymmetric on even inputs): "
                       "XNNPACK needs symmetric padding")
        if p["multiplier"] != 1:
            return 0, f"depth multiplier {p['multiplier']} (must be 1)"
        stride = p["stride"]
        if stride[0] != stride[1] or stride[0] not in (1, 2):
            return 0, f"stride {stride[0]}x{stride[1]} (must be 1 or 2 in both directions)"
        k = p["kernel"]
        if k[0] != k[1] or k[0] not in (3, 5):
            return 0, f"a {k[0]}x{k[1]} depthwise kernel (must be 3x3 or 5x5)"
        want = k[0] // 2
        if any(v != want for v in p["pads"].values()):
            return 0, f"{_pads_text(p['pads'])}: a {k[0]}x{k[0]} depthwise convolution needs {want} on every side"
        return NCHW, None
    if node.kind == "d2s":
        return NCHW2NHWC, None
    if node.kind == "binary":
        a, b = (values.shape(v) for v in node.inputs[:2])
        if a is None or b is None or len(a) != 4 or len(b) != 4:
            return 0, (f"{p['operator']} of tensors of rank {len(a) if a is not None else '?'} and "
                       f"{len(b) if b is not None else '?'} (both must be rank 4, constants included)")
        first_static = node.inputs[0] in values.static
        second_static = node.inputs[1] in values.static
        # XNNPACK checks the non-unit dimensions of the *first* input when either one is a constant.
        if (first_static or second_static) and sum(d != 1 for d in a) > 1:
            return 0, f"{p['operator']} by a constant where XNNPACK accepts only scalar-like or per-channel operands"
        return NCHW, None
    if node.kind == "resize":
        shape = values.shape(node.inputs[0])
        return (NCHW, None) if shape is not None and len(shape) == 4 and shape[1] > 1 and shape[2] > 1 else \
            (0, "a resize of a 1-pixel-high or -wide map")
    if node.kind == "unary":
        shape = values.shape(node.inputs[0])
        return (NCHW, None) if shape is not None and len(shape) == 4 else (0, "a unary op on a tensor of rank != 4")
    if node.kind == "reduce":
        shape = values.shape(node.inputs[0])
        return (NCHW | NCHW2NHWC, None) if shape is not None and len(shape) == 4 else \
            (0, "a reduction of a tensor of rank != 4")
    if node.kind == "pad":
        return 0, "a PAD XNNPACK could not fold into the convolution after it"
    return 0, f"{node.op.op} has no CHW kernel in XNNPACK"


def _link(nodes, values, n: int) -> bool:
    """One node's producers joined to its cluster (the body of both leader loops in subgraph.c); True
    when a leader changed."""
    node, merged = nodes[n], False
    for v in node.inputs:
        if v in values.static:
            continue
        if v in values.external:
            node.flags |= INCOMPATIBLE
            node.faults.append(("external", v))
            continue
        producer = nodes[values.producer[v]]
        if producer.flags & (NHWC2NCHW | NCHW) and not producer.flags & INCOMPATIBLE:
            producer.flags &= ~NCHW2NHWC
            if producer.leader != node.leader:
                producer.leader = node.leader = max(producer.leader, node.leader)
                merged = True
        else:
            node.flags |= INCOMPATIBLE
            if not producer.flags & (NHWC2NCHW | NCHW):  # the cause; a rejected producer is only its echo
                node.faults.append(("producer", producer))
    return merged


def _grow_clusters(nodes, values) -> bool:
    """``xnn_subgraph_rewrite_for_nchw`` up to the consumer check; False when no cluster has an exit."""
    update = False
    for n, node in enumerate(nodes):
        node.leader = n
        if node.flags & NCHW2NHWC:
            update |= _link(nodes, values, n)
    if not update:
        return False
    while update:
        update = False
        for n, node in enumerate(nodes):
            if not node.flags & INCOMPATIBLE and node.flags & (NCHW | NCHW2NHWC):
                update |= _link(nodes, values, n)
    for node in nodes:
        nodes[node.leader].flags |= node.flags & INCOMPATIBLE
    in_cluster = [node for node in nodes if not nodes[node.leader].flags & INCOMPATIBLE
                  and node.flags & (NCHW | NCHW2NHWC)]
    compatible_reads: dict[int, int] = {}
    for node in in_cluster:
        for v in node.inputs:
            if v not in values.static:
                compatible_reads[v] = compatible_reads.get(v, 0) + 1
    for node in in_cluster:
        for v in node.inputs:
            if v not in values.static and compatible_reads[v] != values.consumers.get(v, 0):
                nodes[node.leader].flags |= INCOMPATIBLE
                node.faults.append(("shared", v))
    return True


def _is_pointwise(node: _Node) -> bool:
    return node.kind == "fc" or (node.kind == "conv" and max(node.params["kernel"]) == 1)


def _evaluate_clusters(nodes, values) -> dict[int, dict]:
    """Per valid cluster (by leader): its nodes, 1×1 weight count and zeros."""
    clusters: dict[int, dict] = {}
    for node in nodes:
        if nodes[node.leader].flags & INCOMPATIBLE:
            continue
        if not node.flags & (NCHW | NCHW2NHWC):
            continue
        cluster = clusters.setdefault(node.leader, {"params": 0, "zeros": 0, "nodes": [], "layers": []})
        cluster["nodes"].append(node)
        if _is_pointwise(node):
            weights = _weights(node, values)
            zeros = int(np.count_nonzero(weights == 0))
            cluster["layers"].append((node.op.layer(values.graph), zeros / weights.size))
            cluster["params"] += weights.size
            cluster["zeros"] += zeros
    for cluster in clusters.values():
        cluster["sparse"] = cluster["zeros"] * 3 > cluster["params"] * 2
        # Only a cluster that reaches the network's mean carries the network: XNNPACK also rewrites a
        # fragment cut off before it (its last output is never checked), which is no sparse model.
        cluster["exit"] = any(node.capable & NCHW2NHWC for node in cluster["nodes"])
    return {leader: c for leader, c in clusters.items() if c["exit"]}


def _weights(node: _Node, values) -> np.ndarray:
    """A 1×1 layer's weights as [output channels, input channels]."""
    value = values.weights[node.inputs[1]]
    return value.reshape(value.shape[0], -1)


def block_height(weights: np.ndarray) -> int:
    """XNNPACK's output-channel block for a [C_out, C_in] matrix: 4 when the non-zero 4-blocks hold
    ≥ 90 % non-zeros, else 2 when the 2-blocks do, else 1 (``xnn_analyze_f32_spmm_w``)."""
    nonzero = weights != 0
    c_out = nonzero.shape[0]
    rows4, rows2 = c_out // 4 * 4, c_out // 2 * 2
    quads = nonzero[:rows4].reshape(-1, 4, nonzero.shape[1])
    pairs = nonzero[:rows2].reshape(-1, 2, nonzero.shape[1])
    nnz4, blocks4 = int(quads.sum()), int(quads.any(axis=1).sum())
    nnz2, blocks2 = int(pairs.sum()), int(pairs.any(axis=1).sum())
    if nnz4 * 5 >= blocks4 * 18:
        return 4
    if nnz2 * 5 >= blocks2 * 9:
        return 2
    return 1


# --- the report ---------------------------------------------------------------------------------------

_ROLES = {"fc": "pointwise", "dwconv": "depthwise", "pad": "pad", "reduce": "mean", "unary": "activation"}


def _role(node: _Node) -> str:
    if node.kind == "conv":
        return "pointwise" if max(node.params["kernel"]) == 1 else "stem" if node.params["kernel"] == (3, 3) \
            else "conv"
    if node.kind == "binary":
        return node.params["operator"].lower()
    return _ROLES.get(node.kind, "other")


def _verdict(graph, nodes, undelegated, hint, exit_found, clusters, values) -> Verdict:
    by_op = {node.op.index: node for node in nodes if "aux" not in node.params}
    running = {leader for leader, c in clusters.items() if c["sparse"]}

    def on_path(node: _Node) -> bool:  # the stem (NHWC -> NCHW) included
        return node.leader in running and bool(node.flags & (NCHW | NCHW2NHWC | NHWC2NCHW))

    relevant = _feeding_an_exit(nodes, values)
    fused_pads = {n.params["fused_pad"]: n for n in nodes if "fused_pad" in n.params}
    reports, blocks = [], {}
    for op in graph.operators:
        layer = op.layer(graph)
        if op.index in undelegated:
            reports.append(OpReport(op.index, op.op, layer, "other", False, undelegated[op.index]))
            continue
        if op.index in fused_pads:  # now the convolution's padding
            reports.append(OpReport(op.index, op.op, layer, "pad", on_path(fused_pads[op.index]), None))
            continue
        node = by_op.get(op.index)
        if node is None:  # DENSIFY / DEQUANTIZE of constants: weights, unpacked at load time
            reports.append(OpReport(op.index, op.op, layer, "weights", False, None))
            continue
        sparse = on_path(node)
        why = None
        if not sparse and id(node) in relevant:
            why = node.reason or (_fault_text(graph, node.faults[0]) if node.faults else None)
            leader = nodes[node.leader]
            if why is None and node.leader in clusters and not clusters[node.leader]["sparse"]:
                why = "its cluster's 1x1 weights are not more than 2/3 zeros"
            elif why is None and leader.flags & INCOMPATIBLE:
                why = "its CHW cluster was rejected (see the reasons)"
        report = OpReport(op.index, op.op, layer, _role(node), sparse, why)
        if _is_pointwise(node):
            weights = _weights(node, values)
            report.zero_fraction = round(float(np.mean(weights == 0)), 4)
            if sparse:
                report.block = blocks[layer] = block_height(weights)
        reports.append(report)
    largest = max(clusters.values(), key=lambda c: c["params"], default=None)
    fraction = round(largest["zeros"] / largest["params"], 4) if largest and largest["params"] else None
    accepted = hint and bool(running)
    reasons = [] if accepted else _reasons(graph, nodes, hint, exit_found, clusters, relevant)
    return Verdict(accepted, reasons, hint, fraction, THRESHOLD, blocks, reports)


def _feeding_an_exit(nodes, values) -> set[int]:
    """ids of the CHW-capable nodes a MEAN / SUM / DEPTH_TO_SPACE exit can be reached from: the part
    of the graph a cluster would cover (what hangs after the exit, e.g. a classifier, is not)."""
    seen, stack = set(), [n for n in nodes if n.capable & NCHW2NHWC]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        for v in node.inputs:
            if v in values.producer and v not in values.static:
                stack.append(nodes[values.producer[v]])
    return seen


def _fault_text(graph, fault) -> str:
    kind, what = fault
    if kind == "producer":
        return (f"reads op {what.op.index} {what.op.op} '{what.op.layer(graph)}' ({_role(what)}), which cannot run "
                f"in CHW: {what.reason}")
    if kind == "external":
        return ("reads a value that is a model input or output, or comes from an op XNNPACK does not run (such "
                "values are external to XNNPACK's subgraph and stay NHWC)")
    return "a value it reads is also read outside the CHW cluster (or is a model output)"


def _reasons(graph, nodes, hint, exit_found, clusters, relevant) -> list[str]:
    """Why no cluster runs sparse: root causes first (the op that cannot run in CHW, named once)."""
    reasons = []
    if not hint:
        reasons.append("no DENSIFY op: the 1x1 weights are stored dense, so the TFLite delegate never asks XNNPACK "
                       "for sparse inference (export the tflite_sparse format)")
    if not exit_found:
        reasons.append("no cluster can form: no MEAN / SUM of a CHW-capable op ends the network")
        reasons += [f"op {node.op.index} {node.op.op} '{node.op.layer(graph)}' ({_role(node)}) cannot run in CHW: "
                    f"{node.reason}" for node in nodes if node.kind in ("conv", "dwconv") and not node.capable]
    for node in nodes:
        if id(node) not in relevant:
            continue
        for fault in node.faults:
            if fault[0] == "producer":
                producer = fault[1]
                reasons.append(f"op {producer.op.index} {producer.op.op} '{producer.op.layer(graph)}' "
                               f"({_role(producer)}) cannot run in CHW: {producer.reason}")
            else:
                reasons.append(f"op {node.op.index} {node.op.op} '{node.op.layer(graph)}': {_fault_text(graph, fault)}")
    for cluster in clusters.values():
        if not cluster["sparse"]:
            fraction = cluster["zeros"] / cluster["params"] if cluster["params"] else 0.0
            densest = sorted(cluster["layers"], key=lambda layer: layer[1])[:3]
            reasons.append(f"the CHW cluster's 1x1 weights are {fraction:.3f} zeros ({cluster['zeros']} of "
                           f"{cluster['params']} in {len(cluster['layers'])} layers): XNNPACK needs more than 2/3 "
                           f"(least sparse: {', '.join(f'{name} {zeros:.2f}' for name, zeros in densest)})")
    unique = list(dict.fromkeys(reasons))
    return unique or ["no CHW cluster"]

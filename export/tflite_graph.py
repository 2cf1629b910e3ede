"""A ``.tflite`` flatbuffer read into plain Python: operators, tensors and constant values, with
TFLite sparse tensors (``EXPERIMENTAL_SPARSITY``) decoded to dense arrays.

The flatbuffer is parsed with TensorFlow's own schema classes (``flatbuffer_utils``), nothing is
run: the structural checks that use it must also work on files no interpreter here can run.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from onexn_tf.errors import InvalidArgument, first_line

_NUMPY_TYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 7: np.int16, 9: np.int8,
                10: np.float64}
FLOAT_TYPES = (0, 1)  # FLOAT32, FLOAT16


@dataclasses.dataclass
class Tensor:
    index: int
    name: str
    shape: tuple[int, ...]
    type: int
    value: np.ndarray | None  # a constant's (dense) value; None for activations
    sparse: bool  # stored as a TFLite sparse tensor (decoded into ``value``)


@dataclasses.dataclass
class Operator:
    index: int
    op: str  # builtin name, e.g. CONV_2D
    version: int
    inputs: list[int]  # -1: an absent optional input
    outputs: list[int]
    options: dict

    def layer(self, graph: "Graph") -> str:
        """A short name for messages: the Keras layer the op's output comes from."""
        return layer_name(graph.tensors[self.outputs[0]].name) if self.outputs else ""


@dataclasses.dataclass
class Graph:
    tensors: list[Tensor]
    operators: list[Operator]
    inputs: list[int]
    outputs: list[int]


def read(path) -> Graph:
    """The main subgraph of the ``.tflite`` file ``path``."""
    from tensorflow.lite.tools import flatbuffer_utils

    path = Path(path)
    if not path.is_file():
        raise InvalidArgument(f"{path}: no such .tflite file")
    raw = path.read_bytes()
    try:
        model = flatbuffer_utils.convert_bytearray_to_object(bytearray(raw))
        subgraph = model.subgraphs[0]
    except Exception as error:  # flatbuffers raises struct / index errors on foreign bytes
        raise InvalidArgument(f"{path} cannot be read as a TFLite model: it is truncated, damaged or another kind "
                              f"of file ({first_line(error)})") from None
    tensors = [_tensor(i, t, model.buffers, raw) for i, t in enumerate(subgraph.tensors)]
    operators = []
    for i, op in enumerate(subgraph.operators or []):
        code = model.operatorCodes[op.opcodeIndex]
        options = {k: v for k, v in vars(op.builtinOptions).items()} if op.builtinOptions is not None else {}
        operators.append(Operator(i, flatbuffer_utils.opcode_to_name(model, op.opcodeIndex), int(code.version),
                                  [int(v) for v in op.inputs], [int(v) for v in op.outputs], options))
    return Graph(tensors, operators, [int(i) for i in subgraph.inputs], [int(i) for i in subgraph.outputs])


def _tensor(index: int, t, buffers, raw: bytes) -> Tensor:
    shape = tuple(int(d) for d in t.shape) if t.shape is not None else ()
    name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
    buffer = buffers[t.buffer] if t.buffer < len(buffers) else None
    data = None
    if buffer is not None:
        if buffer.data is not None and len(buffer.data):
            data = np.asarray(buffer.data, dtype=np.uint8).tobytes()
        elif getattr(buffer, "offset", 0) > 1:  # buffers stored after the flatbuffer (models over 2 GB)
            data = raw[buffer.offset:buffer.offset + buffer.size]
    value = None
    if data is not None and t.type in _NUMPY_TYPES:
        flat = np.frombuffer(data, dtype=_NUMPY_TYPES[t.type])
        value = densify(flat, shape, t.sparsity) if t.sparsity is not None else flat.reshape(shape)
    return Tensor(index, name, shape, int(t.type), value, t.sparsity is not None)


def densify(values: np.ndarray, shape: tuple[int, ...], sparsity) -> np.ndarray:
    """The dense array a TFLite sparse tensor encodes (schema.fbs ``SparsityParameters``): the
    traversal visits the original dimensions, then the block dimensions, each DENSE (every index) or
    SPARSE_CSR (segments, indices); a leaf's position in the traversal is its index in ``values``."""
    order = [int(d) for d in sparsity.traversalOrder]
    block_map = [int(d) for d in (sparsity.blockMap if sparsity.blockMap is not None else [])]
    metadata = sparsity.dimMetadata
    rank = len(shape)
    block_sizes = [int(metadata[order.index(rank + j)].denseSize) for j in range(len(block_map))]
    positions = np.zeros(1, dtype=np.int64)
    coords: list[np.ndarray] = []  # per traversal level, the coordinate of every position
    for meta in metadata:  # level by level, all positions at once
        if meta.format == 0:  # DENSE: every index
            size = int(meta.denseSize)
            coords = [np.repeat(c, size) for c in coords] + [np.tile(np.arange(size), len(positions))]
            positions = (positions[:, None] * size + np.arange(size)[None, :]).ravel()
        else:  # SPARSE_CSR: the indices of each position's segment
            segments = np.asarray(meta.arraySegments.values, dtype=np.int64)
            indices = np.asarray(meta.arrayIndices.values, dtype=np.int64)
            starts, counts = segments[positions], segments[positions + 1] - segments[positions]
            offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
            coords = [np.repeat(c, counts) for c in coords]
            positions = np.repeat(starts, counts) + offsets
            coords.append(indices[positions])
    by_dim = {order[level]: c for level, c in enumerate(coords)}
    index = [by_dim[d] for d in range(rank)]
    for j, dim in enumerate(block_map):
        index[dim] = by_dim[dim] * block_sizes[j] + by_dim[rank + j]
    out = np.zeros(shape, dtype=values.dtype)
    out[tuple(index)] = values[positions]
    return out


_WEIGHTED_TF_OPS = ("Conv2D", "depthwise", "MatMul")


def layer_name(tensor_name: str) -> str:
    """``model/conv_pw_1_relu/Relu6;model/conv_pw_1/Conv2D12`` -> ``conv_pw_1``: the converter names a
    tensor after the TensorFlow ops fused into it (``;``-separated), each ``model/<Keras layer, which
    may contain '/'>/<op>``; the conv / matmul op names the layer that holds the weights."""
    names = [name.split("/") for name in tensor_name.split(";") if name.count("/") >= 2]
    if not names:
        return tensor_name
    weighted = [parts for parts in names if parts[-1].startswith(_WEIGHTED_TF_OPS)]
    return "/".join((weighted or names)[0][1:-1])


def producers(graph: Graph) -> dict[int, Operator]:
    return {t: op for op in graph.operators for t in op.outputs}


def consumers(graph: Graph) -> dict[int, list[Operator]]:
    out: dict[int, list[Operator]] = {}
    for op in graph.operators:
        for t in op.inputs:
            if t >= 0:
                out.setdefault(t, []).append(op)
    return out

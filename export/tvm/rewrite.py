"""Relax passes: every operation of a (pruned) MobileNet in NCHW becomes one of our kernels.

After ``from_onnx`` a layer reads ``conv2d(x, W) -> add(bias) -> activation [-> add(residual)]``; the
importer lowers ONNX ``Clip`` to ``call_tir`` of small max/min PrimFuncs, which
:func:`canonicalize_clip` turns back into ``R.maximum`` / ``R.minimum``. :func:`plan` walks the
bindings once and turns each anchor and the chain hanging off it into one :class:`Op`:

- a 1×1 convolution with constant weights: ``pointwise`` (BSR when at least ``min_sparsity`` of its
  bsr×1 blocks are zero, else the same kernel over a dense-stored matrix), or ``gemv`` on a 1×1 map;
- a K×K depthwise convolution (stride 1 or 2, any padding): ``depthwise``;
- another convolution over a few input channels (the stem): ``conv``, absorbing a preceding scalar
  affine (Keras' ``Rescaling``) into its input loads;
- a MatMul with a constant weight: ``gemv``; a spatial mean: ``pool``; ``x · s`` with a per-channel
  ``s`` (squeeze-excite): ``scale``; an NHWC → NCHW ``permute_dims`` of a few channels: ``to_nchw``.

The chain fused into a kernel's store: the bias, a clamp (ReLU, ReLU6, ``clip``), hard-swish
(``y · clip(y + 3, 0, 6) / 6``, as tf2onnx writes it) or hard-sigmoid, and, for pointwise layers, the
residual ``add`` that follows (MobileNetV2/V3 projections). A link joins the chain only if nothing
else uses the value before it. Whatever matches no pattern is left to TVM's own pipeline, and the
sidecar says what that was (:func:`leftover_ops`).
"""
from __future__ import annotations

import collections
import dataclasses
import re

import numpy as np
import tvm
from tvm import relax

from export.tvm import bsr as bsr_format
from export.tvm.kernels import Epilogue, Kernel, gemv, pointwise, reduce, spatial
from export.tvm.kernels import fused as fused_kernels
from onexn_tf.errors import InvalidArgument

_CLIP_FUNC = re.compile(r"^(maximum|minimum)\d*$")
Constant = tvm.ir.expr.GenericConst  # TVM 0.27's Relax constant (the tensor is ``.value``)
_VIEW_OPS = {"relax.reshape", "relax.permute_dims", "relax.flatten", "relax.squeeze", "relax.expand_dims"}


@dataclasses.dataclass
class Op:
    """One kernel call replacing a chain of bindings."""

    name: str  # the generated PrimFunc's name
    role: str  # pointwise | pointwise_dense | gemv | gemv_dense | depthwise | conv | pool | scale | to_nchw
    kernel: Kernel
    inputs: list  # relax expressions: the data inputs in kernel order
    constants: list  # numpy arrays in kernel order
    end: relax.Call  # the binding value the call replaces
    block_sparsity: float | None = None
    knobs: object = None
    after: tuple | None = None  # reshape the kernel's output to this relax shape
    end_var: object = None  # the relax var bound to ``end``
    parts: list | None = None  # a fused op: the ops it computes (run apart when its knobs say split)

    def record(self) -> dict:
        if self.kernel is None:
            return {"name": self.name, "role": self.role, "kind": None}
        if self.parts:
            return {"name": self.name, "role": self.role, "kind": self.kernel.kind,
                    "epilogue": self.kernel.epilogue.describe(),
                    "knobs": dataclasses.asdict(self.knobs) if self.knobs is not None else None,
                    "parts": [part.record() for part in self.parts]}
        return {"name": self.name, "role": self.role, "kind": self.kernel.kind,
                "shape": dataclasses.asdict(self.kernel.shape), "epilogue": self.kernel.epilogue.describe(),
                "block_sparsity": None if self.block_sparsity is None else round(self.block_sparsity, 6),
                "knobs": dataclasses.asdict(self.knobs) if self.knobs is not None else None}


@dataclasses.dataclass
class SkippedLayer:
    kind: str
    weight_shape: tuple
    reason: str


@dataclasses.dataclass
class Plan:
    mod: tvm.IRModule  # after canonicalize_clip
    ops: list  # Op
    skipped: list  # SkippedLayer: pointwise layers kept dense (and why), convolutions left to TVM

    @property
    def sparse_layers(self) -> list:
        return [op for op in self.all_ops if op.role in ("pointwise", "gemv")]

    @property
    def all_ops(self) -> list:
        """Every op, the parts of fused ones instead of them."""
        return [part for op in self.ops for part in (op.parts or [op])]


# --- constants and small helpers ------------------------------------------------------------------

_NUMPY_OPS = {"relax.isnan": np.isnan, "relax.where": np.where, "relax.negative": np.negative}


def _const(expr, var2val, depth: int = 8):
    """The value of a small constant expression (constants, reshape, isnan, where), evaluated in
    numpy, or None. The ONNX importer wraps biases and clip bounds in such expressions; evaluating
    them here is far cheaper than Relax FoldConstant, which compiles every one."""
    if isinstance(expr, Constant):
        return expr.value.numpy()
    if depth == 0:
        return None
    if isinstance(expr, relax.Var):
        bound = var2val.get(expr)
        return None if bound is None else _const(bound, var2val, depth - 1)
    if not isinstance(expr, relax.Call) or not isinstance(expr.op, tvm.ir.Op):
        return None
    if expr.op.name == "relax.reshape":
        value = _const(expr.args[0], var2val, depth - 1)
        shape = expr.args[1]
        if value is None or not isinstance(shape, relax.ShapeExpr):
            return None
        try:
            return value.reshape([int(d) for d in shape.values])
        except (TypeError, ValueError):
            return None
    op = _NUMPY_OPS.get(expr.op.name)
    if op is None:
        return None
    values = [_const(a, var2val, depth - 1) for a in expr.args]
    return None if any(v is None for v in values) else np.asarray(op(*values))


def _prim_float(expr):
    try:
        return float(expr.value.value)  # relax.PrimValue(FloatImm)
    except (AttributeError, TypeError):
        return None


def _scalar(expr, var2val):
    value = _const(expr, var2val)
    return float(value.reshape(())) if value is not None and value.size == 1 else None


def _is_op(expr, name: str) -> bool:
    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == name


def _static_shape(expr):
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    try:
        return tuple(int(d) for d in ty.shape.values)
    except (TypeError, AttributeError):
        return None


@relax.expr_functor.mutator
class _ClipCanonicalizer(relax.PyExprMutator):
    """call_tir(maximum|minimum, (x, scalar const)) -> R.maximum / R.minimum (so patterns can see it)."""

    def __init__(self, mod, var2val):
        super().__init__(mod)
        self.var2val = var2val

    def visit_call_(self, call):
        if call.op.same_as(tvm.ir.Op.get("relax.call_tir")) and isinstance(call.args[0], relax.GlobalVar):
            match = _CLIP_FUNC.match(call.args[0].name_hint)
            args = call.args[1].fields if isinstance(call.args[1], relax.Tuple) else []
            bound = _scalar(args[1], self.var2val) if match and len(args) == 2 else None
            if bound is not None:
                op = relax.op.maximum if match.group(1) == "maximum" else relax.op.minimum
                return op(self.visit_expr(args[0]), relax.const(bound, "float32"))
        return super().visit_call_(call)


def canonicalize_clip(mod: tvm.IRModule) -> tvm.IRModule:
    func = mod["main"]
    rewriter = _ClipCanonicalizer(mod, relax.analysis.get_var2val(func))
    rewriter.builder_.update_func(mod.get_global_var("main"), rewriter.visit_expr(func))
    return relax.transform.DeadCodeElimination()(rewriter.builder_.get())


def _users(func: relax.Function) -> dict:
    """Var -> the binding vars whose values use it (None: the function's result)."""
    users: dict = {}

    def collect(expr, owner):
        if isinstance(expr, relax.Var):
            users.setdefault(expr, []).append(owner)
        elif isinstance(expr, relax.Call):
            for arg in expr.args:
                collect(arg, owner)
        elif isinstance(expr, relax.Tuple):
            for field in expr.fields:
                collect(field, owner)
        elif isinstance(expr, relax.TupleGetItem):
            collect(expr.tuple_value, owner)

    for block in func.body.blocks:
        for binding in block.bindings:
            collect(binding.value, binding.var)
    collect(func.body.body, None)
    return users


# --- the chain after an anchor ---------------------------------------------------------------------

class _Graph:
    def __init__(self, func):
        self.var2val = relax.analysis.get_var2val(func)
        self.users = _users(func)

    def only_user(self, var):
        """The single binding var using ``var``, or None (several users, or the function's result)."""
        users = self.users.get(var, [])
        return users[0] if len(users) == 1 and users[0] is not None else None

    def value(self, var):
        return self.var2val.get(var)

    def unary(self, var, op: str, scalar=None, user=None):
        """The only user of ``var`` (or ``user``) if it is ``op(var, <scalar constant>)`` (``scalar``: its value)."""
        user = user if user is not None else self.only_user(var)
        if user is None:
            return None
        value = self.value(user)
        if not _is_op(value, op) or not value.args[0].same_as(var):
            return None
        if scalar is not None:
            found = _scalar(value.args[1], self.var2val) if len(value.args) > 1 else None
            if found is None or abs(found - scalar) > 1e-6 * max(1.0, abs(scalar)):
                return None
        return user

    def gate(self, var):
        """``clip(var + 3, 0, 6) / 6`` hanging off ``var`` through single-use links: its last var, or None."""
        step = None
        for user in self.users.get(var, []):
            if user is not None and step is None:
                step = self.unary(var, "relax.add", 3.0, user=user)
        if step is not None:
            lower = self.unary(step, "relax.maximum", 0.0)
            upper = self.unary(lower, "relax.minimum", 6.0) if lower is not None else None
            if upper is None:
                clip = self.only_user(step)
                value = self.value(clip) if clip is not None else None
                if _is_op(value, "relax.clip") and [_prim_float(a) for a in value.args[1:3]] == [0.0, 6.0]:
                    upper = clip
            if upper is not None:
                return self.unary(upper, "relax.multiply", 1.0 / 6.0)
        return None


def _follow_epilogue(graph: _Graph, var, c_out: int, *, allow_residual: bool, out_shape):
    """``(end var, Epilogue fields, residual expr)`` of the longest fusable chain after ``var``."""
    fields = {"bias": None, "lower": None, "upper": None, "hswish": False, "hsigmoid": False}
    end = var
    user = graph.only_user(end)
    value = graph.value(user) if user is not None else None
    if _is_op(value, "relax.add") and value.args[0].same_as(end):  # bias
        b = _const(value.args[1], graph.var2val)
        if b is not None and b.size == c_out and (b.ndim == 1 or (b.ndim == 4 and b.shape[1] == c_out)
                                                    or (b.ndim == 2 and b.shape[-1] == c_out)):
            fields["bias"] = b.astype(np.float32).reshape(-1)
            end = user
    # activation
    users = graph.users.get(end, [])
    if len(users) == 2 and None not in users:  # hard-swish: end * gate(end)
        gate_end = graph.gate(end)
        if gate_end is not None:
            last = graph.only_user(gate_end)
            value = graph.value(last) if last is not None else None
            if (_is_op(value, "relax.multiply") and last in users
                    and {a.same_as(end) or a.same_as(gate_end) for a in value.args} == {True}
                    and any(a.same_as(end) for a in value.args)):
                fields["hswish"], end = True, last
    if not fields["hswish"]:
        user = graph.only_user(end)
        value = graph.value(user) if user is not None else None
        if _is_op(value, "relax.nn.relu") and value.args[0].same_as(end):
            fields["lower"], end = 0.0, user
        elif _is_op(value, "relax.clip") and value.args[0].same_as(end):
            lo, hi = (_prim_float(a) for a in value.args[1:3])
            if lo is not None and hi is not None:
                fields["lower"], fields["upper"], end = lo, hi, user
        elif _is_op(value, "relax.maximum") and value.args[0].same_as(end) and _scalar(value.args[1], graph.var2val) is not None:
            fields["lower"], end = _scalar(value.args[1], graph.var2val), user
            upper = graph.unary(end, "relax.minimum")
            if upper is not None:
                fields["upper"], end = _scalar(graph.value(upper).args[1], graph.var2val), upper
        elif graph.gate(end) is not None:
            fields["hsigmoid"], end = True, graph.gate(end)
    residual = None
    if allow_residual:
        user = graph.only_user(end)
        value = graph.value(user) if user is not None else None
        if _is_op(value, "relax.add") and _const(value.args[0], graph.var2val) is None \
                and _const(value.args[1], graph.var2val) is None:
            other = value.args[1] if value.args[0].same_as(end) else value.args[0] if value.args[1].same_as(end) else None
            if other is not None and _static_shape(other) == tuple(out_shape):
                residual, end = other, user
    return end, fields, residual


def _epilogue(fields, residual) -> Epilogue:
    return Epilogue(bias=fields["bias"] is not None, lower=fields["lower"], upper=fields["upper"],
                    hswish=fields["hswish"], hsigmoid=fields["hsigmoid"], residual=residual is not None)


def _padded_bias(fields, rows: int) -> np.ndarray:
    bias = np.zeros(rows, np.float32)
    if fields["bias"] is not None:
        bias[:fields["bias"].size] = fields["bias"]
    return bias


def _bsr_constants(matrix, bsr: int, scale: int) -> list[np.ndarray]:
    """data, offsets/indices (input channel × ``scale``), indptr: never empty arrays."""
    data = matrix.data.reshape(-1) if matrix.nnz else np.zeros(bsr, np.float32)
    index = (matrix.indices * scale).astype(np.int32) if matrix.nnz else np.zeros(1, np.int32)
    return [data, index, matrix.indptr.astype(np.int32)]


# --- anchors ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class Settings:
    bsr: int = 4
    min_sparsity: float = 0.2
    dense: bool = False  # every matrix dense-stored: the dense baseline through the same kernels
    lanes: int = 8  # the target's vector lanes (a dense matrix-vector product stores 2 vectors a block)
    fuse: bool = True  # offer pointwise → depthwise pairs as fused kernels (the knob search may keep them apart)


class _Planner:
    def __init__(self, func, settings: Settings):
        self.graph = _Graph(func)
        self.settings = settings
        self.ops: list[Op] = []
        self.skipped: list[SkippedLayer] = []
        self.consumed: set = set()

    def _name(self, role):
        return f"onexn_{role}_{len(self.ops)}"

    def _matrix(self, weight, kind: str, dense_block: int):
        """(Bsr, block sparsity at the requested bsr, role suffix) for a [C_out, C_in] weight."""
        sparse = bsr_format.to_bsr(weight, self.settings.bsr)
        if not self.settings.dense and sparse.block_sparsity >= self.settings.min_sparsity:
            return sparse, sparse.block_sparsity, ""
        if not self.settings.dense:
            self.skipped.append(SkippedLayer(kind, tuple(weight.shape), f"block sparsity {sparse.block_sparsity:.3f} "
                                             f"below {self.settings.min_sparsity}"))
        return bsr_format.to_bsr(weight, dense_block), sparse.block_sparsity, "_dense"

    def visit(self, var, value):
        if var in self.consumed:
            return
        for match in (self._conv, self._matmul, self._pool, self._scale, self._to_nchw):
            if match(var, value):
                return

    def _add(self, role, kernel, inputs, constants, end_var, sparsity=None, after=None):
        op = Op(self._name(role), role, kernel, inputs, constants, self.graph.value(end_var), sparsity, after=after,
                end_var=end_var)
        self.ops.append(op)

    def fuse_pointwise_depthwise(self) -> None:
        """Each pointwise op whose only consumer is a depthwise op (nothing else reads the tensor between
        them) becomes one fused op with both as its parts (:mod:`kernels.fused`)."""
        fused, by_input = [], {}
        for op in self.ops:
            if op.role == "depthwise" and isinstance(op.inputs[0], relax.Var):
                by_input[op.inputs[0]] = op
        merged = {}
        for op in self.ops:
            dw = by_input.get(op.end_var) if op.role in ("pointwise", "pointwise_dense") else None
            if dw is None or op.kernel.epilogue.residual or len(self.graph.users.get(op.end_var, [])) != 1:
                continue
            shape = fused_kernels.FusedShape(op.kernel.shape, op.kernel.epilogue, dw.kernel.shape)
            merged[id(dw)] = Op(f"onexn_fused_{len(self.ops) + len(merged)}", "pointwise+depthwise",
                                Kernel("fused", shape, dw.kernel.epilogue), op.inputs, op.constants + dw.constants,
                                dw.end, op.block_sparsity, end_var=dw.end_var, parts=[op, dw])
        skip = {id(m.parts[0]) for m in merged.values()}
        for op in self.ops:
            if id(op) in skip:
                continue
            fused.append(merged.get(id(op), op))
        self.ops = fused

    def _consume_chain(self, start, end):
        """Mark the bindings from ``start`` to ``end`` consumed (walks users; the chain is linear but
        for hard-swish's two branches, which are consumed through the gate)."""
        stack, seen = [start], set()
        while stack:
            var = stack.pop()
            if var in seen:
                continue
            seen.add(var)
            self.consumed.add(var)
            if var.same_as(end):
                continue
            stack.extend(u for u in self.graph.users.get(var, []) if u is not None)

    def _conv(self, var, value):
        if not _is_op(value, "relax.nn.conv2d"):
            return False
        x, w = value.args
        weight = _const(w, self.graph.var2val)
        attrs = value.attrs
        shape = _static_shape(x)
        if weight is None or shape is None or weight.ndim != 4 or value.ty.dtype != "float32":
            return False
        if (attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW" or attrs.out_layout != "NCHW"
                or list(map(int, attrs.dilation)) != [1, 1]):
            self.skipped.append(SkippedLayer("conv2d", tuple(weight.shape), "dilated or non-NCHW convolution"))
            return False
        strides = list(map(int, attrs.strides))
        pads = tuple(int(p) for p in attrs.padding)  # top, left, bottom, right
        groups = int(attrs.groups)
        n, c_in, h, w_ = shape
        c_out, _, kh, kw = weight.shape
        out_shape = _static_shape(var)
        if (kh, kw) == (1, 1) and strides == [1, 1] and not any(pads) and groups == 1:
            return self._pointwise(var, x, weight.reshape(c_out, c_in), (n, c_in, h, w_), out_shape)
        if kh != kw or strides[0] != strides[1] or not spatial.supported(kh, strides[0]):
            self.skipped.append(SkippedLayer("conv2d", tuple(weight.shape), "kernel/stride without our kernel"))
            return False
        depthwise = groups == c_in == c_out and weight.shape[1] == 1
        if not depthwise and groups != 1:
            self.skipped.append(SkippedLayer("conv2d", tuple(weight.shape), "grouped convolution"))
            return False
        affine = None
        source = x
        if not depthwise and c_in <= 8:  # the stem: absorb a scalar affine on its input (Rescaling)
            source, affine = self._input_affine(x)
        end, fields, _ = _follow_epilogue(self.graph, var, c_out, allow_residual=False, out_shape=out_shape)
        kernel = Kernel("depthwise" if depthwise else "conv",
                        spatial.SpatialShape(n, c_in, h, w_, c_out, kh, strides[0], pads, depthwise, affine),
                        _epilogue(fields, None))
        consts = [weight.reshape(c_out, -1).astype(np.float32), _padded_bias(fields, c_out)]
        self._consume_chain(var, end)
        self._add("depthwise" if depthwise else "conv", kernel, [source], consts, end)
        return True

    def _input_affine(self, x):
        """(source, (a, b)) when ``x = add(multiply(source, a), b)`` with scalar constants used only here."""
        add = self.graph.value(x) if isinstance(x, relax.Var) else None
        if not _is_op(add, "relax.add") or self.graph.only_user(x) is None:
            return x, None
        b = _scalar(add.args[1], self.graph.var2val)
        mul_var = add.args[0]
        mul = self.graph.value(mul_var) if isinstance(mul_var, relax.Var) else None
        if b is None or not _is_op(mul, "relax.multiply") or self.graph.only_user(mul_var) is None:
            return x, None
        a = _scalar(mul.args[1], self.graph.var2val)
        if a is None:
            return x, None
        self.consumed.update({x, mul_var})
        return mul.args[0], (a, b)

    def _pointwise(self, var, x, weight, in_shape, out_shape):
        n, c_in, h, w_ = in_shape
        c_out = weight.shape[0]
        if h * w_ == 1:
            return self._gemv(var, x, weight, n, spatial_=True, out_shape=out_shape)
        end, fields, residual = _follow_epilogue(self.graph, var, c_out, allow_residual=True, out_shape=out_shape)
        matrix, sparsity, suffix = self._matrix(weight, "conv2d", 4)
        bsr = matrix.bsr
        shape = pointwise.PointwiseShape(n, c_in, h, w_, c_out, bsr, matrix.nnz)
        consts = _bsr_constants(matrix, bsr, h * w_) + [_padded_bias(fields, shape.block_rows * bsr)]
        self._consume_chain(var, end)
        inputs = [x] + ([residual] if residual is not None else [])
        self._add("pointwise" + suffix, Kernel("pointwise", shape, _epilogue(fields, residual)), inputs, consts, end,
                  sparsity)
        return True

    def _gemv(self, var, x, weight, batch, *, spatial_: bool, out_shape):
        c_out, c_in = weight.shape
        end, fields, residual = _follow_epilogue(self.graph, var, c_out, allow_residual=True, out_shape=out_shape)
        matrix, sparsity, suffix = self._matrix(weight, "conv2d" if spatial_ else "matmul",
                                                gemv.dense_block(self.settings.lanes))
        bsr = matrix.bsr
        shape = gemv.GemvShape(batch, c_in, c_out, bsr, matrix.nnz, spatial_)
        consts = _bsr_constants(matrix, bsr, 1) + [_padded_bias(fields, shape.block_rows * bsr)]
        self._consume_chain(var, end)
        inputs = [x] + ([residual] if residual is not None else [])
        self._add("gemv" + suffix, Kernel("gemv", shape, _epilogue(fields, residual)), inputs, consts, end, sparsity)
        return True

    def _matmul(self, var, value):
        if not _is_op(value, "relax.matmul"):
            return False
        x, w = value.args
        shape = _static_shape(x)
        weight = _const(w, self.graph.var2val)
        if weight is None or shape is None or len(shape) != 2 or weight.ndim != 2:
            return False
        return self._gemv(var, x, weight.T.astype(np.float32), shape[0], spatial_=False, out_shape=_static_shape(var))

    def _pool(self, var, value):
        if not _is_op(value, "relax.mean"):
            return False
        shape = _static_shape(value.args[0])
        axes = sorted(int(a) % 4 for a in value.attrs.axis) if value.attrs.axis is not None and shape else None
        if shape is not None and len(shape) == 4 and axes and all(shape[a] == 1 for a in axes):
            self.consumed.add(var)  # the mean over axes of extent 1: a view
            self._add("view", None, [value.args[0]], [], var, after=_static_shape(var))
            return True
        if shape is None or len(shape) != 4 or axes != [2, 3]:
            return False
        n, c, h, w_ = shape
        after = None if bool(value.attrs.keepdims) else _static_shape(var)
        self.consumed.add(var)
        self._add("pool", Kernel("pool", reduce.PoolShape(n, c, h, w_)), [value.args[0]], [], var, after=after)
        return True

    def _scale(self, var, value):
        if not _is_op(value, "relax.multiply"):
            return False
        a, b = (_static_shape(arg) for arg in value.args)
        if a is None or b is None or len(a) != 4 or len(b) != 4:
            return False
        if b == (a[0], a[1], 1, 1):
            x, s = value.args
        elif a == (b[0], b[1], 1, 1):
            (s, x), a = value.args, b
        else:
            return False
        if _const(s, self.graph.var2val) is not None or _const(x, self.graph.var2val) is not None:
            return False
        self.consumed.add(var)
        self._add("scale", Kernel("scale", reduce.ScaleShape(*a)), [x, s], [], var)
        return True

    def _to_nchw(self, var, value):
        if not _is_op(value, "relax.permute_dims"):
            return False
        shape = _static_shape(value.args[0])
        axes = [int(a) for a in value.attrs.axes] if value.attrs.axes is not None else None
        if shape is None or len(shape) != 4 or axes != [0, 3, 1, 2] or shape[3] > 4:
            return False
        n, h, w_, c = shape
        self.consumed.add(var)
        self._add("to_nchw", Kernel("to_nchw", reduce.ToNchwShape(n, c, h, w_)), [value.args[0]], [], var)
        return True


def plan(mod: tvm.IRModule, settings: Settings = Settings()) -> Plan:
    """Find every operation of ``mod["main"]`` that one of our kernels will compute (default knobs)."""
    bsr_format.check_block(settings.bsr, 1)
    if not 0.0 <= settings.min_sparsity <= 1.0:
        raise InvalidArgument(f"min_sparsity={settings.min_sparsity} must be in [0, 1]")
    mod = canonicalize_clip(mod)
    func = mod["main"]
    planner = _Planner(func, settings)
    for block in func.body.blocks:
        for binding in block.bindings:
            planner.visit(binding.var, binding.value)
    if settings.fuse:
        planner.fuse_pointwise_depthwise()
    return Plan(mod, planner.ops, planner.skipped)


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod, by_end, lanes):
        super().__init__(mod)
        self.by_end = by_end  # end binding value (relax.Call) -> Op
        self.lanes = lanes

    def visit_call_(self, call):
        op = self.by_end.get(call)
        if op is not None:
            return self._emit(op)
        return super().visit_call_(call)

    def _emit(self, op: Op, inputs=None):
        if op.kernel is None:  # a view
            return relax.op.reshape(self.visit_expr(op.inputs[0]), op.after)
        if op.parts and op.knobs.split:  # the fused pair apart, each with its own knobs
            first, second = op.parts
            middle = self.builder_.emit(self._emit(first))
            return self._emit(second, inputs=[middle] + [self.visit_expr(x) for x in second.inputs[1:]])
        func = op.kernel.build(op.knobs, self.lanes, op.name)
        gv = self.builder_.add_func(func, op.name)
        inputs = inputs if inputs is not None else [self.visit_expr(x) for x in op.inputs]
        args = inputs + [relax.const(c) for c in op.kernel.constants_for(op.knobs, op.constants)]
        result = relax.call_tir(gv, relax.Tuple(args), relax.TensorType(op.kernel.output(), "float32"))
        if op.after is not None:
            return relax.op.reshape(self.builder_.emit(result), op.after)
        return result


def apply_plan(plan_: Plan, knobs_for, lanes: int) -> tvm.IRModule:
    """The module with every planned op replaced; ``knobs_for(op) -> knobs`` picks each kernel's schedule."""
    if not plan_.ops:
        return plan_.mod
    for op in plan_.ops:
        for part in op.parts or []:
            part.knobs = knobs_for(part)
        op.knobs = knobs_for(op) if op.kernel is not None else None
    rewriter = _Rewriter(plan_.mod, {op.end: op for op in plan_.ops}, lanes)
    rewriter.builder_.update_func(plan_.mod.get_global_var("main"), rewriter.visit_expr(plan_.mod["main"]))
    return relax.transform.DeadCodeElimination()(rewriter.builder_.get())


def leftover_ops(mod: tvm.IRModule) -> dict:
    """Relax operators still computed by TVM's own pipeline (views excluded): name -> count."""
    counts = collections.Counter()
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
                name = value.op.name
                if name == "relax.call_tir" and isinstance(value.args[0], relax.GlobalVar) \
                        and value.args[0].name_hint.startswith("onexn_"):
                    continue
                if name not in _VIEW_OPS:
                    counts[name if name != "relax.call_tir" else f"call_tir:{value.args[0].name_hint}"] += 1
    return dict(counts)

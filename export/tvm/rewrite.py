"""Relax passes: 1×1 convolutions (and MatMul) with block-sparse constant weights -> BSR ``call_tir``.

After ``from_onnx`` a pointwise layer reads ``conv2d(x, W) -> add(bias) -> max(0) -> min(6)`` (the
importer lowers ONNX ``Clip`` to ``call_tir`` of small max/min PrimFuncs, which
:func:`canonicalize_clip` turns back into ``R.maximum`` / ``R.minimum``). :func:`rewrite_bsr` finds
every such chain whose weight is a constant, 1×1, stride 1, unpadded and at least ``min_sparsity``
block-sparse in (bsr × 1) blocks, and replaces the whole chain by one call to a BSR kernel
(:mod:`export.tvm.kernels`) with the bias and activation fused; the weight becomes three constants
(data, indices, indptr). Everything else is left to TVM's own pipeline.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import tvm
from tvm import relax

from export.tvm import bsr as bsr_format
from export.tvm import kernels
from onexn_tf.errors import InvalidArgument

_CLIP_FUNC = re.compile(r"^(maximum|minimum)\d*$")


@dataclasses.dataclass
class RewrittenLayer:
    name: str  # the generated kernel's name
    kind: str  # "conv2d" or "matmul"
    shape: kernels.ConvShape
    epilogue: kernels.Epilogue
    knobs: kernels.Knobs
    block_sparsity: float


@dataclasses.dataclass
class SkippedLayer:
    kind: str
    weight_shape: tuple
    reason: str


Constant = tvm.ir.expr.GenericConst  # TVM 0.27's Relax constant (the tensor is ``.value``)


def _array(constant) -> np.ndarray:
    return constant.value.numpy()


_NUMPY_OPS = {"relax.isnan": np.isnan, "relax.where": np.where, "relax.negative": np.negative}


def _const(expr, var2val, depth: int = 8):
    """The value of a small constant expression (constants, reshape, isnan, where), evaluated in
    numpy, or None. The ONNX importer wraps biases and clip bounds in such expressions; evaluating
    them here is far cheaper than Relax FoldConstant, which compiles every one."""
    if isinstance(expr, Constant):
        return _array(expr)
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


def _users(func: relax.Function) -> dict:
    """Var -> the binding vars whose values use it."""
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


@dataclasses.dataclass
class _Chain:
    kind: str
    layer_call: relax.Call
    data: relax.Expr
    weight: np.ndarray  # [C_out, C_in]
    bias: np.ndarray | None
    lower: float | None
    upper: float | None
    out_shape: tuple


def _follow_epilogue(var, var2val, users, c_out):
    """The longest add(bias) -> max/relu -> min chain hanging off ``var``; returns (end var, parts)."""
    bias = lower = upper = None
    stage = 0  # 0: expect bias, 1: expect lower bound, 2: expect upper bound
    end = var
    while len(users.get(end, [])) == 1 and users[end][0] is not None:
        nxt = users[end][0]
        value = var2val[nxt]
        args = list(value.args) if isinstance(value, relax.Call) else []
        if not args or not args[0].same_as(end):
            break
        b = _const(args[1], var2val) if stage == 0 and _is_op(value, "relax.add") else None
        if b is not None:
            b = b.astype(np.float32)
            if b.size != c_out or b.ndim not in (1, 4) or (b.ndim == 4 and b.shape[1] != c_out):
                break
            bias, stage = b.reshape(-1), 1
        elif stage <= 1 and _is_op(value, "relax.nn.relu"):
            lower, stage = 0.0, 2
        elif stage <= 1 and _is_op(value, "relax.maximum") and _scalar(args[1], var2val) is not None:
            lower, stage = _scalar(args[1], var2val), 2
        elif stage <= 2 and _is_op(value, "relax.minimum") and _scalar(args[1], var2val) is not None:
            upper, stage = _scalar(args[1], var2val), 3
        elif stage <= 1 and _is_op(value, "relax.clip"):
            lo, hi = (_prim_float(a) for a in args[1:3])
            if lo is None or hi is None:
                break
            lower, upper, stage = lo, hi, 3
        else:
            break
        end = nxt
        if stage == 3:
            break
    return end, bias, lower, upper


def _as_chain(var, value, var2val, users):
    """A rewritable layer starting at binding ``var = value``, or (None, reason) / (None, None)."""
    if _is_op(value, "relax.nn.conv2d"):
        x, w = value.args
        weight = _const(w, var2val)
        if weight is None:
            return None, None
        attrs = value.attrs
        if weight.ndim != 4 or weight.shape[2:] != (1, 1):
            return None, None  # not pointwise: not ours
        if (list(map(int, attrs.strides)) != [1, 1] or any(int(p) for p in attrs.padding)
                or list(map(int, attrs.dilation)) != [1, 1] or int(attrs.groups) != 1
                or attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW" or attrs.out_layout != "NCHW"):
            return None, "strided, padded, grouped or non-NCHW 1x1 convolution"
        shape = _static_shape(x)
        if shape is None or value.ty.dtype != "float32":
            return None, "dynamic shape or non-float32"
        end, bias, lower, upper = _follow_epilogue(var, var2val, users, weight.shape[0])
        out_shape = (shape[0], weight.shape[0], shape[2], shape[3])
        return (end, _Chain("conv2d", value, x, weight.reshape(weight.shape[:2]), bias, lower, upper, out_shape)), None
    if _is_op(value, "relax.matmul"):
        x, w = value.args
        shape = _static_shape(x)
        weight = _const(w, var2val)
        if weight is None or shape is None or len(shape) != 2 or weight.ndim != 2:
            return None, None
        weight = weight.T  # [in, out] -> [out, in]
        end, bias, lower, upper = _follow_epilogue(var, var2val, users, weight.shape[0])
        return (end, _Chain("matmul", value, x, weight, bias, lower, upper, (shape[0], weight.shape[0]))), None
    return None, None


@dataclasses.dataclass
class Plan:
    """What :func:`apply_plan` will rewrite: found by :func:`plan_bsr`, knobs chosen in between."""

    mod: tvm.IRModule  # after canonicalize_clip
    layers: list  # RewrittenLayer
    matrices: list  # bsr_format.Bsr, one per layer
    skipped: list  # SkippedLayer
    chains: list  # (end binding value, _Chain), one per layer


@relax.expr_functor.mutator
class _BsrRewriter(relax.PyExprMutator):
    def __init__(self, mod, by_end):
        super().__init__(mod)
        self.by_end = by_end  # end binding value (relax.Call) -> (_Chain, RewrittenLayer, Bsr)

    def visit_call_(self, call):
        found = self.by_end.get(call)
        if found is not None:
            return self._emit(*found)
        return super().visit_call_(call)

    def _emit(self, chain, layer, matrix):
        shape = layer.shape
        func = kernels.bsr_conv1x1(shape, layer.epilogue, layer.knobs, name=layer.name)
        gv = self.builder_.add_func(func, layer.name)
        x = self.visit_expr(chain.data)
        if chain.kind == "matmul":
            x = self.builder_.emit(relax.op.reshape(x, (shape.batch, shape.c_in, 1, 1)))
        rows = shape.block_rows * shape.bsr
        bias = np.zeros(rows, np.float32)
        if chain.bias is not None:
            bias[:shape.c_out] = chain.bias
        data = matrix.data if matrix.nnz else np.zeros((1, shape.bsr), np.float32)
        indices = matrix.indices if matrix.nnz else np.zeros((1,), np.int32)
        args = [x] + [relax.const(a) for a in (data, indices, matrix.indptr, bias)]
        out = relax.TensorType((shape.batch, shape.c_out, shape.height, shape.width), "float32")
        result = relax.call_tir(gv, relax.Tuple(args), out)
        if chain.kind == "matmul":
            return relax.op.reshape(self.builder_.emit(result), chain.out_shape)
        return result


def plan_bsr(mod: tvm.IRModule, *, bsr: int = 4, bsc: int = 1, min_sparsity: float = 0.2) -> Plan:
    """Find the pointwise layers of ``mod["main"]`` that will become BSR kernels (default knobs)."""
    bsr_format.check_block(bsr, bsc)
    if not 0.0 <= min_sparsity <= 1.0:
        raise InvalidArgument(f"min_sparsity={min_sparsity} must be in [0, 1]")
    mod = canonicalize_clip(mod)
    func = mod["main"]
    var2val = relax.analysis.get_var2val(func)
    users = _users(func)
    plan = Plan(mod, [], [], [], [])
    for block in func.body.blocks:
        for binding in block.bindings:
            found, reason = _as_chain(binding.var, binding.value, var2val, users)
            if found is None:
                if reason:
                    plan.skipped.append(SkippedLayer("conv2d", (), reason))
                continue
            end, chain = found
            matrix = bsr_format.to_bsr(chain.weight, bsr)
            if matrix.block_sparsity < min_sparsity:
                plan.skipped.append(SkippedLayer(chain.kind, chain.weight.shape,
                                                 f"block sparsity {matrix.block_sparsity:.3f} below {min_sparsity}"))
                continue
            if chain.kind == "conv2d":
                n, c_in, h, w = _static_shape(chain.data)
            else:
                (n, c_in), h, w = _static_shape(chain.data), 1, 1
            shape = kernels.ConvShape(n, c_in, h, w, chain.weight.shape[0], bsr, matrix.nnz)
            epilogue = kernels.Epilogue(chain.bias is not None, chain.lower, chain.upper)
            plan.layers.append(RewrittenLayer(f"bsr_{chain.kind}_{len(plan.layers)}", chain.kind, shape, epilogue,
                                              kernels.Knobs(), matrix.block_sparsity))
            plan.matrices.append(matrix)
            plan.chains.append((var2val[end], chain))
    return plan


def apply_plan(plan: Plan, knobs_for=None) -> tvm.IRModule:
    """The module with every planned layer replaced; ``knobs_for(shape, epilogue) -> Knobs`` picks
    each kernel's schedule (else the layer's current knobs)."""
    if not plan.layers:
        return plan.mod
    by_end = {}
    for layer, matrix, (end, chain) in zip(plan.layers, plan.matrices, plan.chains):
        if knobs_for is not None:
            layer.knobs = knobs_for(layer.shape, layer.epilogue)
        by_end[end] = (chain, layer, matrix)
    rewriter = _BsrRewriter(plan.mod, by_end)
    rewriter.builder_.update_func(plan.mod.get_global_var("main"), rewriter.visit_expr(plan.mod["main"]))
    return relax.transform.DeadCodeElimination()(rewriter.builder_.get())


def rewrite_bsr(mod: tvm.IRModule, *, bsr: int = 4, bsc: int = 1, min_sparsity: float = 0.2,
                knobs_for=None) -> tuple[tvm.IRModule, list[RewrittenLayer], list[SkippedLayer]]:
    """Replace eligible pointwise layers of ``mod["main"]`` by BSR kernels: :func:`plan_bsr` then
    :func:`apply_plan`. Returns the new module, the rewritten layers and the layers left dense (with why)."""
    plan = plan_bsr(mod, bsr=bsr, bsc=bsc, min_sparsity=min_sparsity)
    return apply_plan(plan, knobs_for), plan.layers, plan.skipped

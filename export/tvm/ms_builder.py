"""MetaSchedule builder/exporter functions, run inside its worker processes.

Kept apart from the rest of the package so a worker imports only TVM: each builder batch starts new
workers, and importing TensorFlow (through ``onexn_tf``) or ``tvm.s_tir.tensor_intrin`` there would
eat the build timeout.

``tvm.s_tir.tensor_intrin`` (imported by MetaSchedule's ``default_build`` and by every
``TuneContext``) registers every backend's tensor intrinsics; its CUDA part alone takes ~40 s to
parse here. CPU targets can only use the x86 and Arm ones, which :func:`cpu_tensor_intrinsics`
registers in ~2 s under the same module name, so later imports of the package are no-ops.
"""
import importlib
import importlib.util
import os
import sys
import tempfile
import types


def cpu_tensor_intrinsics() -> None:
    """Register only the CPU (x86, Arm) tensor intrinsics as ``tvm.s_tir.tensor_intrin``."""
    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        return
    import tvm.s_tir

    spec = importlib.util.find_spec(name)
    package = types.ModuleType(name, "CPU tensor intrinsics only (see export.tvm.ms_builder)")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules[name] = package
    tvm.s_tir.tensor_intrin = package
    for part in ("x86", "arm_cpu"):
        setattr(package, part, importlib.import_module(f"{name}.{part}"))


def build_without_intrinsics(mod, target, _params):
    """``default_build`` with only the CPU tensor intrinsics registered."""
    cpu_tensor_intrinsics()
    import tvm.driver
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm.driver.build(mod, target=target)


def export_with(compiler, mod) -> str:
    """A shared library linked by ``compiler`` (a cross compiler for an RPC device; None: the host's)."""
    from tvm.support import cc

    path = os.path.join(tempfile.mkdtemp(), "tuned.so")
    mod.export_library(path, fcompile=cc.cross_compiler(compiler) if compiler else None)
    return path

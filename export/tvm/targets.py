"""Compilation targets by name, as TVM 0.27 JSON target dicts, and how to link a library for each.

TVM 0.27 no longer parses CLI target strings; a target is a dict. MetaSchedule needs ``num-cores``.
Linking: the host uses the system C++ compiler; ``aarch64-linux`` the Debian cross toolchain
(``apt install g++-aarch64-linux-gnu``); ``android-arm64`` the NDK compiler named by ``TVM_NDK_CC``
(without the NDK an Android link leaves libc symbols unresolved). An output ending in ``.tar`` needs
no linker: it holds the object files, to be linked on or for the device later.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from onexn_tf.errors import InvalidArgument

TARGET_NAMES = ("host", "aarch64-linux", "android-arm64")
LIBRARY_SUFFIXES = (".so", ".tar")
_CROSS = {"aarch64-linux": "aarch64-linux-gnu-g++"}


@dataclasses.dataclass(frozen=True)
class TargetSpec:
    name: str
    config: dict  # the JSON target dict

    @property
    def is_host(self) -> bool:
        return self.name == "host"

    def target(self):
        import tvm

        return tvm.target.Target(self.config)

    def vector_lanes(self) -> int:
        """fp32 lanes of the target's widest vector unit (AVX-512: 16, AVX2: 8, NEON: 4)."""
        from tvm.target import codegen

        target = self.target()
        if "aarch64" in self.config.get("mtriple", "") or self.config.get("mtriple", "").startswith("arm"):
            return 4
        if codegen.target_has_features(["avx512f"], target):
            return 16
        if codegen.target_has_features(["avx2"], target) or codegen.target_has_features(["avx"], target):
            return 8
        return 4


def physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def check_name(name: str) -> str:
    if name not in TARGET_NAMES:
        raise InvalidArgument(f"unknown target {name!r}: choose one of {', '.join(TARGET_NAMES)}")
    return name


def resolve(name: str, *, mcpu: str | None = None, num_cores: int | None = None) -> TargetSpec:
    """The target dict for ``name`` with optional ``--mcpu`` / ``--num-cores`` overrides."""
    from tvm.target import codegen

    check_name(name)
    if num_cores is not None and num_cores < 1:
        raise InvalidArgument(f"--num-cores={num_cores} must be >= 1")
    if name == "host":
        config = {"kind": "llvm", "mcpu": mcpu or codegen.llvm_get_system_cpu(),
                  "num-cores": num_cores or physical_cores()}
    elif name == "aarch64-linux":
        config = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": mcpu or "cortex-a72",
                  "mattr": ["+neon"], "num-cores": num_cores or 4}
    else:
        config = {"kind": "llvm", "mtriple": "aarch64-linux-android", "mcpu": mcpu or "cortex-a76",
                  "mattr": ["+neon"], "num-cores": num_cores or 4}
    if mcpu is not None and not codegen.llvm_is_valid_cpu(mcpu, config.get("mtriple", "")):
        raise InvalidArgument(f"--mcpu={mcpu!r} is not a CPU LLVM knows for target {name!r}")
    return TargetSpec(name, config)


def check_library_path(path) -> Path:
    path = Path(path)
    if path.suffix not in LIBRARY_SUFFIXES:
        raise InvalidArgument(f"output {path} must end in {' or '.join(LIBRARY_SUFFIXES)} "
                              f"(.so: a linked library; .tar: object files, no linker needed)")
    return path


def cross_compiler_name(spec: TargetSpec) -> str | None:
    """The C++ compiler that links for ``spec`` (None: the host's default)."""
    if spec.is_host:
        return None
    if spec.name == "android-arm64":
        return os.environ.get("TVM_NDK_CC")
    return _CROSS[spec.name]


def linker(spec: TargetSpec, output) -> tuple:
    """``(fcompile, description)`` for ``export_library`` writing ``output``; fails early and clearly
    when the needed compiler is missing."""
    from tvm.support import cc, ndk, tar

    output = check_library_path(output)
    if output.suffix == ".tar":
        return tar.tar, "tar of object files"
    if spec.is_host:
        return None, "system C++ compiler"
    compiler = cross_compiler_name(spec)
    if spec.name == "android-arm64":
        if not compiler or not shutil.which(compiler):
            raise InvalidArgument(
                f"no Android linker: set TVM_NDK_CC to the NDK's aarch64-linux-android<API>-clang++ "
                f"(now {compiler!r}), or write a .tar of objects instead of {output.name}")
        return ndk.create_shared, f"NDK {compiler}"
    if not shutil.which(compiler):
        raise InvalidArgument(f"cross compiler {compiler} not found: apt install g++-aarch64-linux-gnu, "
                              f"or write a .tar of objects instead of {output.name}")
    return cc.cross_compiler(compiler), compiler

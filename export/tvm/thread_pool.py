"""Our multi-core libraries carry their own thread pool (``thread_pool.cc``, which says why and how it
takes the place of TVM's): this links it in, and loads compiled modules the way they will run."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

SOURCE = Path(__file__).with_name("thread_pool.cc")


def linking(fcompile, cores: int, output) -> object:
    """The ``fcompile`` for ``export_library`` writing ``output`` that also compiles our pool into the
    library, for ``cores`` threads; ``fcompile`` None is the host's C++ compiler. A one-core library has
    no parallel loop and a .tar of objects is linked by its user: both keep ``fcompile``."""
    from tvm.support import cc

    if cores <= 1 or str(output).endswith(".tar"):
        return fcompile
    import tvm_ffi.libinfo

    base = fcompile or cc.create_shared
    headers = [f"-I{tvm_ffi.libinfo.find_include_path()}", f"-I{tvm_ffi.libinfo.find_dlpack_include_path()}"]

    def compile_with_pool(out, objects, options=None):
        objects = [objects] if isinstance(objects, str) else list(objects)
        # nodelete: the pool's threads run the library's code, which must stay mapped after dlclose
        flags = list(options or []) + headers + ["-O2", f"-DONEXN_POOL_THREADS={int(cores)}", "-Wl,-z,nodelete"]
        return base(out, objects + [str(SOURCE)], options=flags)

    for attribute in ("output_format", "object_format", "get_target_triple"):
        if hasattr(base, attribute):
            setattr(compile_with_pool, attribute, getattr(base, attribute))
    return compile_with_pool


def load(built, cores: int, session=None, fcompile=None):
    """``built`` (from ``tvm.compile`` or ``relax.build``) as a runnable module here, or on the RPC
    ``session``'s device (``fcompile`` links for it), running on the pool it will run on as an exported
    library. Only a one-core module here runs straight from memory."""
    import tvm

    if session is None and cores <= 1:
        return built.jit() if hasattr(built, "jit") else built
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"onexn_{os.getpid()}_{time.time_ns()}.so"  # a device's dlopen caches by path
        built.export_library(str(path), fcompile=linking(fcompile, cores, path))
        if session is None:
            return tvm.runtime.load_module(str(path))
        session.upload(str(path))
    return session.load_module(path.name)

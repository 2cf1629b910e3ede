"""TVM (Relax) compilation of 1×N-pruned models: our NCHW kernels for every MobileNet operation.

Importing this package needs the ``tvm`` extra (``pip install onexn-tf[tvm]``).

TVM sizes its CPU thread pool once, at first use, to half the logical CPUs on x86 (it assumes
hyper-threading), so on a 2-vCPU cloud machine without SMT it would use one core and our knob search
could not measure 2-thread kernels. Unless the user set ``TVM_NUM_THREADS``, it is set here to the
physical cores, the ``num-cores`` of the host target; each measurement then asks the pool for
exactly the build's ``num-cores``.
"""
import os as _os

if "TVM_NUM_THREADS" not in _os.environ:
    from export.tvm.targets import physical_cores as _physical_cores

    _os.environ["TVM_NUM_THREADS"] = str(_physical_cores())

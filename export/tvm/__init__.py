"""TVM (Relax) compilation of 1×N-pruned models: BSR kernels for the pointwise convolutions.

Importing this package needs the ``tvm`` extra (``pip install onexn-tf[tvm]``).
"""

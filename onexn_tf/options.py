"""The pruning library's options, their allowed values and their checks, in plain Python: what a command
line needs to check its arguments before TensorFlow is imported (``--help`` and usage errors answer
at once)."""
from __future__ import annotations

import numpy as np

from onexn_tf.errors import InvalidArgument

ARCHITECTURES = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large")
CRITERIA = ("block_l1", "block_random", "weight", "filter")
BLOCK_CRITERIA = ("block_l1", "block_random")
PARTIAL_MODES = ("inside", "wrap")
REARRANGE_POLICIES = ("none", "reference", "groups")


def check_n(n, name: str = "n") -> int:
    """Return ``n`` as an int, or raise ValueError (naming ``name``, e.g. the flag) if it is not a
    positive integer."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InvalidArgument(f"{name}={n!r} is not allowed: N must be a positive integer (1, 2, 4, 8, 16, 32, ...)")
    return int(n)


def check_sparsity(p, name: str = "sparsity") -> float:
    """Return ``p`` as a float, or raise ValueError if it is not a rate in [0, 1)."""
    try:
        value = float(p)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(p, bool) or not 0.0 <= value < 1.0:
        raise InvalidArgument(f"{name}={p!r} is not allowed: it must be a number in [0, 1)")
    return value


def check_choice(value, allowed, name: str) -> str:
    if value not in allowed:
        raise InvalidArgument(f"{name}={value!r} is not allowed: choose one of {', '.join(map(repr, allowed))}")
    return value

"""The library's error for a caller's mistake (bad N, rate, criterion, layer, permutation, ...).

A ``ValueError`` subclass, so ``except ValueError`` works; command-line tools catch exactly this
(and their own usage errors) to print one line and exit 2, while any other exception is a bug and
keeps its traceback.
"""


class InvalidArgument(ValueError):
    """A value the caller passed is not allowed; the message names it and what is allowed."""

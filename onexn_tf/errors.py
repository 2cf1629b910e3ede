"""The library's error for a caller's mistake (bad N, rate, criterion, layer, permutation, ...).

A ``ValueError`` subclass, so ``except ValueError`` works; command-line tools catch exactly this
(and their own usage errors) to print one line and exit 2, while any other exception is a bug and
keeps its traceback.
"""


class InvalidArgument(ValueError):
    """A value the caller passed is not allowed; the message names it and what is allowed."""


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of a library's error message (its type's name if it has none), cut to ``limit``
    characters: what one error line can quote of a long traceback-style message."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:limit]

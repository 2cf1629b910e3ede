"""TensorFlow's C++ start-up notices, kept off the user's terminal.

TensorFlow 2.21 logs through absl before anything calls ``absl::InitializeLog()``, so those lines go
straight to file descriptor 2 and ``TF_CPP_MIN_LOG_LEVEL`` never sees them: at import, once per shared
library that carries its own absl copy (the oneDNN notice on AVX-512 hosts, "Could not find cuda
drivers", the CPU-feature guard), and at the first device listing (``failed call to cuInit`` on a host
without a GPU). The one place to drop them is the descriptor itself: while TensorFlow starts, fd 2
points at a temporary file; afterwards every captured line that is not such a notice is written back.

``TF_CPP_MIN_LOG_LEVEL`` keeps its documented meaning for these lines (0: all, 1: no INFO, 2: no
WARNING either, 3: no ERROR either); the package sets 2 unless the user chose a level. The CUDA probe's
ERROR lines on a machine without a GPU are dropped from level 1 on: they report no failure of ours.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from typing import Iterator

# absl's prefix: severity, MMDD, hh:mm:ss.us (seconds since the epoch before absl is set up), thread id,
# file:line]
_ABSL_LINE = re.compile(r"^(?P<severity>[IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ (?P<source>[\w.+-]+):\d+\] ")
_ABSL_BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
# The CPU-feature guard's second line carries no absl prefix of its own.
_CONTINUATIONS = ("To enable the following instructions:",)
_CUDA_PROBE = re.compile(r"cuInit|cuda drivers|CUDA|cudart|cuda_", re.IGNORECASE)
_LEVELS = {"I": 0, "W": 1, "E": 2, "F": 3}


def min_log_level() -> int:
    """TF_CPP_MIN_LOG_LEVEL as TensorFlow reads it (an unset or malformed value means 0)."""
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def is_noise(line: str, level: int) -> bool:
    """True for a start-up line the user did not ask to see at log level ``level``."""
    if level <= 0:
        return False
    if line.strip() == _ABSL_BANNER or line.startswith(_CONTINUATIONS):
        return True
    match = _ABSL_LINE.match(line)
    if not match:
        return False
    severity = _LEVELS[match["severity"]]
    if severity == 3:
        return False  # a fatal line always reaches the user
    return severity < level or (severity == 2 and _CUDA_PROBE.search(line) is not None)


def filter_text(text: str, level: int) -> str:
    """``text`` without its noise lines (line ends kept)."""
    return "".join(line for line in text.splitlines(keepends=True) if not is_noise(line, level))


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Run the block with fd 2 captured; write back what is not start-up noise when it ends.

    Where fd 2 cannot be redirected (closed, or a platform without ``dup``), the block runs as is.
    """
    level = min_log_level()
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, AttributeError, ValueError):
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = filter_text(captured.read().decode("utf-8", errors="replace"), level)
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()

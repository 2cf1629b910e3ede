"""Shared command-line plumbing: user mistakes become one clear line and exit code 2."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence


class UsageError(Exception):
    """A mistake in what the user asked for (reported without a traceback)."""


def run(main: Callable[[argparse.Namespace], int | None], parser: argparse.ArgumentParser,
        argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run ``main``; ValueError / UsageError / missing files exit 2 with one line."""
    args = parser.parse_args(argv)
    try:
        return int(main(args) or 0)
    except (UsageError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
            PermissionError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130

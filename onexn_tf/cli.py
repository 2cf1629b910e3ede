"""Shared command-line plumbing: user mistakes become one clear line and exit code 2."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from onexn_tf.errors import InvalidArgument


class UsageError(InvalidArgument):
    """A mistake in what the user asked for (reported without a traceback)."""


class Parser(argparse.ArgumentParser):
    """argparse with the project's error format: one line, ``prog: error: message (see prog --help)``,
    exit 2, instead of the usage block followed by the error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def host_port(text: str) -> tuple[str, int]:
    """argparse type for ``HOST:PORT`` (an RPC tracker or server address)."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (a port in 1..65535)")
    return host, int(port)


def doc_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """A parser whose description is the module docstring's first line and whose epilog (examples,
    exit codes) is the rest, kept as written."""
    lines = doc.splitlines()
    return Parser(prog=prog, description=lines[0], epilog="\n".join(lines[2:]),
                  formatter_class=argparse.RawDescriptionHelpFormatter)


def run(main: Callable[[argparse.Namespace], int | None], parser: argparse.ArgumentParser,
        argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run ``main``; a caller's mistake (InvalidArgument, including UsageError) or a
    file-system refusal exits 2 with one line; anything else is a bug and keeps its traceback."""
    args = parser.parse_args(argv)
    try:
        return int(main(args) or 0)
    except (InvalidArgument, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
            PermissionError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130

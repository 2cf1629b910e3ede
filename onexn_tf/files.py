"""Atomic file output: a reader never sees a half-written artifact.

Everything is written to a temporary sibling first and renamed into place, so a crash or a bad
input leaves either the old file or nothing.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path, *, overwrite: bool = True):
    """Yield a temporary path next to ``path``; move it onto ``path`` only if the block succeeds."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (use --force to overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    tmp = tmp_root / path.name
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to {tmp}")
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)


@contextlib.contextmanager
def native_stderr_to(path):
    """Send file descriptor 2 (what C++ libraries and child processes started meanwhile write to) to
    ``path`` (appended) for the duration of the block; Python exceptions still carry real errors."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "a") as target:
        os.dup2(target.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path, data) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def check_writable_dir(path, flag: str | None = None) -> Path:
    """Fail early (before hours of work) if ``path`` cannot become a writable directory; the message
    names ``flag`` (e.g. ``--out``) when the path came from one."""
    path = Path(path)
    what = f"{flag} {path}" if flag else f"output directory {path}"
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{what} exists and is not a directory")
    _check_creatable(path, what)
    return path


def check_writable_file(path, flag: str | None = None) -> Path:
    """Fail early if ``path`` cannot be written as a file (it is a directory, or lies under a regular
    file or an unwritable directory); the message names ``flag``."""
    path = Path(path)
    what = f"{flag} {path}" if flag else f"output file {path}"
    if path.is_dir():
        raise IsADirectoryError(f"{what} is a directory: give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise PermissionError(f"{what} is not writable")
    _check_creatable(path.parent, what)
    return path


def check_new_file(path, flag: str, force: bool) -> Path:
    """:func:`check_writable_file`, and the overwrite rule: an existing file is replaced only with
    ``--force``."""
    path = check_writable_file(path, flag)
    if path.exists() and not force:
        raise FileExistsError(f"{flag} {path} already exists (use --force to overwrite)")
    return path


def _check_creatable(path: Path, what: str) -> None:
    """``path`` is a directory or can be made one: its nearest existing ancestor is a writable
    directory (not a regular file)."""
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"{what} cannot be created: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} is not writable ({existing} does not allow writing)")


def sha256(path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB pieces (models can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(path, flag: str, what: str = "file"):
    """The JSON a user's ``flag`` names; a missing or non-JSON file is one :class:`InvalidArgument`
    naming the flag (``what``: how to call the file when it is missing)."""
    from onexn_tf.errors import InvalidArgument

    path = Path(path)
    if not path.is_file():
        raise InvalidArgument(f"{flag} {path}: no such {what}")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidArgument(f"{flag} {path} is not JSON ({error})") from None

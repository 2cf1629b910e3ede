"""An emulated ARM device: a TVM RPC server on an aarch64 Python under ``qemu-aarch64`` (user mode).

For people and tests without a phone or a board. ``prepare`` builds, in a cache directory outside the
checkout (default ``~/.cache/onexn-tf/arm64``):

- ``root/``: an aarch64 Debian userland holding just Python and what it links (the distribution's own
  arm64 packages, fetched by a private apt configuration: the host's package sources with arm64 as the
  architecture, an empty package database, nothing installed on the host);
- ``qemu/``: ``qemu-aarch64-static`` when the host has no qemu-aarch64 (Debian's ``qemu-user-static``
  package, downloaded and unpacked, not installed);
- ``site/``: the aarch64 wheels of apache-tvm and apache-tvm-ffi at the host's versions (pip with
  ``--platform manylinux_2_28_aarch64``; TVM publishes its aarch64 wheels only for that tag);
- ``litert/`` (only for the TFLite route, :func:`prepare_litert`): the aarch64 wheel of Google's
  TFLite runtime (``ai-edge-litert``) with XNNPACK, the interpreter an Android app ships;
- ``bin/python-aarch64``: a launcher. The RPC server starts its worker with ``sys.executable``, which
  the host kernel cannot execute without binfmt_misc; pointing it at the launcher keeps everything in
  user space (no root, no binfmt registration).

Each step is skipped when its output exists and is written to a temporary sibling first, so an
interrupted ``prepare`` resumes and never leaves a half-made userland in place. Timings on this device
are qemu's, not a phone's: ``onexn-bench --emulated`` and the demo say so next to every number.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from onexn_tf.errors import InvalidArgument

DEFAULT_CACHE = Path(os.environ.get("ONEXN_ARM_CACHE", Path.home() / ".cache" / "onexn-tf" / "arm64"))
WHEEL_PLATFORM = "manylinux_2_28_aarch64"
# Debian arm64 packages: the interpreter (with its dependencies) and the C++ runtime libtvm links.
PACKAGES = ("python3-minimal", "libpython3-stdlib", "libstdc++6")
# What the RPC server imports on the device: TVM, its FFI, and its worker pool's helpers.
WHEELS = ("apache-tvm", "apache-tvm-ffi", "psutil", "cloudpickle")
# The LiteRT release built from TensorFlow 2.21 (version string 2.21.0-dev0) with XNNPACK 25b42dfd, the
# XNNPACK TF 2.21 pins: the sparse-path rules export/xnnpack_sparse.py replays are this one's. Its 2.x
# aarch64 wheels are tagged manylinux_2_27.
LITERT = ("ai-edge-litert==2.1.2",)
LITERT_PLATFORMS = ("manylinux_2_27_aarch64", "manylinux_2_28_aarch64", "manylinux2014_aarch64")
LAUNCHER = "python-aarch64"
READY = "ready.json"
SERVER_BOOT = ("import runpy, sys; sys.executable = sys.argv.pop(1); sys.argv[0] = 'rpc_server'; "
               "runpy.run_module('tvm.exec.rpc_server', run_name='__main__')")


class PrepareError(RuntimeError):
    """A step of ``prepare`` failed (no network, no apt on this host, ...); the message says which."""


@dataclasses.dataclass(frozen=True)
class Device:
    """A prepared emulated device in ``cache``."""

    cache: Path

    @property
    def launcher(self) -> Path:
        return self.cache / "bin" / LAUNCHER

    @property
    def info(self) -> dict:
        return json.loads((self.cache / READY).read_text())

    @property
    def has_litert(self) -> bool:
        return (self.cache / "litert" / "ai_edge_litert").is_dir()

    def env(self, threads: int | None = None, *, litert: bool = False) -> dict:
        """The environment the emulated Python runs in: the aarch64 wheels first (``litert``: the TFLite
        runtime's instead of TVM's), no host user site."""
        site = self.cache / ("litert" if litert else "site")
        env = {**os.environ, "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1"}
        if threads:
            env["TVM_NUM_THREADS"] = str(threads)
        return env

    def server_command(self, *, tracker: tuple[str, int] | None = None, key: str | None = None,
                       host: str = "127.0.0.1", port: int = 9090, port_end: int | None = None) -> list[str]:
        cmd = [str(self.launcher), "-c", SERVER_BOOT, str(self.launcher), "--host", host, "--port", str(port),
               "--port-end", str(port_end or port + 100)]
        if tracker:
            if not key:
                raise InvalidArgument("an emulated server registered with a tracker needs --key")
            cmd += ["--tracker", f"{tracker[0]}:{tracker[1]}", "--key", key]
        return cmd

    def start_server(self, *, log_path, threads: int | None = None, **where) -> subprocess.Popen:
        """Start the RPC server in the background (its own process group; ``stop_server`` ends it)."""
        with open(log_path, "ab") as log:
            return subprocess.Popen(self.server_command(**where), stdout=log, stderr=subprocess.STDOUT,
                                    env=self.env(threads), start_new_session=True)


def stop_server(proc: subprocess.Popen) -> None:
    """End the server, its worker and its forked session processes: the whole process group. SIGTERM
    first; SIGKILL for whatever is left (the worker under qemu outlives its parent's SIGTERM)."""
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def find(cache=None) -> Device | None:
    """The prepared device in ``cache`` (default cache), or None when ``prepare`` has not finished."""
    device = Device(Path(cache or DEFAULT_CACHE))
    return device if (device.cache / READY).exists() else None


def _run(cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    except FileNotFoundError:
        raise PrepareError(f"{what}: {cmd[0]} is not installed on this host") from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise PrepareError(f"{what} failed ({' '.join(cmd[:3])} ... exit {proc.returncode}):\n{tail}")
    return proc


def _step(path: Path, what: str, make, log) -> Path:
    """Make ``path`` with ``make(tmp)`` unless it exists; atomic (a temporary sibling, then a rename)."""
    if path.exists():
        log(f"  {what}: cached in {path}")
        return path
    started = time.time()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        make(tmp)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"  {what}: done in {time.time() - started:.0f} s")
    return path


def _apt_options(state: Path) -> list[str]:
    """A private apt: the host's sources, arm64 only, an empty package database, no root needed."""
    for sub in ("lists/partial", "cache/archives/partial"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    (state / "status").touch()
    sandbox = ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []  # root: no _apt download user
    return [*sandbox, "-o", "APT::Architecture=arm64", "-o", "APT::Architectures::=arm64",
            "-o", f"Dir::State::Lists={state / 'lists'}", "-o", f"Dir::State::status={state / 'status'}",
            "-o", f"Dir::Cache={state / 'cache'}", "-o", "Debug::NoLocking=1"]


def _userland(tmp: Path, state: Path, log) -> None:
    options = _apt_options(state)
    log("    fetching the arm64 package lists (the host's apt sources)")
    _run(["apt-get", "-q", *options, "update"], "apt-get update (arm64 lists)")
    log(f"    downloading {', '.join(PACKAGES)} and their dependencies (arm64)")
    _run(["apt-get", "-q", "-y", *options, "install", "--download-only", "--no-install-recommends", *PACKAGES],
         "apt-get install --download-only (arm64)")
    debs = sorted((state / "cache" / "archives").glob("*.deb"))
    for deb in debs:
        _run(["dpkg-deb", "-x", str(deb), str(tmp)], f"unpacking {deb.name}")
    if not list((tmp / "usr" / "bin").glob("python3.*")):
        raise PrepareError("the arm64 userland has no python3.X: the packages did not unpack as expected")


def _qemu(tmp: Path, log) -> None:
    log("    downloading qemu-user-static (host architecture) and unpacking it")
    _run(["apt-get", "-q", "download", "qemu-user-static"], "apt-get download qemu-user-static", cwd=tmp)
    (deb,) = tmp.glob("qemu-user-static_*.deb")
    _run(["dpkg-deb", "-x", str(deb), str(tmp / "pkg")], "unpacking qemu-user-static")
    shutil.move(str(tmp / "pkg" / "usr" / "bin" / "qemu-aarch64-static"), tmp / "qemu-aarch64-static")
    shutil.rmtree(tmp / "pkg")
    deb.unlink()


def _qemu_binary(cache: Path, log) -> Path:
    for name in ("qemu-aarch64-static", "qemu-aarch64"):
        found = shutil.which(name)
        if found:
            log(f"  qemu: {found}")
            return Path(found)
    return _step(cache / "qemu", "qemu-aarch64-static", lambda tmp: _qemu(tmp, log), log) / "qemu-aarch64-static"


def _python_version(root: Path) -> str:
    versions = sorted(p.name[len("python"):] for p in (root / "usr" / "bin").glob("python3.*")
                      if p.name[len("python3."):].isdigit())
    return versions[-1]


def _wheels(tmp: Path, python_version: str, log) -> None:
    pins = []
    for name in WHEELS:
        try:
            version = importlib.metadata.version(name)
            pins.append(f"{name}=={version}" if name.startswith("apache-tvm") else name)
        except importlib.metadata.PackageNotFoundError:
            if name.startswith("apache-tvm"):
                raise PrepareError(f"{name} is not installed on the host (pip install -e .[tvm])") from None
            pins.append(name)
    log(f"    pip: {' '.join(pins)} for aarch64 / Python {python_version}")
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
          "--platform", WHEEL_PLATFORM, "--only-binary=:all:", "--python-version", python_version,
          "--implementation", "cp", "--target", str(tmp), *pins], "pip install (aarch64 wheels)")


def _litert(tmp: Path, python_version: str, log) -> None:
    log(f"    pip: {' '.join(LITERT)} (and numpy, flatbuffers, protobuf) for aarch64 / Python {python_version}")
    platforms = [arg for platform in LITERT_PLATFORMS for arg in ("--platform", platform)]
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
          *platforms, "--only-binary=:all:", "--python-version", python_version, "--implementation", "cp",
          "--target", str(tmp), *LITERT], "pip install (aarch64 ai-edge-litert)")


def prepare_litert(cache=None, *, log=print) -> Device:
    """The emulated device (prepared if needed) with the aarch64 TFLite runtime in ``litert/``."""
    device = find(cache) or prepare(cache, log=log)
    _step(device.cache / "litert", "aarch64 TFLite runtime (ai-edge-litert)",
          lambda tmp: _litert(tmp, device.info["python"], log), log)
    return device


def _launcher(cache: Path, qemu: Path, python: str) -> Path:
    path = cache / "bin" / LAUNCHER
    path.parent.mkdir(parents=True, exist_ok=True)
    root = cache / "root"
    text = (f"#!/bin/sh\n# aarch64 Python under qemu user-mode emulation (written by onexn-arm-device prepare)\n"
            f"exec '{qemu}' -L '{root}' '{root}/usr/bin/python{python}' \"$@\"\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(0o755)
    os.replace(tmp, path)
    return path


def prepare(cache=None, *, log=print) -> Device:
    """Make (or reuse) the emulated device in ``cache``; raises :class:`PrepareError` on a failed step."""
    cache = Path(cache or DEFAULT_CACHE)
    if cache.exists() and not cache.is_dir():
        raise InvalidArgument(f"--cache {cache} exists and is not a directory")
    cache.mkdir(parents=True, exist_ok=True)
    started = time.time()
    log(f"preparing the emulated aarch64 device in {cache}")
    state = cache / "apt"
    root = _step(cache / "root", "aarch64 userland (Debian arm64 packages)", lambda t: _userland(t, state, log), log)
    shutil.rmtree(state / "cache" / "archives", ignore_errors=True)  # unpacked: the .debs are not needed
    qemu = _qemu_binary(cache, log)
    python = _python_version(root)
    _step(cache / "site", "aarch64 wheels", lambda t: _wheels(t, python, log), log)
    launcher = _launcher(cache, qemu, python)
    log("  checking: import tvm under emulation (about 20 s)")
    t = time.time()
    probe = _run([str(launcher), "-c", "import platform, tvm; print(platform.machine(), tvm.__version__)"],
                 "import tvm under qemu", env=Device(cache).env())
    machine, tvm_version = probe.stdout.split()[-2:]
    if machine != "aarch64":
        raise PrepareError(f"the emulated Python reports machine {machine!r}, not aarch64")
    info = {"cache": str(cache), "qemu": str(qemu), "python": python, "tvm": tvm_version, "machine": machine,
            "import_tvm_s": round(time.time() - t, 1), "prepared_in_s": round(time.time() - started, 1)}
    from onexn_tf import files

    files.write_json(cache / READY, info)
    log(f"ready: aarch64 Python {python}, TVM {tvm_version} (import tvm {info['import_tvm_s']} s under qemu)")
    return Device(cache)

"""Devices on this machine for the demo and the tests: a TVM RPC tracker, an x86 RPC server and the
emulated aarch64 server, each registered under a key and torn down on exit (TVM's own classes)."""
from __future__ import annotations

import contextlib
import os

from android_bench.connection import wait_for_key
from onexn_tf import files


@contextlib.contextmanager
def tracker(port: int = 9190):
    """A TVM RPC tracker on loopback (the first free port from ``port``); yields (host, port)."""
    from tvm.rpc.tracker import Tracker

    t = Tracker(host="127.0.0.1", port=port, port_end=port + 100, silent=True)
    try:
        yield "127.0.0.1", t.port
    finally:
        t.terminate()


@contextlib.contextmanager
def host_server(tracker_addr: tuple[str, int], key: str, port: int = 9300, log_path=os.devnull):
    """An x86 RPC server of this machine registered under ``key``; yields it once the tracker has it.
    Its native log (TVM prints a "Scope Loaded" warning per constant of every module it loads) goes to
    ``log_path``, not to our terminal."""
    from tvm import rpc

    with files.native_stderr_to(log_path):  # the server's worker process inherits this stderr
        server = rpc.Server(host="127.0.0.1", port=port, port_end=port + 100, key=key, tracker_addr=tracker_addr,
                            silent=True)
    try:
        wait_for_key(tracker_addr, key, timeout=60)
        yield server
    finally:
        server.terminate()


@contextlib.contextmanager
def emulated_server(device, tracker_addr: tuple[str, int], key: str, log_path, port: int = 9400):
    """The emulated aarch64 server of a prepared ``emulated.Device``, registered under ``key``."""
    from android_bench import emulated

    proc = device.start_server(log_path=log_path, tracker=tracker_addr, key=key, port=port)
    try:
        wait_for_key(tracker_addr, key, proc=proc, log_path=log_path)
        yield proc
    finally:
        emulated.stop_server(proc)

"""Opening a TVM RPC session, through a tracker or directly, with bounded retries and clear failures.

TVM's own client waits silently: ``connect_tracker`` retries a refused address for 60 s, and
``TrackerSession.request`` blocks for as long as no device with the key is free. Here an unreachable
address is probed (bounded tries with exponential back-off) and the queue wait has a deadline, so a
typo in the address or the key ends in one line that names it.
"""
from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

from onexn_tf.errors import InvalidArgument
from onexn_tf.rpc import Rpc

__all__ = ["Rpc", "DeviceUnavailable", "DeviceLost", "open_session", "describe", "wait_for_key"]


class DeviceUnavailable(InvalidArgument):
    """No session could be had: the address does not answer, or no device with the key got free."""


class DeviceLost(RuntimeError):
    """The device stopped answering during a run (after every reconnection attempt)."""


def describe(rpc: Rpc) -> str:
    return f"tracker {rpc.host}:{rpc.port} key {rpc.key!r}" if rpc.key else f"RPC server {rpc.host}:{rpc.port}"


def _probe(rpc: Rpc, retries: int, backoff: float, log) -> None:
    what = "tracker" if rpc.key else "RPC server"
    for attempt in range(retries + 1):
        try:
            socket.create_connection((rpc.host, rpc.port), timeout=10).close()
            return
        except (OSError, UnicodeError) as error:
            reason = error.strerror or str(error) if isinstance(error, OSError) else str(error)
            if isinstance(error, socket.gaierror) or attempt == retries:
                tries = f" ({attempt + 1} tries)" if attempt else ""
                raise DeviceUnavailable(f"cannot reach the {what} at {rpc.host}:{rpc.port}: {reason}{tries}") from None
            delay = backoff * 2 ** attempt
            log(f"the {what} at {rpc.host}:{rpc.port} did not answer ({reason}); retrying in {delay:g} s")
            time.sleep(delay)


def _queue_state(tracker, key: str) -> tuple[dict | None, list[str]]:
    try:
        queues = tracker.summary().get("queue_info", {})
    except Exception:  # an old tracker without a summary: just wait
        return None, []
    return queues.get(key), sorted(queues)


def open_session(rpc: Rpc, *, queue_timeout: float = 60.0, retries: int = 2, backoff: float = 1.0, log=print):
    """An RPC session on the device ``rpc`` names. Raises :class:`DeviceUnavailable` (a caller's
    problem: wrong address, wrong key, every device busy for ``queue_timeout`` seconds)."""
    from tvm import rpc as tvm_rpc

    _probe(rpc, retries, backoff, log)
    if not rpc.key:
        try:
            return tvm_rpc.connect(rpc.host, rpc.port, session_timeout=rpc.session_timeout)
        except Exception as error:  # the port answers but is no TVM RPC server
            raise DeviceUnavailable(f"{describe(rpc)} refused the session: {message(error)}") from None
    tracker = tvm_rpc.connect_tracker(rpc.host, rpc.port)
    queue, keys = _queue_state(tracker, rpc.key)
    tracker.close()
    if queue is None:
        known = ", ".join(repr(k) for k in keys) or "none"
        log(f"no device is registered under key {rpc.key!r} yet (the tracker has: {known}); "
            f"waiting up to {queue_timeout:g} s")
    elif not queue.get("free"):
        log(f"every device with key {rpc.key!r} is busy ({queue.get('pending', 0)} requests pending); "
            f"waiting up to {queue_timeout:g} s")
    deadline = time.time() + queue_timeout
    for attempt in range(retries + 1):
        tracker = tvm_rpc.connect_tracker(rpc.host, rpc.port)
        tracker._sock.settimeout(max(1.0, deadline - time.time()))  # TVM's request has no deadline of its own
        try:
            return tracker.request(rpc.key, priority=rpc.priority, session_timeout=rpc.session_timeout, max_retry=1)
        except RuntimeError as error:
            if "timed out" in str(error):
                _, keys = _queue_state(tvm_rpc.connect_tracker(rpc.host, rpc.port), rpc.key)
                known = ", ".join(repr(k) for k in keys) or "none"
                raise DeviceUnavailable(f"no free device with key {rpc.key!r} on the tracker at {rpc.host}:{rpc.port} "
                                        f"within {queue_timeout:g} s (keys with devices: {known})") from None
            last = error  # the device the tracker chose did not take the session: ask again
            if attempt < retries:
                delay = backoff * 2 ** attempt
                log(f"a device with key {rpc.key!r} did not take the session ({message(error)}); "
                    f"retrying in {delay:g} s")
                time.sleep(delay)
        finally:
            tracker.close()
    raise DeviceUnavailable(f"{describe(rpc)}: no session after {retries + 1} tries: {message(last)}")


def message(error: BaseException) -> str:
    """The last non-empty line of an error (TVM's errors carry a C++ backtrace before it)."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(error).__name__


def wait_for_key(tracker: tuple[str, int], key: str, *, timeout: float = 240.0, proc=None, log_path=None) -> None:
    """Block until a server is free under ``key`` at the tracker; fail early if ``proc`` (the server
    process, when we started it) has exited. An emulated server needs ~40 s: it imports TVM twice
    under qemu."""
    from tvm import rpc as tvm_rpc

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = Path(log_path).read_text(errors="replace")[-2000:] if log_path else ""
            raise DeviceUnavailable(f"the RPC server for key {key!r} exited with code {proc.returncode}:\n{tail}")
        with contextlib.suppress(Exception):
            tracker_session = tvm_rpc.connect_tracker(*tracker)
            free = tracker_session.summary()["queue_info"].get(key, {}).get("free")
            tracker_session.close()
            if free:
                return
        time.sleep(0.5)
    raise DeviceUnavailable(f"no server registered under key {key!r} at {tracker[0]}:{tracker[1]} within {timeout:g} s")

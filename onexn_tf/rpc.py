"""Where a TVM RPC measurement runs: a tracker (with a device key) or a server directly.

One address/session type for every stage that talks to a device: tuning in ``export/tvm`` and timing
in ``android_bench``. TVM is imported only when a session is opened.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Rpc:
    """Where to measure: a TVM RPC tracker (``key`` given) or a server directly."""

    host: str
    port: int
    key: str | None = None
    priority: int = 1
    session_timeout: int = 60

    def connect(self, *, whole_job: bool = False):
        """A session on the device. ``whole_job``: one session held for a whole knob search or latency
        table (minutes on a phone), so the server sets it no time limit; ``session_timeout`` would end
        it mid-search. The device is freed when this process closes the socket, as it is otherwise."""
        from tvm import rpc

        timeout = 0 if whole_job else self.session_timeout
        if self.key:
            return rpc.connect_tracker(self.host, self.port).request(
                self.key, priority=self.priority, session_timeout=timeout)
        return rpc.connect(self.host, self.port, session_timeout=timeout)


def from_flags(tracker: tuple[str, int] | None, key: str | None, direct: tuple[str, int] | None) -> Rpc | None:
    """The device of ``--rpc-tracker HOST:PORT --rpc-key KEY`` or ``--rpc HOST:PORT`` (None: here)."""
    from onexn_tf.errors import InvalidArgument

    if tracker and direct:
        raise InvalidArgument("give either --rpc-tracker (with --rpc-key) or --rpc, not both")
    if tracker and not key:
        raise InvalidArgument("--rpc-tracker needs --rpc-key (the device's key at the tracker)")
    if tracker:
        return Rpc(*tracker, key=key)
    return Rpc(*direct) if direct else None

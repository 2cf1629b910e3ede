"""The host timing harness's hand-over between timing processes (android_bench.host_runtimes)."""
import subprocess
import sys
import time

from android_bench import host_runtimes

SPIN_THEN_SLEEP = "import time\nend = time.time() + {spin}\nwhile time.time() < end: pass\ntime.sleep(30)\n"


def _start(spin_s: float):
    return subprocess.Popen([sys.executable, "-c", SPIN_THEN_SLEEP.format(spin=spin_s)])


def test_waits_while_the_process_still_spins():
    proc = _start(0.6)
    try:
        waited = host_runtimes.wait_until_idle(proc.pid, timeout_s=5)
        assert 0.4 <= waited < 4, waited  # waited out the spinning, not the timeout
    finally:
        proc.kill()


def test_an_idle_process_hands_over_at_once():
    proc = _start(0.0)
    try:
        host_runtimes.wait_until_idle(proc.pid, timeout_s=5)  # past the interpreter's start-up
        assert host_runtimes.wait_until_idle(proc.pid, timeout_s=5) < 0.5
    finally:
        proc.kill()


def test_a_process_that_never_idles_times_out_and_a_gone_one_returns():
    proc = _start(60)
    try:
        assert 0.5 <= host_runtimes.wait_until_idle(proc.pid, timeout_s=0.5) < 2
    finally:
        proc.kill()
        proc.wait()
    assert host_runtimes.wait_until_idle(proc.pid, timeout_s=5) < 0.5


class _FakeProcess:
    """A process gaining ``share`` of a core's CPU time as the clock runs (psutil's cpu_times shape)."""

    def __init__(self, share: float):
        self.share, self.start = share, time.perf_counter()

    def cpu_times(self):
        return ((time.perf_counter() - self.start) * self.share, 0.0)


def test_processes_busy_together_are_not_idle_though_each_looks_idle(monkeypatch):
    """Ten TVM pools spinning on sched_yield share the cores: each gains at most a tick per window, yet
    together they hold a core, and the next runtime must wait for them (judged together, not alone)."""
    import psutil

    shares = {pid: 0.15 for pid in range(1000, 1006)}  # six at 15 % of a core: 7.5 ms each per 50 ms
    monkeypatch.setattr(psutil, "Process", lambda pid: _FakeProcess(shares[pid]))
    waited = host_runtimes.wait_until_idle(*shares, window_s=0.05, timeout_s=0.6)
    assert waited >= 0.6, waited  # never idle: the timeout ends the wait
    shares.update({pid: 0.0 for pid in shares})  # all asleep
    assert host_runtimes.wait_until_idle(*shares, window_s=0.05, timeout_s=0.6) < 0.2


class _Clock:
    """A clock that only moves when a run takes time."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_warm_up_runs_for_the_count_and_the_time_whichever_is_longer():
    clock = _Clock()

    def run(seconds):
        def one():
            clock.now += seconds
        return one

    # a 0.7-ms model needs 72 runs to fill 50 ms (not 5); a 20-ms model still does its 5 runs
    assert host_runtimes.warm_up(run(0.0007), 5, 0.05, clock=clock) == 72
    clock.now = 0.0
    assert host_runtimes.warm_up(run(0.02), 5, 0.05, clock=clock) == 5
    clock.now = 0.0
    assert host_runtimes.warm_up(run(0.0007), 0, 0.0, clock=clock) == 0  # nothing asked, nothing run

"""The host timing harness's hand-over between timing processes (android_bench.host_runtimes)."""
import subprocess
import sys

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

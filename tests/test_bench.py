"""`onexn-bench` over real TVM RPC on loopback: a tracker and x86 servers started here, two compiled
modules timed interleaved, statistics, result files, and the faults (lost device, wrong key, bad address,
a module that does not load)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

tvm = pytest.importorskip("tvm", reason="the tvm extra is not installed (pip install -e .[tvm])")
pytest.importorskip("tornado", reason="TVM's RPC tracker needs tornado (in the tvm extra)")
onnx = pytest.importorskip("onnx")

from android_bench import cli, local, results, stats  # noqa: E402
from android_bench.connection import DeviceUnavailable, Rpc, open_session, wait_for_key  # noqa: E402
from android_bench.modules import write_reference  # noqa: E402
from export.tvm import compiler  # noqa: E402
from conftest import sigint_default  # noqa: E402
from test_tvm import conv_graph, run_ort, save  # noqa: E402

ROOT = Path(__file__).parents[1]


# --- statistics (pure) ---------------------------------------------------------------------------

def test_summary_statistics_are_ordered_and_exact():
    s = stats.summarize([4.0, 1.0, 3.0, 2.0, 10.0])
    assert s["count"] == 5 and s["min"] == 1.0 and s["max"] == 10.0 and s["median"] == 3.0
    assert s["mean"] == pytest.approx(4.0) and s["std"] == pytest.approx(np.std([4, 1, 3, 2, 10], ddof=1))
    assert s["p5"] == pytest.approx(1.2) and s["p95"] == pytest.approx(8.8)  # linear interpolation
    assert stats.summarize([]) == {"count": 0}
    assert stats.ratio(stats.summarize([6.0]), stats.summarize([2.0])) == pytest.approx(3.0)
    assert stats.ratio(stats.summarize([6.0]), stats.summarize([])) is None


def test_block_weighted_sparsity_counts_blocks():
    layers = [{"shape": {"c_out": 8, "c_in": 10, "bsr": 4}, "block_sparsity": 0.5},  # 20 blocks
              {"shape": {"c_out": 6, "c_in": 5, "bsr": 4}, "block_sparsity": 1.0}]  # 2 rows x 5 = 10 blocks
    assert stats.block_weighted_sparsity(layers) == pytest.approx((10 + 10) / 30)
    assert stats.block_weighted_sparsity([]) is None


def test_round_ratio_quartiles_pair_each_rounds_medians():
    """Per-round medians of rounds of equal runs; the ratio quartiles pair round r with round r, so a
    spell that slows both sides of a round leaves its ratio alone."""
    dense = [10.0, 11.0, 30.0, 10.0, 10.0, 10.0, 20.0, 20.0, 21.0]  # 3 rounds of 3; round 2 twice as slow
    sparse = [5.0, 5.0, 6.0, 5.0, 5.0, 5.0, 10.0, 10.0, 10.0]
    assert stats.round_medians(dense, 3).tolist() == [11.0, 10.0, 20.0]
    assert stats.round_medians(sparse, 3).tolist() == [5.0, 5.0, 10.0]
    p25, p75 = stats.paired_ratio_quartiles(stats.round_medians(dense, 3), stats.round_medians(sparse, 3))
    assert (p25, p75) == (pytest.approx(2.0), pytest.approx(2.1))  # ratios 2.2, 2.0, 2.0
    with pytest.raises(ValueError, match="do not split into 2 rounds"):
        stats.round_medians(dense, 2)


# --- real RPC on loopback ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A 1×4-sparse build and a dense build of one small graph, and an onnxruntime reference."""
    rng = np.random.default_rng(7)
    out = tmp_path_factory.mktemp("bench_build")
    model = conv_graph(rng, pad=False, p=0.75, c_in=16, c_mid=64, c_out=64, size=24)
    path = save(model, out / "g.onnx")
    options = dict(tune_kernels=False, progress=False)
    compiler.compile_onnx(path, out / "dense.so", options=compiler.Options(dense=True, **options), log=lambda *_: None)
    compiler.compile_onnx(path, out / "sparse.so", options=compiler.Options(**options), log=lambda *_: None)
    x = rng.standard_normal((1, 16, 24, 24)).astype(np.float32)
    y = run_ort(model, x)
    assert y.std() > 0.1
    write_reference(out / "reference.npz", x, y)
    return out


@pytest.fixture(scope="module")
def tracker():
    with local.tracker(port=9530) as (_, port):
        yield port


def start_server(tracker_port, key):
    from tvm import rpc

    server = rpc.Server(host="127.0.0.1", port=9610, port_end=9700, key=key, tracker_addr=("127.0.0.1", tracker_port),
                        silent=True)
    wait_for_key(("127.0.0.1", tracker_port), key, timeout=30)
    return server


def bench_cli(*args, timeout=300):
    return subprocess.Popen([sys.executable, "-m", "android_bench.cli", *map(str, args)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, preexec_fn=sigint_default)


def test_interleaved_benchmark_through_a_tracker(built, tracker, tmp_path, capsys):
    server = start_server(tracker, "x86-loop")
    try:
        out = tmp_path / "bench"
        code = cli.run([str(built / "dense.so"), str(built / "sparse.so"), "--tracker", f"127.0.0.1:{tracker}",
                        "--key", "x86-loop", "--repeat", "12", "--warmup", "2", "--number", "3", "--threads", "1",
                        "--reference", str(built / "reference.npz"), "--out", str(out), "--quiet"])
    finally:
        server.terminate()
    printed = capsys.readouterr().out
    assert code == 0, printed
    report = json.loads((out / results.JSON_NAME).read_text())
    assert report["status"] == "complete" and report["rounds_done"] == 12 and not report["emulated"]
    assert report["threads"]["runtime_threads"] == 1
    assert report["threads"]["pool_threads"] == 1  # the 2-core builds' own pool, sized by --threads too
    dense, sparse = report["modules"]
    assert dense["sparsity"] is None and sparse["sparsity"] == pytest.approx(0.75, abs=0.1)
    for m in (dense, sparse):
        s = m["stats"]
        assert m["status"] == "ok" and m["verification"]["passed"] and m["verification"]["max_rel_error"] < 1e-4
        assert s["count"] == len(m["samples_ms"]) == 12 and all(v > 0 for v in m["samples_ms"])
        assert s["min"] <= s["p5"] <= s["median"] <= s["p95"] <= s["max"]
        assert s["min"] <= s["mean"] <= s["max"] and s["std"] >= 0
        assert s == stats.summarize(m["samples_ms"])
    assert dense["speedup_vs_first"] == 1.0
    assert sparse["speedup_vs_first"] == pytest.approx(dense["stats"]["median"] / sparse["stats"]["median"])
    rows = (out / results.CSV_NAME).read_text().splitlines()
    assert rows[0].startswith("label,path,sparsity,status,count,mean,median") and len(rows) == 3
    assert "dense" in printed and "sparse" in printed and "vs first" in printed
    assert not (out / results.PLOT_NAME).exists()  # one sparsity only: no plot


def test_direct_connection_and_a_module_that_does_not_load(built, tmp_path, capsys):
    from tvm import rpc

    broken = tmp_path / "broken.so"
    broken.write_bytes(b"\x7fELF not really a library")
    server = rpc.Server(host="127.0.0.1", port=9710, port_end=9800, silent=True)
    try:
        out = tmp_path / "bench"
        code = cli.run([str(built / "sparse.so"), str(broken), str(built / "dense.so"), "--host", "127.0.0.1",
                        "--port", str(server.port), "--repeat", "4", "--warmup", "1", "--onnx", str(built / "g.onnx"),
                        "--sparsity", "0.75",
                        "--sparsity", "0.9", "--sparsity", "0.0", "--out", str(out), "--quiet"])
    finally:
        server.terminate()
    captured = capsys.readouterr()
    assert code == 1
    report = json.loads((out / results.JSON_NAME).read_text())
    sparse, bad, dense = report["modules"]
    assert bad["status"] == "load_failed" and "failed to load on the device" in bad["error"]
    assert bad["stats"] == {"count": 0} and bad["speedup_vs_first"] is None
    assert sparse["status"] == dense["status"] == "ok" and dense["stats"]["count"] == 4
    assert sparse["verification"]["passed"] and dense["verification"]["max_rel_error"] < 1e-4
    assert "broken: failed to load" in captured.err
    assert (out / results.PLOT_NAME).stat().st_size > 1000  # sparsities 0 and 0.75 measured
    assert report["status"] == "partial" and "1 of 3 modules could not be timed" in report["error"]


def test_every_module_failing_is_a_failed_run_and_results_are_kept(built, tmp_path, capsys):
    from tvm import rpc

    broken = tmp_path / "broken.so"
    broken.write_bytes(b"\x7fELF not really a library")
    server = rpc.Server(host="127.0.0.1", port=9710, port_end=9800, silent=True)
    out = tmp_path / "bench"
    argv = [str(broken), "--host", "127.0.0.1", "--port", str(server.port), "--repeat", "2", "--warmup", "1",
            "--reference", str(built / "reference.npz"), "--out", str(out), "--quiet"]
    try:
        assert cli.run(argv) == 1
        report = json.loads((out / results.JSON_NAME).read_text())
        assert report["status"] == "failed" and report["modules"][0]["status"] == "load_failed"
        capsys.readouterr()
        before = (out / results.JSON_NAME).read_bytes()
        assert cli.run(argv) == 2  # an earlier run's results are never replaced without --force
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("onexn-bench: error: --out ") and "use --force" in err[0]
        assert (out / results.JSON_NAME).read_bytes() == before
        assert cli.run(argv + ["--force"]) == 1
    finally:
        server.terminate()


def test_ctrl_c_keeps_and_shows_what_was_measured(built, tracker, tmp_path):
    server = start_server(tracker, "x86-sigint")
    out = tmp_path / "bench"
    try:
        proc = bench_cli(built / "dense.so", built / "sparse.so", "--tracker", f"127.0.0.1:{tracker}",
                         "--key", "x86-sigint", "--repeat", "100000", "--warmup", "1", "--cooldown-ms", "20",
                         "--out", out, "--quiet")
        wait_for_rounds(proc, out, 3)
        proc.send_signal(signal.SIGINT)
        printed, err = proc.communicate(timeout=120)
    finally:
        server.terminate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "onexn-bench: interrupted: stopped by the user (Ctrl-C) after" in err
    report = json.loads((out / results.JSON_NAME).read_text())
    assert report["status"] == "interrupted" and report["rounds_done"] >= 3
    assert "stopped by the user" in report["error"]
    for m in report["modules"]:
        assert m["status"] == "interrupted" and m["stats"]["count"] >= 3
    assert "dense" in printed and "sparse" in printed and "interrupted" in printed  # the partial table


def wait_for_rounds(proc, out, rounds, timeout=120):
    """Until the running benchmark has saved ``rounds`` rounds (or has ended)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        path = out / results.JSON_NAME
        if path.exists() and json.loads(path.read_text())["rounds_done"] >= rounds:
            return
        time.sleep(0.1)


def test_killed_server_mid_run_keeps_partial_results(built, tracker, tmp_path):
    server = start_server(tracker, "x86-doomed")
    out = tmp_path / "bench"
    try:
        proc = bench_cli(built / "dense.so", built / "sparse.so", "--tracker", f"127.0.0.1:{tracker}",
                         "--key", "x86-doomed", "--repeat", "100000", "--warmup", "1", "--cooldown-ms", "20",
                         "--retries", "1", "--backoff", "0.2", "--queue-timeout", "3", "--out", out, "--quiet")
        wait_for_rounds(proc, out, 3)
    finally:
        server.terminate()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "stopped answering after" in err and "the rounds measured so far are in" in err
    assert "Traceback" not in err
    report = json.loads((out / results.JSON_NAME).read_text())
    assert report["status"] == "interrupted" and report["rounds_done"] >= 3
    for m in report["modules"]:
        assert m["status"] == "interrupted" and m["stats"]["count"] >= 3
    assert len((out / results.CSV_NAME).read_text().splitlines()) == 3


def test_reconnects_when_the_device_comes_back(built, tracker, tmp_path):
    server = start_server(tracker, "x86-flaky")
    out = tmp_path / "bench"
    try:
        proc = bench_cli(built / "sparse.so", "--tracker", f"127.0.0.1:{tracker}", "--key", "x86-flaky",
                         "--repeat", "40", "--warmup", "1", "--cooldown-ms", "100", "--retries", "3", "--backoff", "1",
                         "--queue-timeout", "20", "--out", out, "--quiet")
        wait_for_rounds(proc, out, 3)
        server.terminate()
        server = start_server(tracker, "x86-flaky")
        _, err = proc.communicate(timeout=180)
    finally:
        server.terminate()
    assert proc.returncode == 0, err
    assert "lost the device" in err
    report = json.loads((out / results.JSON_NAME).read_text())
    assert report["status"] == "complete" and report["reconnections"] >= 1
    assert report["modules"][0]["stats"]["count"] == 40


def test_wrong_key_times_out_naming_the_key(tracker):
    with pytest.raises(DeviceUnavailable, match=r"no free device with key 'no-such-phone' .* within 2 s"):
        open_session(Rpc("127.0.0.1", tracker, key="no-such-phone"), queue_timeout=2, log=lambda *_: None)


def test_wrong_key_on_the_command_line_exits_2(built, tracker, tmp_path):
    proc = bench_cli(built / "sparse.so", "--tracker", f"127.0.0.1:{tracker}", "--key", "no-such-phone",
                     "--queue-timeout", "2", "--out", tmp_path / "b")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    lines = [line for line in err.splitlines() if line.startswith("onexn-bench: error:")]
    assert len(lines) == 1 and "no free device with key 'no-such-phone'" in lines[0], err
    assert not (tmp_path / "b" / results.JSON_NAME).exists()  # nothing measured, nothing written


@pytest.mark.parametrize("address, message", [
    ("127.0.0.1:1", "cannot reach the tracker at 127.0.0.1:1: Connection refused (2 tries)"),
    ("127.0.0.1", "'127.0.0.1' is not HOST:PORT"),
])
def test_bad_tracker_address_is_one_line_and_exit_2(built, tmp_path, address, message):
    proc = bench_cli(built / "sparse.so", "--tracker", address, "--key", "k", "--retries", "1", "--backoff", "0.1",
                     "--out", tmp_path / "b")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    lines = [line for line in err.splitlines() if line.startswith("onexn-bench: error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize("extra, message", [
    (["--repeat", "0"], "--repeat=0 is not allowed"),
    (["--affinity", "fastest"], "--affinity=fastest is not allowed: choose one of big, little"),
    (["--label", "a", "--label", "b"], "--label given 2 times for 1 modules"),
    (["--reference", "missing.npz"], "--reference missing.npz does not exist"),
    (["--onnx", "missing.onnx"], "--onnx missing.onnx does not exist"),
])
def test_usage_errors(built, tmp_path, capsys, extra, message):
    code = cli.run([str(built / "sparse.so"), "--host", "127.0.0.1", *extra, "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()


def test_not_a_library_is_a_usage_error(tmp_path, capsys):
    model = tmp_path / "model.onnx"
    model.write_text("x")
    assert cli.run([str(model), "--host", "127.0.0.1", "--out", str(tmp_path / "b")]) == 2
    assert "is not allowed: give a compiled library (.so or .tar)" in capsys.readouterr().err


def test_tuning_measures_through_a_tracker(tracker, tmp_path, rng):
    """onexn-tvm's MetaSchedule runner (for an op none of our kernels computes) and our kernels' knob
    search, both measuring on a device behind a tracker."""
    server = start_server(tracker, "x86-tune")
    try:
        model_path = save(conv_graph(rng, pad=False, size=8, tail="Sigmoid"), tmp_path / "g.onnx")
        options = compiler.Options(trials=1, rpc=Rpc("127.0.0.1", tracker, key="x86-tune"), progress=False)
        sidecar = compiler.compile_onnx(model_path, tmp_path / "t.so", work_dir=tmp_path / "work", options=options,
                                        log=lambda *_: None)
    finally:
        server.terminate()
    assert sidecar["tuning"]["kernel_knobs_measured_on"] == "rpc" and sidecar["layers"][0]["kernel_ms"] > 0
    ms = sidecar["tuning"]["metaschedule"]
    assert ms["tasks"] >= 1 and ms["new_trials"] >= 1 and sidecar["verification"]["passed"]


def test_far_rounds_flag_rounds_any_tvm_process_saw_the_cores_far_apart():
    trips = {"onnxruntime": [None, None, None, None], "tflite": [None] * 4,
             "tvm_dense": [0.12, 0.28, 1.05, 0.21], "tvm_bsr4_p0.9": [0.10, 0.91, 1.20, 0.15]}
    far = stats.far_rounds(trips)
    assert far.tolist() == [False, True, True, False]  # 0.91 >= 4 x 0.10; 0.28 is not
    assert stats.far_rounds({"onnxruntime": [None, None]}) is None  # nothing probed (1 thread)
    # the near rounds' median leaves out the far ones: rounds of 2 runs, the far round 10x slower
    samples = [1.0, 1.2, 10.0, 12.0, 1.1, 1.3]
    assert stats.median_of_rounds(samples, 3, [True, False, True]) == 1.15
    assert stats.median_of_rounds(samples, 3, [False, False, False]) is None
    with pytest.raises(ValueError, match="do not split into 4 rounds"):
        stats.median_of_rounds(samples, 4, [True] * 4)


def test_timing_processes_probe_the_tvm_pool_after_each_turn(built):
    """Each runtime in its own process, two rounds: TVM's process reports its thread pool's round trip
    for every round (a positive time), the other runtimes none; runs per round as asked."""
    from android_bench import host_runtimes

    with np.load(built / "reference.npz") as reference:
        x = reference["input"]
    trips: dict = {}
    samples = host_runtimes.time_in_processes({"onnxruntime": ("onnxruntime", built / "g.onnx"),
                                               "tvm": ("tvm", built / "sparse.so")}, x, threads=2, rounds=2,
                                              number=3, warmup=1, warmup_s=0.01, pool_us=trips)
    assert {k: len(v) for k, v in samples.items()} == {"onnxruntime": 6, "tvm": 6}
    assert all(ms > 0 for v in samples.values() for ms in v)
    assert trips["onnxruntime"] == [None, None]
    assert len(trips["tvm"]) == 2 and all(0 < us < 1e4 for us in trips["tvm"]), trips
    one_thread: dict = {}
    host_runtimes.time_in_processes({"tvm": ("tvm", built / "sparse.so")}, x, threads=1, rounds=1, number=1,
                                    warmup=0, warmup_s=0.0, pool_us=one_thread)
    assert one_thread == {}  # one thread: nothing is handed over, nothing probed

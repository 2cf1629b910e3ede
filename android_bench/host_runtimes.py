"""The dense runtimes we compete with, timed in this process on the same input: onnxruntime (CPU
provider) and the TFLite interpreter (XNNPACK delegate, TensorFlow's default for float models).

Each runner is a zero-argument callable doing one inference; :func:`time_interleaved` takes one
sample of every runner per round (as ``onexn-bench`` does on a device), so drift hits them alike.
"""
from __future__ import annotations

import os
import time
import warnings

import numpy as np


def onnxruntime_runner(path, x: np.ndarray, threads: int = 1):
    """(runner, output) for an ONNX model on input ``x`` (in the model's own layout)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    return (lambda: session.run(None, feed)), session.run(None, feed)[0]


def tflite_runner(path, x_nhwc: np.ndarray, threads: int = 1):
    """(runner, output) for a TFLite model on an NHWC input."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from onexn_tf._keras import tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
        interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], np.ascontiguousarray(x_nhwc))
    interpreter.invoke()
    output = interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy()
    return interpreter.invoke, output


def time_interleaved(runners: dict, *, warmup: int = 5, repeat: int = 30, number: int = 1) -> dict:
    """name -> per-run latencies (ms): ``repeat`` rounds, each timing ``number`` runs of every runner."""
    for _ in range(warmup):
        for run in runners.values():
            run()
    samples = {name: [] for name in runners}
    for _ in range(repeat):
        for name, run in runners.items():
            start = time.perf_counter()
            for _ in range(number):
                run()
            samples[name].append((time.perf_counter() - start) / number * 1e3)
    return samples


# --- one process per runtime ----------------------------------------------------------------------

RUNTIME_KINDS = ("onnxruntime", "tflite", "tvm")


def tvm_runner(path, x_nchw: np.ndarray):
    """(runner, output) for a Relax library built by ``onexn-tvm`` for this machine."""
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(path)), tvm.cpu())
    main, tensor = vm["main"], tvm.runtime.tensor(x_nchw)
    out = main(tensor)
    out = out[0] if isinstance(out, (list, tuple)) or type(out).__name__ == "Array" else out
    return (lambda: main(tensor)), out.numpy()


def make_runner(kind: str, path, x_nchw: np.ndarray, threads: int):
    """(runner, output) for one runtime; ``x_nchw`` is transposed for TFLite."""
    if kind == "onnxruntime":
        return onnxruntime_runner(path, x_nchw, threads)
    if kind == "tflite":
        return tflite_runner(path, x_nchw.transpose(0, 2, 3, 1), threads)
    if kind == "tvm":  # threads come from TVM_NUM_THREADS, read when its thread pool starts
        return tvm_runner(path, x_nchw)
    raise ValueError(f"unknown runtime kind {kind!r}: one of {RUNTIME_KINDS}")


WARMUP_S = 0.05
"""Seconds of untimed runs a turn starts with. Measured on a 2-vCPU cloud host (AMD EPYC Zen 5), each
turn after a 0.6-s idle, MobileNetV2: our 2-thread p = 0.9 build took 1.41, 0.92, 0.87 ms on its first
runs and reached its steady 0.68 ms only after some 15 runs (about 12 ms); TFLite's 2-thread runs,
2.4 ms each, were steady after 3. A count of warm-up runs therefore shortchanges the faster model."""


def warm_up(run, runs: int, seconds: float, clock=time.perf_counter) -> int:
    """Call ``run`` at least ``runs`` times and until ``seconds`` have passed; the number of calls.

    Timing turns follow an idle wait (:func:`wait_until_idle`), and cores back from idle run slow for
    milliseconds whatever runs on them: warming up by time gives a 0.7-ms model and a 2-ms one the
    same chance to reach speed, where a count of runs does not (:data:`WARMUP_S`)."""
    deadline = clock() + seconds
    done = 0
    while done < runs or clock() < deadline:
        run()
        done += 1
    return done


def pool_probe(threads: int):
    """A callable giving the round trip (µs) of our thread pool (the one our libraries run on,
    export/tvm/thread_pool.cc) over ``threads`` tasks that do nothing: handing work to the other cores
    and hearing back, so the time two cores take to see each other's writes. On a cloud host that is
    where the hypervisor put the vCPUs: on a 2-vCPU AMD EPYC Zen 5 it took 0.10-0.28 µs while a C
    ping-pong between the two cores took 85-145 ns, and 0.9-1.3 µs while the ping-pong took 400-460 ns
    (no shared L3), and there our 2-thread builds, which hand data between the cores at every layer,
    ran up to 2.2x slower and TFLite about 1.25x. (TVM's own pool, whose workers wait in sched_yield
    calls, read 0.6 µs near and 2.3 far in one session and 2.5-5.7 µs with the cores near in another;
    and its waiting workers took a core's share from the runs timed after it.) The first of two
    batches wakes the pool's worker, asleep since the last turn; the second is timed."""
    import tvm
    from tvm.script import tirx as T

    from export.tvm import thread_pool

    @T.prim_func
    def hand_over(a: T.Buffer((1024,), "float32")):
        for task in T.parallel(threads):
            a[task * 16] = a[task * 16] + T.float32(1)  # one cache line per task

    lib = thread_pool.load(tvm.compile(tvm.IRModule({"main": hand_over}),
                                       target=tvm.target.Target({"kind": "llvm", "num-cores": threads})), threads)
    buffer = tvm.runtime.tensor(np.zeros(1024, np.float32))
    timer = lib.time_evaluator("main", tvm.cpu(), number=200, repeat=2)
    return lambda: float(timer(buffer).results[-1]) * 1e6


def time_in_processes(specs: dict, x_nchw: np.ndarray, *, threads: int = 1, rounds: int = 15, number: int = 5,
                      warmup: int = 2, warmup_s: float = WARMUP_S, pause_s: float = 0.05,
                      outputs: bool = False, pool_us: dict | None = None) -> dict:
    """name -> per-run latencies (ms) for ``specs`` (name -> (kind, path)), each model in a worker process
    of its own, interleaved round by round.

    Each turn starts with untimed runs, ``warmup`` of them and for at least ``warmup_s`` seconds: a turn
    follows an idle wait, and cores back from idle run slow for milliseconds (:func:`warm_up`).

    With ``pool_us`` (a dict, filled in place) and several threads, every TVM process also times its
    thread pool's round trip (:func:`pool_probe`) after its timed runs (not before them: the probe's
    worker keeps spinning, then yielding, for 2 ms after it), and ``pool_us[name]`` gets it for each round (None for
    the other runtimes): which turns ran while the host kept the cores far apart.

    Runtimes in one process disturb each other: a thread pool that spins after its call (onnxruntime's,
    TVM's) takes the core the next runtime's threads want, so TFLite with 2 threads measured as slow as
    with 1; and models sharing a process share its allocator and caches unevenly. Here every model
    runs in its own process; in a round each process in turn (the order rotating) runs ``warmup`` +
    ``number`` inferences while the others wait on a pipe. The next process starts only once every
    process has gone idle (:func:`wait_until_idle`, at least ``pause_s``): TVM's pool workers call
    ``sched_yield`` 300,000 times before they sleep, up to ~0.3 s of a core after every turn, which
    made onnxruntime at 2 threads measure 3.5× slower than alone; waiting for the last process only
    still left TFLite at 2 threads as slow as at 1 and onnxruntime 2–3× slower when four TVM builds
    of a model shared the run, and judging each process alone did with ten. With ``outputs``, returns
    ``(samples, {name: output})``."""
    import json
    import subprocess
    import sys
    import tempfile

    env = dict(os.environ, TVM_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    workers = {}
    with tempfile.TemporaryDirectory() as tmp:
        x_path = os.path.join(tmp, "x.npy")
        np.save(x_path, x_nchw)
        try:
            for index, (name, (kind, path)) in enumerate(specs.items()):
                log = open(os.path.join(tmp, f"{index}.log"), "w")  # the runtimes' own chatter, shown on failure
                proc = subprocess.Popen([sys.executable, "-m", "android_bench.host_runtimes"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=log, env=env, text=True, bufsize=1)
                proc.log_path = log.name
                log.close()
                workers[name] = proc
                proc.stdin.write(json.dumps({"kind": kind, "models": {name: str(path)}, "input": x_path,
                                             "threads": threads, "probe": pool_us is not None}) + "\n")
            for name, proc in workers.items():
                _reply(proc, name)  # loaded
            pids = [proc.pid for proc in workers.values()]
            wait_until_idle(*pids)  # loading ran each model once
            samples = {name: [] for name in specs}
            probes = {name: [] for name in specs}
            order = list(workers)
            for r in range(rounds):
                for name in order[r % len(order):] + order[:r % len(order)]:
                    workers[name].stdin.write(json.dumps({"number": number, "warmup": warmup,
                                                                "warmup_s": warmup_s}) + "\n")
                    reply = _reply(workers[name], name)
                    samples[name].extend(reply["times"][name])
                    probes[name].append(reply.get("pool_us"))
                    time.sleep(pause_s)
                    wait_until_idle(*pids)  # all: a pool may wake later
            if pool_us is not None and threads > 1:
                pool_us.update(probes)
            got = {}
            if outputs:
                for index, (name, proc) in enumerate(workers.items()):
                    out_path = os.path.join(tmp, f"{index}.npz")
                    proc.stdin.write(json.dumps({"outputs": out_path}) + "\n")
                    _reply(proc, name)
                    with np.load(out_path) as data:
                        got.update({name: data[name] for name in data.files})
        finally:
            for proc in workers.values():
                if proc.poll() is None:
                    proc.stdin.close()
                    proc.wait(timeout=30)
    return (samples, got) if outputs else samples


def wait_until_idle(*pids: int, window_s: float = 0.05, timeout_s: float = 10.0) -> float:
    """Wait until the processes ``pids`` together use (almost) no CPU over a ``window_s``; the seconds
    waited.

    CPU times come in clock ticks (10 ms on Linux), so "idle" is at most one tick gained by all of
    them together in the window. Judging each process alone is not enough: with ten TVM builds in a
    run, their pool workers, each calling ``sched_yield`` in its spin, hand the cores to one another,
    so each gains at most a tick per window and looks idle while together they hold a whole core,
    and each spin of 300,000 yields then lasts as long as the others' (TFLite and onnxruntime at 2
    threads measured 2–4× slower than alone). Gives up after ``timeout_s`` (a process that never
    idles should not hang a benchmark), or at once when a process is gone."""
    import psutil

    def cpu(process):
        return sum(process.cpu_times()[:2])

    started = time.perf_counter()
    try:
        processes = [psutil.Process(pid) for pid in pids]
        before = sum(cpu(p) for p in processes)
        while time.perf_counter() - started < timeout_s:
            time.sleep(window_s)
            now = sum(cpu(p) for p in processes)
            if now - before <= 0.0105:
                break
            before = now
    except psutil.Error:
        pass
    return time.perf_counter() - started


def _reply(proc, name):
    import json

    line = proc.stdout.readline()
    if not line:
        with open(proc.log_path) as f:
            tail = f.read()[-2000:]
        raise RuntimeError(f"the timing process of {name} ended (exit code {proc.wait()}): {tail}")
    message = json.loads(line)
    if "error" in message:
        raise RuntimeError(f"the timing process of {name} failed: {message['error']}")
    return message


def _worker() -> None:
    """The other end of :func:`time_in_processes`: JSON lines on stdin, JSON lines on stdout."""
    import json
    import sys

    out = sys.stdout
    sys.stdout = sys.stderr  # whatever the runtimes print must not reach the protocol
    setup = json.loads(sys.stdin.readline())
    x = np.load(setup["input"])
    try:
        runners, results = {}, {}
        for name, path in setup["models"].items():
            runners[name], results[name] = make_runner(setup["kind"], path, x, setup["threads"])
        # TVM processes only: elsewhere the runtime's own pool (XNNPACK's, onnxruntime's) still spins
        # after its runs and shares the cores with TVM's (2.4 µs beside TFLite, 0.65 beside TVM, at once)
        probe = pool_probe(setup["threads"]) if setup.get("probe") and setup["threads"] > 1 and \
            setup["kind"] == "tvm" else None
        out.write(json.dumps({"loaded": list(runners)}) + "\n")
    except Exception as error:  # reported to the parent, which raises it
        out.write(json.dumps({"error": f"{type(error).__name__}: {error}"}) + "\n")
        return
    out.flush()
    for line in sys.stdin:
        command = json.loads(line)
        if "outputs" in command:
            np.savez(command["outputs"], **results)
            out.write("{}\n")
        else:
            times, round_trips = {}, []
            for name, run in runners.items():
                warm_up(run, command["warmup"], command.get("warmup_s", 0.0))
                times[name] = []
                for _ in range(command["number"]):
                    start = time.perf_counter()
                    run()
                    times[name].append((time.perf_counter() - start) * 1e3)
                round_trips += [probe()] if probe else []
            out.write(json.dumps({"times": times, "pool_us": max(round_trips, default=None)}) + "\n")
        out.flush()


if __name__ == "__main__":
    _worker()

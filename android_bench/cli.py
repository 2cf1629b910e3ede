"""``onexn-bench``: time compiled modules on an ARM device (or any TVM RPC server), interleaved.

    onexn-bench build/dense.so build/sparse.so --tracker 127.0.0.1:9190 --key pixel2 --out bench/
    onexn-bench build/*.so --host BOARD_HOST --port 9090 --threads 1 --repeat 50 --cooldown-ms 200
    onexn-bench build/dense.so build/s50.so build/s70.so build/s90.so --tracker 127.0.0.1:9190 --key rk3399 \\
        --affinity big --threads 2 --onnx exported/model.onnx

The first module is the baseline: every other one is reported with its speedup over it (median). Each
module's output is checked against --reference (an .npz with 'input' and 'output') or against
onnxruntime running --onnx MODEL on the same input.
Results: OUT/results.json, OUT/results.csv, OUT/latency_vs_sparsity.png (two sparsities or more);
both files are rewritten after every round, so an interrupted run keeps what it measured.
An --out that holds an earlier run's results is refused unless --force is given.
Exit codes: 0 all modules timed; 1 a module failed to load or to match the reference, or the device
was lost; 2 a usage error (bad option or file, unreachable tracker/server, no device for the key,
an --out holding results); 130 stopped with Ctrl-C (the rounds measured so far are kept and shown).
"""
from __future__ import annotations

import sys
from pathlib import Path

from onexn_tf import cli


def build_parser():
    p = cli.doc_parser("onexn-bench", __doc__)
    p.add_argument("modules", nargs="+", type=Path, help="compiled libraries (.so / .tar) from onexn-tvm")
    where = p.add_argument_group("device")
    where.add_argument("--tracker", type=cli.host_port, metavar="HOST:PORT", help="TVM RPC tracker")
    where.add_argument("--key", help="device key at the tracker")
    where.add_argument("--priority", type=int, default=1, help="request priority at the tracker")
    where.add_argument("--host", help="RPC server host (direct connection, no tracker)")
    where.add_argument("--port", type=int, default=9090, help="RPC server port (default 9090)")
    where.add_argument("--session-timeout", type=int, default=600,
                       help="seconds the device keeps the session (0: no limit; default 600)")
    where.add_argument("--queue-timeout", type=float, default=60.0,
                       help="seconds to wait for a free device with the key (default 60)")
    where.add_argument("--retries", type=int, default=2, help="connection attempts / reconnections (default 2)")
    where.add_argument("--backoff", type=float, default=1.0, help="seconds before the first retry, doubled each time")
    where.add_argument("--emulated", action="store_true", help="the device is emulated (qemu): say so in the results")
    timing = p.add_argument_group("timing")
    timing.add_argument("--warmup", type=int, default=5, help="untimed runs per module first (default 5)")
    timing.add_argument("--number", type=int, default=1, help="runs averaged into one sample (default 1)")
    timing.add_argument("--repeat", type=int, default=30, help="samples per module, interleaved (default 30)")
    timing.add_argument("--min-repeat-ms", type=int, default=0, help="raise --number until a sample lasts this long")
    timing.add_argument("--cooldown-ms", type=int, default=0, help="pause between rounds (thermal cool-down)")
    timing.add_argument("--threads", type=int, help="worker threads on the device (default: the runtime's)")
    timing.add_argument("--affinity", default="big",
                        help="thread pool on the big or little cores (default big); to pin cores, start the "
                             "server under taskset")
    what = p.add_argument_group("modules")
    what.add_argument("--label", action="append", default=[], help="a label per module, in order (default: file name)")
    what.add_argument("--sparsity", type=float, action="append", default=[],
                      help="a block sparsity per module, in order (default: from the onexn-tvm sidecar)")
    what.add_argument("--reference", type=Path, help=".npz with 'input' (and 'output', to check every module)")
    what.add_argument("--onnx", type=Path,
                      help="check every module against onnxruntime running this ONNX model on the same input")
    what.add_argument("--rtol", type=float, default=1e-4, help="allowed max |out - reference| / max |reference|")
    what.add_argument("--seed", type=int, default=0, help="seed of the random input when there is no reference")
    p.add_argument("--out", type=Path, default=Path("bench_results"), help="output directory (default bench_results)")
    p.add_argument("--force", action="store_true", help="replace the results of an earlier run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def plan(args):
    """(Rpc, modules with their expected outputs, input, Settings) from parsed arguments; usage errors raised."""
    from android_bench import modules as mods, results
    from android_bench.connection import Rpc
    from android_bench.runner import Settings
    from onexn_tf import files
    from onexn_tf.errors import InvalidArgument

    if bool(args.tracker) == bool(args.host):
        raise InvalidArgument("give either --tracker HOST:PORT with --key, or --host (and --port) for a direct server")
    if args.tracker and not args.key:
        raise InvalidArgument("--tracker needs --key (the device's key at the tracker)")
    rpc = (Rpc(*args.tracker, key=args.key, priority=args.priority, session_timeout=args.session_timeout)
           if args.tracker else Rpc(args.host, args.port, session_timeout=args.session_timeout))
    for flag, values in (("--label", args.label), ("--sparsity", args.sparsity)):
        if values and len(values) != len(args.modules):
            raise InvalidArgument(f"{flag} given {len(values)} times for {len(args.modules)} modules: give one per module")
    settings = Settings(warmup=args.warmup, number=args.number, repeat=args.repeat, min_repeat_ms=args.min_repeat_ms,
                        cooldown_ms=args.cooldown_ms, threads=args.threads, affinity=args.affinity,
                        rtol=args.rtol, retries=args.retries, backoff=args.backoff,
                        queue_timeout=args.queue_timeout)
    settings.check()
    files.check_writable_dir(args.out, "--out")
    earlier = args.out / results.JSON_NAME
    if earlier.exists() and not args.force:
        raise FileExistsError(f"--out {args.out} holds the results of an earlier run ({earlier}): use --force to "
                              "replace them, or choose another --out")
    modules = [mods.load_module_spec(path, label=args.label[i] if args.label else None,
                                     sparsity=args.sparsity[i] if args.sparsity else None)
               for i, path in enumerate(args.modules)]
    reference = mods.load_reference(args.reference) if args.reference else None
    x = mods.input_for(modules, reference, seed=args.seed)
    expected = reference.output if reference else None
    if args.onnx:
        if expected is not None:
            raise InvalidArgument("give either --onnx or a --reference with an 'output', not both")
        expected = mods.onnxruntime_output(args.onnx, x)
    for module in modules:
        module.expected = expected
    return rpc, modules, x, settings


def main(args) -> int:
    from android_bench import results, runner
    from android_bench.connection import DeviceLost

    rpc, modules, x, settings = plan(args)
    try:
        report = runner.run(rpc, modules, x, settings, args.out, emulated=args.emulated,
                            progress=not args.quiet, log=lambda message: print(message, file=sys.stderr))
    except DeviceLost as error:
        print(f"onexn-bench: {error}; the rounds measured so far are in {args.out}", file=sys.stderr)
        return 1
    print(results.format_table(report))
    if report["status"] == "interrupted":
        print(f"onexn-bench: interrupted: {report['error']}; the results so far are in {args.out}", file=sys.stderr)
        return 130
    if report["emulated"]:
        print(f"NOTE: {report['note']}")
    plotted = results.plot_latency_vs_sparsity(report, args.out / results.PLOT_NAME)
    print(f"wrote {args.out / results.JSON_NAME}, {args.out / results.CSV_NAME}"
          + (f", {args.out / results.PLOT_NAME}" if plotted else ""))
    failed = [m for m in report["modules"] if m["status"] != "ok"]
    for m in failed:
        print(f"onexn-bench: {m['label']}: {m['error']}", file=sys.stderr)
    return 1 if failed else 0


def run(argv=None) -> int:
    return cli.run(main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(run())

"""``onexn-arm-device``: an emulated aarch64 TVM RPC device (qemu user mode) for machines without a phone.

    onexn-arm-device prepare                         # once: userland, qemu, TVM wheels (~1 min, cached)
    python -m tvm.exec.rpc_tracker --host 127.0.0.1 --port 9190 &
    onexn-arm-device serve --tracker 127.0.0.1:9190 --key qemu-arm64 &
    python -m tvm.exec.query_rpc_tracker --host 127.0.0.1 --port 9190   # 'qemu-arm64' free after ~40 s
    onexn-tvm model.onnx --out build/arm.so --target aarch64-linux
    onexn-bench build/arm.so --tracker 127.0.0.1:9190 --key qemu-arm64 --emulated

The cache defaults to ~/.cache/onexn-tf/arm64 ($ONEXN_ARM_CACHE, or --cache). Timings on this device
are qemu's: they show that a build runs and matches, not how fast a phone is.
Exit codes: 0 done; 1 a preparation step failed (network, apt); 2 a usage error.
"""
from __future__ import annotations

import sys
from pathlib import Path

from onexn_tf import cli


def build_parser():
    p = cli.doc_parser("onexn-arm-device", __doc__)
    sub = p.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="make (or reuse) the emulated device in the cache")
    serve = sub.add_parser("serve", help="run its TVM RPC server in the foreground")
    status = sub.add_parser("status", help="say whether the device is prepared, and with what")
    for s in (prep, serve, status):
        s.add_argument("--cache", type=Path, help="cache directory (default ~/.cache/onexn-tf/arm64)")
    serve.add_argument("--tracker", type=cli.host_port, metavar="HOST:PORT", help="register with this tracker")
    serve.add_argument("--key", help="the device key at the tracker")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=9090, help="first port to try (default 9090)")
    serve.add_argument("--threads", type=int, help="TVM worker threads on the device (TVM_NUM_THREADS)")
    return p


def main(args) -> int:
    import os

    from android_bench import emulated
    from onexn_tf.errors import InvalidArgument

    if args.command == "serve" and args.threads is not None and args.threads < 1:
        raise InvalidArgument(f"--threads={args.threads} is not allowed: it must be >= 1")
    if args.command == "serve" and not 0 < args.port < 65536:
        raise InvalidArgument(f"--port={args.port} is not allowed: it must be in 1..65535")
    if args.command == "prepare":
        try:
            emulated.prepare(args.cache)
        except emulated.PrepareError as error:
            print(f"onexn-arm-device: preparation failed: {error}", file=sys.stderr)
            return 1
        return 0
    device = emulated.find(args.cache)
    if device is None:
        raise InvalidArgument(f"no prepared device in {args.cache or emulated.DEFAULT_CACHE}: "
                              "run `onexn-arm-device prepare` first")
    if args.command == "status":
        print("\n".join(f"{k}: {v}" for k, v in device.info.items()))
        return 0
    if args.tracker and not args.key:
        raise InvalidArgument("--tracker needs --key (the key this device registers under)")
    cmd = device.server_command(tracker=args.tracker, key=args.key, host=args.host, port=args.port)
    print("starting the emulated aarch64 RPC server (import tvm takes ~20 s under qemu, twice)", file=sys.stderr)
    sys.stdout.flush()
    os.execve(cmd[0], cmd, device.env(args.threads))  # the server replaces this process: Ctrl-C / kill stop it directly


def run(argv=None) -> int:
    return cli.run(main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(run())

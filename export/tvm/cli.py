"""``onexn-tvm``: compile a (1×N-pruned) ONNX model with TVM, pointwise layers as BSR kernels.

    onexn-tvm exported/model.onnx --out build/sparse.so                          # host, untuned dense part
    onexn-tvm exported/model.onnx --out build/sparse.so --trials 32              # + MetaSchedule, 32/task
    onexn-tvm exported/model.onnx --out build/dense.so --dense --trials 32       # the dense baseline
    onexn-tvm model.onnx --out build/a72.so --target aarch64-linux --num-cores 4 # cross-compiled
    onexn-tvm model.onnx --out build/phone.tar --target android-arm64            # objects, no NDK needed
    onexn-tvm model.onnx --out build/phone.so --target android-arm64 --trials 32 \\
        --rpc-tracker 127.0.0.1:9190 --rpc-key pixel                             # tuned on the phone

Tuning records live in --work-dir (default: <out dir>/tvm_tuning); a rerun reuses them, and a stopped
run continues where it stopped. Exit codes: 0 compiled and verified; 1 the build did not reproduce
onnxruntime (nothing written); 2 a usage error (bad file, target, option, missing cross compiler).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from export.tvm import bsr as bsr_format
from export.tvm import targets
from onexn_tf.errors import InvalidArgument


def build_parser() -> argparse.ArgumentParser:
    from onexn_tf import cli

    p = cli.doc_parser("onexn-tvm", __doc__)
    p.add_argument("onnx", type=Path, help="ONNX model (from onexn-export; NHWC or NCHW input)")
    p.add_argument("--out", type=Path, required=True, help="compiled library: .so (linked) or .tar (objects)")
    p.add_argument("--target", default="host", help=f"one of {', '.join(targets.TARGET_NAMES)}")
    p.add_argument("--mcpu", help="override the target's CPU (LLVM name, e.g. cortex-a55, znver4)")
    p.add_argument("--num-cores", type=int, help="cores the target runs on (MetaSchedule's parallelism)")
    p.add_argument("--bsr", type=int, default=4, help=f"block rows: output channels per block ({bsr_format.BLOCK_ROWS})")
    p.add_argument("--bsc", type=int, default=1, help="block columns: input channels per block (only 1)")
    p.add_argument("--min-sparsity", type=float, default=0.2,
                   help="rewrite a pointwise layer only if at least this fraction of its blocks is zero")
    p.add_argument("--dense", action="store_true", help="every layer dense through the same kernels (the dense baseline)")
    p.add_argument("--trials", type=int, default=0, help="MetaSchedule trials per task our kernels do not cover "
                   "(0: untuned)")
    p.add_argument("--no-tune-kernels", "--no-tune-bsr", dest="no_tune_kernels", action="store_true",
                   help="our kernels' default knobs instead of a measured search")
    p.add_argument("--work-dir", type=Path, help="tuning records (default: <out dir>/tvm_tuning)")
    p.add_argument("--rpc-tracker", type=cli.host_port, metavar="HOST:PORT", help="measure through this RPC tracker")
    p.add_argument("--rpc-key", help="device key at the tracker")
    p.add_argument("--rpc", type=cli.host_port, metavar="HOST:PORT", help="measure on this RPC server directly")
    p.add_argument("--rtol", type=float, default=1e-4, help="allowed max |tvm - onnxruntime| / max |onnxruntime|")
    p.add_argument("--samples", type=int, default=2, help="random inputs for verification")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vm", default="compiled", help="the Relax VM's main function: compiled (machine code) or "
                   "bytecode (interpreted; what a per-kernel profile needs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--force", action="store_true", help="replace an existing --out library and its sidecar")
    return p


def options_from(args):
    from export.tvm import compiler
    from onexn_tf import rpc as rpc_address

    targets.check_name(args.target)
    bsr_format.check_block(args.bsr, args.bsc)
    if args.trials < 0:
        raise InvalidArgument(f"--trials={args.trials} must be >= 0")
    rpc = rpc_address.from_flags(args.rpc_tracker, args.rpc_key, args.rpc)
    return compiler.Options(target=args.target, mcpu=args.mcpu, num_cores=args.num_cores, bsr=args.bsr,
                            bsc=args.bsc, min_sparsity=args.min_sparsity, dense=args.dense, trials=args.trials,
                            tune_kernels=not args.no_tune_kernels, rpc=rpc, rtol=args.rtol, samples=args.samples,
                            seed=args.seed, progress=not args.quiet, vm=args.vm)


def main(args) -> int:
    from export.tvm import compiler
    from export.verify import VerificationError

    options = options_from(args)
    existing = [path for path in (args.out, compiler.sidecar_path(args.out)) if path.exists()]
    if existing and not args.force:  # checked before any work, like onexn-export's
        raise FileExistsError(f"--out {existing[0]} already exists (use --force to overwrite)")
    try:
        sidecar = compiler.compile_onnx(args.onnx, args.out, work_dir=args.work_dir, options=options)
    except VerificationError as error:
        print(f"onexn-tvm: verification failed: {error}", file=sys.stderr)
        return 1
    layers = sidecar["layers"]
    mean = sum(layer["block_sparsity"] for layer in layers) / len(layers) if layers else 0.0
    print(f"wrote {args.out} ({sidecar['target']['name']}, {sidecar['target']['linker']}): {len(layers)} BSR layers "
          f"(mean block sparsity {mean:.3f}), {len(sidecar['dense_pointwise'])} pointwise layer(s) dense; "
          f"sidecar {compiler.sidecar_path(args.out)}")
    return 0


def run(argv=None) -> int:
    from onexn_tf import cli

    return cli.run(main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(run())

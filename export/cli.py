"""``onexn-export``: deployable SavedModel / ONNX / TFLite from a 1×N-pruned model, verified.

    onexn-export runs/v2_1x4 --out exported/                       # a finished onexn-train job
    onexn-export pruned.keras --out exported/ --formats onnx tflite_sparse --opset 17 --onnx-layout nchw
    onexn-export stripped.keras --n 4 --permutations permutations.json --out exported/
    onexn-export runs/v2_1x4 --out exported/ --verify             # re-check artifacts already there
    onexn-export runs/v2_x --out exported/ --formats tflite_sparse --require-xnnpack-sparse  # for Android

tflite_sparse: every export and --verify also reads the file back and reports, op by op, whether
TFLite's XNNPACK will run it on its sparse (NCHW) path and why not (sidecar: xnnpack_sparse).

Exit codes: 0 exported and verified; 1 an artifact failed verification (nothing of it is left); 2 a
usage error (bad source, option or output directory).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from export.options import DEFAULT_FORMATS, DEFAULT_OPSET, FORMATS, check_require_xnnpack_sparse
from onexn_tf import cli, files
from onexn_tf.options import ARCHITECTURES, CRITERIA, check_n


def build_parser() -> argparse.ArgumentParser:
    p = cli.doc_parser("onexn-export", __doc__)
    p.add_argument("source", type=Path, help="pruned or stripped model (.keras / .h5 / SavedModel) or a job dir")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--formats", nargs="+", default=list(DEFAULT_FORMATS), choices=FORMATS)
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (13-18)")
    p.add_argument("--onnx-layout", choices=("nhwc", "nchw"), default="nhwc", help="ONNX input layout")
    p.add_argument("--checkpoint", choices=("best", "last"), help="job dir: export this checkpoint")
    p.add_argument("--arch", choices=ARCHITECTURES, help="default: from the job or the model name")
    p.add_argument("--n", type=int, help="block height N of a stripped model (pruned models and jobs know it)")
    p.add_argument("--criterion", default="block_l1", choices=CRITERIA, help="of a stripped model")
    p.add_argument("--permutations", type=Path, help="block orders of a stripped model (permutations.json)")
    p.add_argument("--logits", action="store_true", help="export without the final softmax (outputs logits)")
    p.add_argument("--rtol", type=float, default=1e-4, help="allowed max |runtime - keras| / max |keras|")
    p.add_argument("--samples", type=int, default=8, help="random inputs for verification")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="overwrite existing artifacts")
    p.add_argument("--verify", action="store_true", help="only verify the artifacts already in --out")
    p.add_argument("--require-xnnpack-sparse", action="store_true",
                   help="fail (exit 1) unless XNNPACK would run the tflite_sparse file on its sparse path")
    return p


def main(args) -> int:
    if args.n is not None:
        check_n(args.n, "--n")
    check_require_xnnpack_sparse(args.formats, args.require_xnnpack_sparse)
    if not args.source.exists():  # the checks that need no TensorFlow come before importing it
        raise cli.UsageError(f"{args.source}: no such model file or job directory")
    files.check_writable_dir(args.out, "--out")
    from export import exporter  # TensorFlow from here on
    from export.verify import VerificationError

    options = exporter.Options(formats=tuple(dict.fromkeys(args.formats)), opset=args.opset,
                               nchw=args.onnx_layout == "nchw", rtol=args.rtol, samples=args.samples,
                               seed=args.seed, force=args.force,
                               require_xnnpack_sparse=args.require_xnnpack_sparse)
    try:
        report = exporter.export(args.source, args.out, options=options, verify_only=args.verify,
                                 checkpoint=args.checkpoint, arch=args.arch, n=args.n, criterion=args.criterion,
                                 permutations=args.permutations, logits=args.logits)
    except VerificationError as error:
        print(f"onexn-export: verification failed: {error}", file=sys.stderr)
        return 1
    print(exporter.summary_table(report))
    return 0


def run(argv=None) -> int:
    return cli.run(main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(run())

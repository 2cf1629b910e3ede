"""Does XNNPACK take its sparse path on our TFLite files? Predicted from the file, checked on aarch64.

    python benchmarks/xnnpack_arm.py --out xnnpack_arm_out [--archs mobilenet_v2 ...] [--alpha 0.5 --size 128]

For each MobileNet (random non-degenerate weights, BatchNorm calibrated), the XNNPACK-ready variant
(``models.build(..., xnnpack=True)``) and the stock Keras model, 1×4 pruned at each rate and exported:

- ``dense``, ``stock dense``: the ready and the stock model's ``model.tflite`` (weights stored dense:
  XNNPACK's dense path); the faster of the two is the baseline of the ratios;
- ``ready p``: ``model_sparse.tflite`` of the ready model (sparse tensors + DENSIFY);
- ``stock p``: the stock model's ``model_sparse.tflite`` (asymmetric padding: the negative control).

Each file's verdict from ``export/xnnpack_sparse.py`` (read off the file), then all files of a model
run interleaved on the emulated aarch64 device with the aarch64 TFLite runtime (LiteRT 2.1.2, XNNPACK
on, 1 thread): outputs against Keras, median latency and its ratio to the faster dense file. Under qemu, time
follows instruction counts, not a phone's speed: a file that took the sparse path runs in a fraction
of the dense time and gets faster with p; one XNNPACK refused stays at the dense time.
Writes ``results.json`` and ``results.csv``.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

import onexn_tf
from android_bench import emulated, tflite_emulated
from export import tflite_format, xnnpack_sparse
from onexn_tf import models
from onexn_tf._keras import keras


def calibrated(arch: str, alpha: float, size: int, xnnpack: bool, seed: int = 0):
    """A model with random BatchNorm affine + statistics of a random batch (outputs that vary)."""
    keras.utils.set_random_seed(seed)
    model = models.build(arch, alpha=alpha, input_shape=(size, size, 3), classes=100, classifier_activation=None,
                         xnnpack=xnnpack)
    rng = np.random.default_rng(seed)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bns:
        layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape).astype(np.float32))
        layer.beta.assign(rng.uniform(-0.3, 0.3, layer.beta.shape).astype(np.float32))
        layer.momentum = 0.0
    model(rng.uniform(-1, 1, (8, size, size, 3)).astype(np.float32), training=True)  # statistics := the batch's
    for layer in bns:
        layer.momentum = 0.999
    return model


def pruned(model, p: float):
    wrapped = onexn_tf.prune_1xn(model, n=4, sparsity=p)
    onexn_tf.update_masks(wrapped)
    return onexn_tf.strip(wrapped)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("xnnpack_arm_out"))
    p.add_argument("--archs", nargs="+", default=list(models.ARCHITECTURES))
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--rates", type=float, nargs="+", default=[0.5, 0.75, 0.9])
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = emulated.prepare_litert(log=print)
    rows = []
    for arch in args.archs:
        ready, stock = (calibrated(arch, args.alpha, args.size, xnnpack) for xnnpack in (True, False))
        stock.set_weights(ready.get_weights())  # the same weights: only the padding differs
        files = {"dense": args.out / f"{arch}_dense.tflite", "stock dense": args.out / f"{arch}_stock_dense.tflite"}
        keras_models = {"dense": ready, "stock dense": stock}
        tflite_format.write(ready, files["dense"])
        tflite_format.write(stock, files["stock dense"])
        for rate in args.rates:
            for kind, model in (("ready", ready), ("stock", stock)):
                label = f"{kind} p={rate:g}"
                keras_models[label] = pruned(model, rate)
                files[label] = args.out / f"{arch}_{kind}_{rate:g}_sparse.tflite"
                tflite_format.write(keras_models[label], files[label], sparse=True)
        x = np.random.default_rng(1).uniform(-1, 1, (3, args.size, args.size, 3)).astype(np.float32)
        print(f"{arch}: {len(files)} files on the emulated aarch64 device ({args.rounds} rounds)", flush=True)
        report = tflite_emulated.run(device, files, x, rounds=args.rounds)
        dense_ms = min(report["models"][label]["stats"]["median"] for label in ("dense", "stock dense"))
        for label, path in files.items():
            verdict = xnnpack_sparse.check(path)
            want = keras_models[label](x, training=False).numpy()
            got = report["models"][label]["outputs"]
            median = report["models"][label]["stats"]["median"]
            rows.append({"arch": arch, "file": label, "predicted_sparse_path": verdict.accepted,
                         "zero_fraction": verdict.zero_fraction, "why_not": verdict.reasons[0] if verdict.reasons else "",
                         "emulated_ms": round(median, 2), "best_dense_over_this": round(dense_ms / median, 2),
                         "max_rel_error_vs_keras": float(np.abs(got - want).max() / np.abs(want).max())})
            print(f"  {label:13s} predicted sparse path: {'yes' if verdict.accepted else 'no ':3s}  "
                  f"emulated {median:8.1f} ms  best dense/this {dense_ms / median:5.2f}  "
                  f"vs Keras {rows[-1]['max_rel_error_vs_keras']:.1e}", flush=True)
    meta = {"runtime": report["runtime"], "xnnpack_delegate": report["xnnpack_delegate"], "alpha": args.alpha,
            "size": args.size, "rounds": args.rounds, "note": "qemu user-mode emulation: instruction counts, not "
            "device timings"}
    (args.out / "results.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    with open(args.out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()

"""What the XNNPACK-ready padding costs in accuracy, measured on the demo's data.

    python benchmarks/xnnpack_padding_cost.py --out padding_cost_out [--seeds 0 1]

The demo's model (MobileNetV2 0.35, 64 px) and data (4 classes of gratings, 768 train / 256 val):

1. dense training of the stock Keras model, 4 epochs (the demo's dense stage);
2. its weights in the XNNPACK-ready variant (``--xnnpack``: symmetric padding before the stride-2
   convs, so every stride-2 layer sees its input shifted by half a pixel), evaluated without any
   training: the cost of loading stock (e.g. ImageNet) weights unchanged;
3. one-shot 1×4 pruning at p = 0.75 (above XNNPACK's 2/3) from the dense model and 2 fine-tuning
   epochs, once as the stock model and once with ``--xnnpack``: what remains after fine-tuning. The
   ``--xnnpack`` job's export is checked to take XNNPACK's sparse path.

Prints the table and writes ``results.json``.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from demo_jobs import demo_data, run
from training import evaluate

LIGHT = ("--augment", "light")


def top1_as_xnnpack_ready(dense_model: Path, data: Path, out: Path) -> float:
    """The dense model's weights in the XNNPACK-ready variant, evaluated as they are."""
    from onexn_tf import xnnpack_ready
    from onexn_tf._keras import keras

    converted = out / f"{dense_model.parent.name}_as_xnnpack_ready.keras"
    if not converted.exists():
        xnnpack_ready.xnnpack_ready(keras.models.load_model(dense_model, compile=False)).save(converted)
    report = out / f"{converted.stem}.json"
    if not report.exists():
        evaluate.run([str(converted), "--arch", "mobilenet_v2", "--dataset", "folder", "--data-dir", str(data),
                      "--json", str(report)])
    return json.loads(report.read_text())["top1"]


def takes_sparse_path(job: Path, out: Path) -> str:
    from export import exporter

    target = out / f"{job.name}_export"
    sparse = target / "model_sparse.tflite.json"
    if not sparse.exists():
        exporter.export(job, target, options=exporter.Options(formats=("tflite_sparse",)), progress=lambda *_: None)
    return json.loads(sparse.read_text())["verification"]["xnnpack_sparse"]["summary"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("padding_cost_out"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = p.parse_args()
    data = demo_data(args.out)
    rows = {"stock dense (4 epochs)": [], "its weights as XNNPACK-ready, no training": [],
            "stock 1x4 p=0.75 + 2 epochs": [], "--xnnpack 1x4 p=0.75 + 2 epochs": []}
    for seed in args.seeds:
        dense = run(args.out, data, f"dense_s{seed}", *LIGHT, "--criterion", "dense", "--epochs", "4", "--lr",
                    "0.05", "--seed", str(seed))
        dense_model = args.out / f"dense_s{seed}" / "model.keras"
        rows["stock dense (4 epochs)"].append(dense["best"]["top1"])
        rows["its weights as XNNPACK-ready, no training"].append(top1_as_xnnpack_ready(dense_model, data, args.out))
        for name, extra in (("stock", []), ("--xnnpack", ["--xnnpack"])):
            r = run(args.out, data, f"pruned_{name.strip('-')}_s{seed}", *LIGHT, "--pretrained-model", str(dense_model),
                    "--N", "4", "--pr-target", "0.75", "--epochs", "2", "--lr", "0.01", "--seed", str(seed), *extra)
            rows[f"{name} 1x4 p=0.75 + 2 epochs"].append(r["best"]["top1"])
        print(f"seed {seed}: " + ", ".join(f"{k}: {v[-1]:.3f}" for k, v in rows.items()), flush=True)
        print(f"  --xnnpack export: {takes_sparse_path(args.out / f'pruned_xnnpack_s{seed}', args.out)}", flush=True)
    print("\n| MobileNetV2 0.35, 64 px, demo data | val top-1 (seeds " + ", ".join(map(str, args.seeds)) + ") |")
    print("|---|---|")
    for name, values in rows.items():
        print(f"| {name} | " + " / ".join(f"{v:.1%}" for v in values) + f" (mean {statistics.mean(values):.1%}) |")
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

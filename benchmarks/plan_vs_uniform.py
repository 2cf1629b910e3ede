"""Planned per-layer rates against one uniform rate at the same predicted latency, on the demo's data.

    python benchmarks/plan_vs_uniform.py --out plan_vs_uniform_out [--seeds 0 1 2] [--uniform 0.9]

The demo's model (MobileNetV2 0.35, 64 px) and data (4 classes of gratings): per seed, dense
training (4 epochs); the latency table of the dense model on this machine (``onexn-plan measure``);
then one-shot 1×4 pruning from the dense model with 1 fine-tuning epoch at (a) the uniform rate,
(b) the rates ``onexn-plan choose`` picks with the kept-L1 score and (c) with the sensitivity score,
both for a budget equal to the uniform rate's predicted latency. Prints validation top-1 per seed and
the predicted latencies; writes ``results.json``.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from android_bench import planning
from export import onnx_format
from export.tvm import latency_table
from onexn_tf import files, models
from onexn_tf._keras import keras
from demo_jobs import demo_data, run
from training import data, sensitivity

LIGHT = ("--augment", "light")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("plan_vs_uniform_out"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--uniform", type=float, default=0.9)
    args = p.parse_args()
    data_dir = demo_data(args.out)
    rows = {"uniform": [], "planned (l1)": [], "planned (sensitivity)": []}
    predicted = {}
    for seed in args.seeds:
        run(args.out, data_dir, f"dense_s{seed}", *LIGHT, "--criterion", "dense", "--epochs", "4", "--lr", "0.05",
            "--seed", str(seed))
        dense_path = args.out / f"dense_s{seed}" / "model.keras"
        dense = keras.models.load_model(dense_path, compile=False)
        onnx_path = args.out / f"dense_s{seed}.onnx"
        if not onnx_path.exists():
            onnx_format.write(dense, onnx_path, nchw=True)
        table = latency_table.measure(onnx_path, work_dir=args.out / "tvm_tuning", log=lambda *_: None)
        layers = models.prunable_layers(dense)
        budget_ms = latency_table.predict(table, {name: args.uniform for name in layers})
        splits = data.load(dataset="folder", data_dir=data_dir, size=64, batch_size=64,
                           preprocess=models.preprocess_input("mobilenet_v2"), cache="none", need_train=False)
        batches = sensitivity.batches_of(splits.val, 4)
        scores = sensitivity.scores(dense, layers, [float(r) for r in table["rates"]], batches, n=4)
        plans = {"planned (l1)": planning.choose(dense, table, budget_ms=budget_ms),
                 "planned (sensitivity)": planning.choose(dense, table, budget_ms=budget_ms, scores=scores)}
        predicted[seed] = {"uniform": budget_ms, **{k: v["predicted_ms"] for k, v in plans.items()}}
        top1 = {"uniform": run(args.out, data_dir, f"uniform_s{seed}", *LIGHT, "--pretrained-model", str(dense_path),
                               "--N", "4", "--pr-target", str(args.uniform), "--epochs", "1", "--lr", "0.01",
                               "--seed", str(seed))["best"]["top1"]}
        for name, plan in plans.items():
            config = args.out / f"{name.split('(')[1][:-1]}_s{seed}.json"
            files.write_json(config, plan["rates"])
            top1[name] = run(args.out, data_dir, f"{name.split('(')[1][:-1]}_s{seed}", *LIGHT, "--pretrained-model",
                             str(dense_path), "--N", "4", "--pr-config", str(config), "--epochs", "1", "--lr", "0.01",
                             "--seed", str(seed))["best"]["top1"]
        for name, value in top1.items():
            rows[name].append(value)
        print(f"seed {seed}: " + ", ".join(f"{k} top-1 {v:.3f} (predicted {predicted[seed][k]:.3f} ms)"
                                           for k, v in top1.items()), flush=True)
    print(f"\n| 1×4, 1 epoch from dense, budget = uniform p = {args.uniform:g} | val top-1 (seeds "
          + ", ".join(map(str, args.seeds)) + ") | mean |\n|---|---|---|")
    for name, values in rows.items():
        print(f"| {name} | " + " / ".join(f"{v:.1%}" for v in values) + f" | {statistics.mean(values):.1%} |")
    (args.out / "results.json").write_text(json.dumps({"top1": rows, "predicted_ms": predicted}, indent=2) + "\n")


if __name__ == "__main__":
    main()

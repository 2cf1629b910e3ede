"""What the training choices for your own data do, measured on the demo's data.

    python benchmarks/own_data.py --out own_data_out [--seeds 0 1]

The demo's model (MobileNetV2 0.35, 64 px) and data (4 classes of gratings, 768 train / 256 val
images; a horizontal flip turns a 45° grating into a 135° one, i.e. into another class):

1. dense training from scratch, 4 epochs, with each ``--augment`` mode: validation top-1;
2. one-shot 1×4 pruning at p = 0.7 of the ``light`` dense model, one fine-tuning epoch, with the
   default BatchNorm choice (momentum from the run's length + re-estimation), momentum 0.999 without
   re-estimation (the Keras MobileNets' own), and the run-length momentum without re-estimation:
   training vs validation top-1.

Prints a table per part and writes ``results.json``.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from demo_jobs import demo_data, run

BN_CHOICES = {"default (run-length momentum + re-estimation)": [],
              "momentum 0.999, no re-estimation": ["--bn-momentum", "0.999", "--bn-recalibration", "0"],
              "run-length momentum, no re-estimation": ["--bn-recalibration", "0"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("own_data_out"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = p.parse_args()
    data = demo_data(args.out)
    table = {"augment": {}, "batchnorm": {}}
    for seed in args.seeds:
        for mode in ("reference", "light", "none"):
            r = run(args.out, data, f"dense_{mode}_s{seed}", "--criterion", "dense", "--epochs", "4", "--lr", "0.05",
                    "--augment", mode, "--seed", str(seed))
            table["augment"].setdefault(mode, []).append(r["best"]["top1"])
            print(f"seed {seed} dense --augment {mode}: val top-1 {r['best']['top1']:.3f}", flush=True)
        dense = args.out / f"dense_light_s{seed}" / "model.keras"
        for i, (name, extra) in enumerate(BN_CHOICES.items()):
            r = run(args.out, data, f"pruned_bn{i}_s{seed}", "--pretrained-model", str(dense), "--N", "4",
                    "--pr-target", "0.7", "--epochs", "1", "--lr", "0.01", "--augment", "light", "--seed", str(seed),
                    *extra)
            epoch = r["epochs"][0]
            table["batchnorm"].setdefault(name, []).append((epoch["train_top1"], epoch["top1"], r["bn_momentum"]["value"]))
            print(f"seed {seed} pruned p=0.7, {name}: train top-1 {epoch['train_top1']:.3f}, "
                  f"val top-1 {epoch['top1']:.3f}", flush=True)
    print("\n| --augment | dense val top-1 (seeds " + ", ".join(map(str, args.seeds)) + ") |\n|---|---|")
    for mode, values in table["augment"].items():
        print(f"| {mode} | " + " / ".join(f"{v:.1%}" for v in values) + f" (mean {statistics.mean(values):.1%}) |")
    print("\n| BatchNorm after one-shot 1×4 p=0.7, 1 epoch | momentum | train top-1 | val top-1 |\n|---|---|---|---|")
    for name, rows in table["batchnorm"].items():
        print(f"| {name} | {rows[0][2]:g} | " + " / ".join(f"{t:.1%}" for t, _, _ in rows) + " | "
              + " / ".join(f"{v:.1%}" for _, v, _ in rows) + " |")
    (args.out / "results.json").write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()

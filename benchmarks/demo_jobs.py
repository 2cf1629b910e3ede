"""The demo's data and its training jobs, for the benchmarks that train on them (each job is a real
``onexn-train`` job directory; a rerun reuses the finished ones)."""
from __future__ import annotations

import json
from pathlib import Path

from training import train
from training.synthetic import write_dataset

# The demo's model (MobileNetV2 0.35, 64 px) and recipe knobs; each benchmark adds its own options.
COMMON = ["--arch", "mobilenet_v2", "--alpha", "0.35", "--input-size", "64", "--dataset", "folder",
          "--train-batch-size", "32", "--eval-batch-size", "64", "--warmup-epochs", "0", "--lr-policy", "fixed",
          "--verbose", "0"]


def demo_data(out: Path) -> Path:
    """The demo's data (4 classes of gratings, 768 train / 256 val images) in ``out/data``."""
    data = out / "data"
    if not data.exists():
        write_dataset(data, classes=4, size=64, train=768, val=256)
    return data


def run(out: Path, data: Path, job: str, *extra: str) -> dict:
    """``results.json`` of the job ``out/job`` (trained now unless it finished before)."""
    results_file = out / job / "results.json"
    if results_file.exists():
        return json.loads(results_file.read_text())
    return train.run_job(train.build_parser().parse_args([*COMMON, "--data-dir", str(data),
                                                          "--job-dir", str(out / job), *extra]))

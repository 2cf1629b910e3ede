"""TFLite files on the emulated aarch64 device, with the TFLite runtime an Android app ships (LiteRT,
its default XNNPACK delegate on): outputs and interleaved latencies, from the host.

Under qemu only instruction counts show, not a phone's speed: what these timings can show is which
path XNNPACK took — a file on its sparse path runs in a fraction of the dense file's time, one it
refused takes the dense time whatever its zeros. ``export/xnnpack_sparse.py`` predicts that choice
from the file alone; this is the run that checks the prediction.
"""
from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from android_bench import emulated, stats

DELEGATE_LINE = "Created TensorFlow Lite XNNPACK delegate for CPU"


def run(device: emulated.Device, models: dict[str, Path], x: np.ndarray, *, rounds: int = 5, warmup: int = 1,
        threads: int = 1, timeout: float = 3600) -> dict:
    """Each model's outputs on ``x`` (N inputs) and its latency over ``rounds`` interleaved rounds."""
    if not device.has_litert:
        raise emulated.PrepareError("the emulated device has no TFLite runtime: emulated.prepare_litert() first")
    with tempfile.TemporaryDirectory(prefix="onexn-litert-") as tmp:
        tmp = Path(tmp)
        np.save(tmp / "x.npy", np.ascontiguousarray(x, dtype=np.float32))
        spec = {"models": {label: str(Path(path).resolve()) for label, path in models.items()},
                "input": str(tmp / "x.npy"), "rounds": rounds, "warmup": warmup, "threads": threads, "out": str(tmp)}
        (tmp / "spec.json").write_text(json.dumps(spec))
        script = Path(__file__).with_name("litert_device.py")
        proc = subprocess.run([str(device.launcher), str(script), str(tmp / "spec.json")], capture_output=True,
                              text=True, env=device.env(litert=True), timeout=timeout)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            raise RuntimeError(f"the TFLite run on the emulated device failed (exit {proc.returncode}):\n{tail}")
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        for entry in report["models"].values():
            entry["outputs"] = np.load(entry["outputs"])
            entry["stats"] = stats.summarize(entry["samples_ms"])
    report["xnnpack_delegate"] = DELEGATE_LINE in proc.stderr
    report["emulated"] = True
    return report

"""`onexn-demo` (the `make demo` job) end to end at a reduced size, and its handling of bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from onexn_tf._keras import keras
from conftest import assert_exact_1xn

ROOT = Path(__file__).parents[1]


def run_demo(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "training.demo", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_demo_trains_prunes_deploys_and_reports(tmp_path):
    out = tmp_path / "out"
    proc = run_demo("--arch", "mobilenet_v1", "--alpha", "0.25", "--image-size", "32", "--train-samples", "64",
                    "--val-samples", "32", "--dense-epochs", "1", "--prune-epochs", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "conv_pw_13" in proc.stdout and "zero/blocks" in proc.stdout  # the printed table
    report = json.loads((out / "report.json").read_text())
    assert report["all_layers_exact_1xn"] is True
    assert [layer["layer"] for layer in report["layers"]] == [f"conv_pw_{i}" for i in range(1, 14)]
    for key in ("dense", "pruned", "deployed"):
        assert 0.0 <= report["accuracy"][key]["top1"] <= 1.0 and report["accuracy"][key]["examples"] == 32
    assert report["accuracy"]["deployed"] == report["accuracy"]["pruned"]  # the permutation keeps predictions
    for job in ("dense", "pruned"):  # each stage is a finished onexn-train job
        assert json.loads((out / job / "results.json").read_text())["arch"] == "mobilenet_v1"
    record = json.loads((out / "permutation.json").read_text())
    assert report["permuted_channel_groups"] == 13  # groups policy: every conv_pw_k's own channels
    assert sum(g["permuted"] for g in record["groups"]) == 13
    model = keras.models.load_model(out / "deployed_model.keras")
    for i in range(1, 14):  # kept blocks contiguous in natural channel order after the permutation
        assert_exact_1xn(model.get_layer(f"conv_pw_{i}").kernel.numpy(), 4, 0.5)
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"


@pytest.mark.parametrize("args, message", [
    (["--sparsity", "1.5"], "--sparsity=1.5 is not allowed: it must be a number in [0, 1)"),
    (["--n", "0"], "n=0 is not allowed: N must be a positive integer"),
    (["--image-size", "16"], "--image-size=16 is not allowed"),
    (["--arch", "resnet50"], "invalid choice: 'resnet50'"),
])
def test_demo_bad_input_is_one_clear_line(tmp_path, args, message):
    out = tmp_path / "out"
    proc = run_demo(*args, "--out", str(out), timeout=120)
    assert proc.returncode == 2
    error_lines = [l for l in proc.stderr.splitlines() if "error" in l]
    assert len(error_lines) == 1 and message in error_lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_demo_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = run_demo("--out", str(blocker), timeout=120)
    assert proc.returncode == 2 and "is not a directory" in proc.stderr and "Traceback" not in proc.stderr

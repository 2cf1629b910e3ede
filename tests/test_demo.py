"""`onexn-demo` (the `make demo` job) end to end at a reduced size, and its handling of bad input."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from onexn_tf._keras import keras
from conftest import assert_exact_1xn

onnx = pytest.importorskip("onnx")
pytest.importorskip("tvm", reason="the tvm extra is not installed (pip install -e .[tvm])")
from onnx import numpy_helper  # noqa: E402

ROOT = Path(__file__).parents[1]


def run_demo(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "android_bench.demo", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_demo_pipeline_end_to_end(tmp_path):
    """Train, prune, deploy, export, compile (host + aarch64), benchmark over local RPC, report."""
    out = tmp_path / "out"
    proc = run_demo("--arch", "mobilenet_v1", "--alpha", "0.25", "--image-size", "32", "--train-samples", "64",
                    "--val-samples", "32", "--dense-epochs", "1", "--prune-epochs", "1", "--probes", "0.9",
                    "--repeat", "5", "--emulated", "no", "--out", str(out), timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "conv_pw_13" in proc.stdout and "zero/blocks" in proc.stdout  # the printed tables
    report = json.loads((out / "report.json").read_text())

    # training and deployment
    assert report["all_layers_exact_1xn"] is True
    assert [layer["layer"] for layer in report["layers"]] == [f"conv_pw_{i}" for i in range(1, 14)]
    for key in ("dense", "pruned", "deployed"):
        assert 0.0 <= report["accuracy"][key]["top1"] <= 1.0 and report["accuracy"][key]["examples"] == 32
    assert report["accuracy"]["deployed"] == report["accuracy"]["pruned"]  # the permutation keeps predictions
    for job in ("dense", "pruned"):  # each stage is a finished onexn-train job
        assert json.loads((out / job / "results.json").read_text())["arch"] == "mobilenet_v1"
    assert report["permuted_channel_groups"] == 13  # groups policy: every conv_pw_k's own channels
    model = keras.models.load_model(out / "deployed_model.keras")
    for i in range(1, 14):  # kept blocks contiguous in natural channel order after the permutation
        assert_exact_1xn(model.get_layer(f"conv_pw_{i}").kernel.numpy(), 4, 0.5)

    # export: every artifact verified; the ONNX pointwise weights exactly 1×4 at p = 0.5
    for name in ("saved_model", "model.onnx", "model.tflite"):
        assert (out / "exported" / name).exists()
    assert all(a["outputs"]["passed"] for a in report["export"]["artifacts"].values())
    proto = onnx.load(str(out / "exported" / "model.onnx"))
    weights = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    pointwise = [weights[n.input[1]] for n in proto.graph.node if n.op_type == "Conv" and n.input[1] in weights
                 and weights[n.input[1]].shape[2:] == (1, 1) and weights[n.input[1]].shape[0] != 4]
    assert len(pointwise) == 13
    for w in pointwise:  # OIHW -> HWIO, as the Keras kernel
        assert_exact_1xn(w.transpose(2, 3, 1, 0), 4, 0.5)

    # TVM builds: host dense / 1×4 / a probe, aarch64 ELF objects, each verified
    builds = {b["label"]: b for b in report["builds"]}
    assert set(builds) == {"tvm_dense", "tvm_1x4", "tvm_1x4_p0.9_probe", "arm_1x4", "arm_dense"}
    assert builds["tvm_1x4"]["bsr_layers"] == 13 and builds["tvm_1x4"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert builds["tvm_1x4_p0.9_probe"]["sparsity"] == pytest.approx(0.9, abs=0.02)
    assert builds["tvm_dense"]["bsr_layers"] == 0 and all(b["max_rel_error"] < 1e-4 for b in builds.values())
    arm = Path(builds["arm_1x4"]["path"]).read_bytes()
    if shutil.which("aarch64-linux-gnu-g++"):
        assert arm[:4] == b"\x7fELF" and int.from_bytes(arm[18:20], "little") == 183  # EM_AARCH64

    # latency: the report's numbers are the measured samples' statistics
    host = json.loads((out / "bench" / "host" / "results.json").read_text())
    assert host["status"] == "complete" and not host["emulated"]
    rows = {r["label"]: r for r in report["latency"]["rows"]}
    assert set(rows) == {"onnxruntime", "tflite_xnnpack", "tvm_dense", "tvm_1x4", "tvm_1x4_p0.9_probe"}
    for m in host["modules"]:
        assert m["status"] == "ok" and m["verification"]["passed"] and len(m["samples_ms"]) == 5
        assert rows[m["label"]]["median"] == pytest.approx(float(np.median(m["samples_ms"])))
    best = min(rows[k]["median"] for k in ("onnxruntime", "tflite_xnnpack", "tvm_dense"))
    for r in rows.values():
        assert r["min"] <= r["p5"] <= r["median"] <= r["p95"] <= r["max"]
        assert r["speedup_vs_best_dense"] == pytest.approx(best / r["median"])
        assert r["speedup_vs_tvm_dense"] == pytest.approx(rows["tvm_dense"]["median"] / r["median"])
    assert report["latency"]["arm"] is None and report["latency"]["arm_skipped"] == "--emulated no"

    # the markdown report and the plots
    text = (out / "report.md").read_text()
    for r in rows.values():
        assert f"| {r['label']} |" in text and f"{r['median']:.3f}" in text
    assert f"{report['accuracy']['pruned']['top1'] * 100:.1f} %" in text
    for plot in ("latency_vs_sparsity.png", "layer_sparsity.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot in text
    assert not [p for p in out.rglob(".*") if p.name.startswith(".")], "temporary files left behind"


def test_demo_stops_after_training(tmp_path):
    out = tmp_path / "out"
    proc = run_demo("--arch", "mobilenet_v1", "--alpha", "0.25", "--image-size", "32", "--train-samples", "32",
                    "--val-samples", "16", "--dense-epochs", "1", "--prune-epochs", "1", "--stop-after", "train",
                    "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert "export" not in report and "latency" not in report and not (out / "exported").exists()
    assert "## Latency" not in (out / "report.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--sparsity", "1.5"], "--sparsity=1.5 is not allowed: it must be a number in [0, 1)"),
    (["--n", "0"], "--n=0 is not allowed: N must be a positive integer"),
    (["--image-size", "16"], "--image-size=16 is not allowed"),
    (["--arch", "resnet50"], "invalid choice: 'resnet50'"),
    (["--probes", "1.0"], "--probes=1.0 is not allowed"),
    (["--trials", "-1"], "--trials=-1 is not allowed"),
])
def test_demo_bad_input_is_one_clear_line(tmp_path, args, message):
    out = tmp_path / "out"
    proc = run_demo(*args, "--out", str(out), timeout=120)
    assert proc.returncode == 2
    ours = [line for line in proc.stderr.splitlines() if line.startswith("onexn-demo: ")]
    assert len(ours) == 1 and ours[0].startswith("onexn-demo: error: ") and message in ours[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_demo_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = run_demo("--out", str(blocker), timeout=120)
    assert proc.returncode == 2 and "is not a directory" in proc.stderr and "Traceback" not in proc.stderr


def test_demo_refuses_a_directory_that_holds_something_else(tmp_path):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("unrelated work")
    proc = run_demo("--out", str(out), timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    ours = [line for line in proc.stderr.splitlines() if line.startswith("onexn-demo: ")]
    assert ours == [f"onexn-demo: error: --out {out} holds files the demo does not write (chapter1.tex): "
                    "choose a new or empty --out"], proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["chapter1.tex"]


def test_demo_with_a_latency_budget_trains_the_planned_rates(tmp_path):
    """``--budget-speedup``: the dense model's latency table measured here, per-layer rates chosen for
    the budget, and the pruned job trained at exactly those rates (each layer exactly 1×4 at its own).
    The budget leaves room on any machine: this model's layers take 1–3 µs each on a Zen 5, where its
    table's dense prediction varied 0.029–0.049 ms between runs and 1.3× once did not fit at all."""
    out = tmp_path / "out"
    proc = run_demo("--arch", "mobilenet_v1", "--alpha", "0.25", "--image-size", "32", "--train-samples", "64",
                    "--val-samples", "32", "--dense-epochs", "1", "--prune-epochs", "1", "--budget-speedup", "1.1",
                    "--stop-after", "train", "--out", str(out), timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[2b/8] onexn-plan" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    plan = report["plan"]
    assert plan["speedup"] == 1.1 and plan["predicted_ms"] <= plan["budget_ms"] * (1 + 1e-9)
    assert plan["budget_ms"] == pytest.approx(plan["dense_predicted_ms"] / 1.1)
    assert set(plan["rates"]) == {f"conv_pw_{i}" for i in range(1, 14)} and any(plan["rates"].values())
    results = json.loads((out / "pruned" / "results.json").read_text())
    assert results["layer_rates"] == plan["rates"]
    targets = {layer["layer"]: layer["target_sparsity"] for layer in report["layers"]}
    assert targets == {name: rate for name, rate in plan["rates"].items() if rate > 0}
    assert report["all_layers_exact_1xn"] is True
    assert (out / "plan" / "table.json").exists() and "Planned rates" in (out / "report.md").read_text()

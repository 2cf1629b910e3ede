"""onexn-export: SavedModel / ONNX / TFLite from pruned MobileNets, verified, sparsity preserved."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import onexn_tf
from export import exporter, onnx_format, tflite_format
from export.verify import VerificationError
from conftest import (assert_exact_1xn, calibrate_pruned, expected_pruned_blocks, small_model, synthetic_batch)

ROOT = Path(__file__).parents[1]


def pruned_model(arch, p=0.5, rearrange="groups"):
    """A rearranged 1×4-pruned model with calibrated BN (its logits vary across inputs)."""
    model = onexn_tf.prune_1xn(small_model(arch), n=4, sparsity=p, rearrange=rearrange)
    onexn_tf.update_masks(model)
    return calibrate_pruned(model, synthetic_batch(model, 16, seed=7, arch=arch)[0])


def pruned_model_file(tmp_path, arch, p=0.5, rearrange="groups"):
    """``pruned_model`` saved as .keras (the CLI and file paths take files)."""
    model = pruned_model(arch, p, rearrange)
    path = tmp_path / f"{arch}_pruned.keras"
    model.save(path)
    return path, model


def count_exact_1xn(kernels, n, p):
    """How many of the given Keras-layout kernels are exactly 1×N in natural order at rate p."""
    count = 0
    for kernel in kernels:
        try:
            assert_exact_1xn(kernel, n, p)
            count += 1
        except AssertionError:
            pass
    return count


# MobileNetV2 also at p = 0.7 with the sparse TFLite encoding, to compare file sizes.
CASES = [("mobilenet_v1", 0.5), ("mobilenet_v2", 0.7), ("mobilenet_v3_small", 0.5), ("mobilenet_v3_large", 0.5)]


@pytest.mark.parametrize("arch, p", CASES)
def test_export_all_formats_verified_and_exactly_1xn(tmp_path, arch, p):
    model = pruned_model(arch, p)
    out = tmp_path / "out"
    formats = exporter.DEFAULT_FORMATS + (("tflite_sparse",) if p == 0.7 else ())
    report = exporter.export(model, out, options=exporter.Options(formats=formats), progress=lambda *_: None)
    pruned = len(onexn_tf.pruning_wrappers(model))
    for fmt in ("savedmodel", "onnx", "tflite"):
        result = report["artifacts"][fmt]
        assert result["passed"] and result["outputs"]["outputs_vary"], fmt
        assert result["outputs"]["max_rel_error"] <= 1e-4, fmt
        assert result["layers_checked"] == pruned and all(layer["passed"] for layer in result["layers"]), fmt
        sidecar = json.loads((out / (exporter.artifact_name(fmt) + ".json")).read_text())
        assert sidecar["arch"] == arch and sidecar["n"] == 4 and sidecar["criterion"] == "block_l1"
        assert sidecar["permutation"]["groups"] and sidecar["versions"]["tensorflow"]
        assert len(sidecar["layers"]) == pruned and all(layer["exact"] for layer in sidecar["layers"])

    # Independently of the exporter's matching: count the artifact weights that are exactly 1×4 at p=0.5
    # with contiguous blocks in natural channel order; every pruned layer must be among them.
    x = synthetic_batch(model, 1, arch=arch)[0]
    onnx_weights = onnx_format.check(out / "model.onnx", x)[1]
    as_keras = [w.transpose(2, 3, 1, 0) if w.ndim == 4 else w for w in onnx_weights.values()]  # OIHW -> HWIO
    assert count_exact_1xn(as_keras, 4, p) >= pruned
    tfl_weights = tflite_format.check(out / "model.tflite", x)[1]
    as_keras = [w.transpose(1, 2, 3, 0) if w.ndim == 4 else w.T for w in tfl_weights.values()]  # OHWI -> HWIO
    assert count_exact_1xn(as_keras, 4, p) >= pruned
    assert (out / "permutation.json").exists() and (out / "verification.json").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"


    if "tflite_sparse" in formats:
        dense, sparse = (report["artifacts"][f]["size_bytes"] for f in ("tflite", "tflite_sparse"))
        print(f"TFLite {arch} 0.35 32px, 1x4 at p={p}: dense {dense} bytes, sparse {sparse} bytes")
        assert sparse < 0.75 * dense


def test_existing_outputs_need_force_and_verify_rechecks(tmp_path):
    path, _ = pruned_model_file(tmp_path, "mobilenet_v1")
    out = tmp_path / "out"
    options = exporter.Options(formats=("onnx",))
    exporter.export(path, out, options=options, progress=lambda *_: None)
    with pytest.raises(FileExistsError, match="model.onnx already exists \\(use --force to overwrite\\)"):
        exporter.export(path, out, options=options, progress=lambda *_: None)
    report = exporter.export(path, out, options=options, verify_only=True, progress=lambda *_: None)
    assert report["artifacts"]["onnx"]["passed"]
    exporter.export(path, out, options=exporter.Options(formats=("onnx",), force=True), progress=lambda *_: None)


def test_a_verification_failure_leaves_no_artifact(tmp_path, monkeypatch):
    path, _ = pruned_model_file(tmp_path, "mobilenet_v1")
    out = tmp_path / "out"
    real = onnx_format.check

    def off_by_one_percent(path, x, nchw=False):
        outputs, weights = real(path, x, nchw=nchw)
        return outputs * 1.01, weights

    monkeypatch.setattr(onnx_format, "check", off_by_one_percent)
    with pytest.raises(VerificationError, match="onnx: outputs differ from Keras by"):
        exporter.export(path, out, options=exporter.Options(formats=("onnx",)), progress=lambda *_: None)
    assert not (out / "model.onnx").exists() and not (out / "model.onnx.json").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_stripped_model_with_block_orders_and_nchw_onnx(tmp_path):
    _, model = pruned_model_file(tmp_path, "mobilenet_v2")
    stripped = tmp_path / "stripped.keras"
    onexn_tf.strip(model).save(stripped)
    orders = tmp_path / "orders.json"
    orders.write_text(json.dumps({k: v.tolist() for k, v in onexn_tf.permutations(model).items()}))
    report = exporter.export(stripped, tmp_path / "out", options=exporter.Options(formats=("onnx",), nchw=True),
                             n=4, permutations=orders, progress=lambda *_: None)
    assert report["artifacts"]["onnx"]["passed"] and report["permuted_groups"] > 0
    sidecar = json.loads((tmp_path / "out" / "model.onnx.json").read_text())
    assert sidecar["input"]["layout"] == "NCHW" and sidecar["input"]["shape"] == [None, 3, 32, 32]


def run_cli(*args, user=None):
    command = [sys.executable, "-m", "export", *map(str, args)]
    if user:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def assert_usage_error(proc, message):
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("onexn-export: error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_cli_bad_input(tmp_path):
    not_a_model = tmp_path / "notes.keras"
    not_a_model.write_text("hello")
    proc = run_cli(not_a_model, "--out", tmp_path / "o1")
    assert_usage_error(proc, "is not a Keras model")
    assert not (tmp_path / "o1").exists()
    path, _ = pruned_model_file(tmp_path, "mobilenet_v1")
    proc = run_cli(path, "--out", tmp_path / "o2", "--opset", "9")
    assert_usage_error(proc, "--opset 9 is not supported: choose 13..18")
    assert not (tmp_path / "o2").exists()


def test_cli_unwritable_output_dir(tmp_path_factory):
    shared = Path(tmp_path_factory.mktemp("shared", numbered=True))
    shared.chmod(0o755)
    for parent in list(shared.parents)[:-1]:  # the pytest temp root is private to its owner
        if not os.access(parent, os.X_OK | os.R_OK) or parent.stat().st_mode & 0o005 != 0o005:
            parent.chmod(parent.stat().st_mode | 0o005)
    path, _ = pruned_model_file(shared, "mobilenet_v1")
    path.chmod(0o644)
    locked = shared / "locked"
    locked.mkdir(mode=0o555)
    user = None
    if os.geteuid() == 0:  # root writes anywhere: run the export as an unprivileged user instead
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot drop privileges to test an unwritable directory")
        user = 65534
    proc = run_cli(path, "--out", locked / "out", "--formats", "onnx", user=user)
    assert_usage_error(proc, "is not writable")
    assert not (locked / "out").exists()


def test_job_dir_sources_finished_and_checkpoint(tmp_path):
    from training import train
    from training.synthetic import write_dataset

    write_dataset(tmp_path / "data", classes=4, size=40, train=32, val=16)
    job = tmp_path / "job"
    args = train.build_parser().parse_args([
        "--arch", "mobilenet_v1", "--alpha", "0.25", "--input-size", "32", "--dataset", "folder", "--data-dir",
        str(tmp_path / "data"), "--epochs", "1", "--train-batch-size", "16", "--warmup-epochs", "0",
        "--rearrange", "groups", "--verbose", "0", "--job-dir", str(job)])
    train.run_job(args)
    finished = exporter.export(job, tmp_path / "a", options=exporter.Options(formats=("onnx",)),
                               progress=lambda *_: None)
    rebuilt = exporter.export(job, tmp_path / "b", options=exporter.Options(formats=("onnx",)), checkpoint="best",
                              progress=lambda *_: None)
    for report in (finished, rebuilt):
        assert report["artifacts"]["onnx"]["passed"] and report["pruned_layers"] == 13
        assert report["permuted_groups"] == 13 and report["arch"] == "mobilenet_v1"
    sidecars = [json.loads((tmp_path / d / "model.onnx.json").read_text()) for d in ("a", "b")]
    assert sidecars[0]["layers"] == sidecars[1]["layers"]  # same masks through both routes
    assert all(layer["exact"] and layer["target_sparsity"] == 0.5 for layer in sidecars[0]["layers"])

"""Damaged files and mismatched options: one clear line naming the file or flag, no traceback.

Each case runs the installed command's module in a subprocess, as a user would, and asserts on our
own error line only (TensorFlow may print its own lines on some hosts)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from onexn_tf._keras import keras
from conftest import gratings_folder

ROOT = Path(__file__).parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
SMALL = ["--arch", "mobilenet_v1", "--alpha", "0.25", "--input-size", "32", "--dataset", "folder",
         "--warmup-epochs", "0", "--verbose", "0", "--train-batch-size", "16", "--epochs", "1"]


def run(module, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=ENV)


def one_error_line(proc, prog, code=2):
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith(f"{prog}: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    keras.utils.set_random_seed(0)
    from onexn_tf import models

    path = tmp_path_factory.mktemp("model") / "dense.keras"
    models.build("mobilenet_v1", alpha=0.25, input_shape=(32, 32, 3), classes=4).save(path)
    return path


@pytest.mark.parametrize("damage, message", [
    ("text", "is not a PNG, JPEG, BMP or GIF image (by its first bytes)"),
    ("truncated", "cannot be decoded as an image"),
])
def test_a_damaged_image_in_the_folder_is_named(damage, message, tmp_path_factory, tmp_path):
    root = gratings_folder(tmp_path_factory, train=32, val=16, name=f"damaged_{damage}")
    bad = sorted((root / "val" / "grating_1").iterdir())[0]
    bad.write_bytes(b"not an image\n" if damage == "text" else bad.read_bytes()[:60])
    line = one_error_line(run("training", *SMALL, "--data-dir", str(root), "--job-dir", str(tmp_path / "job")),
                          "onexn-train")
    assert message in line and str(bad) in line, line


def test_eval_names_a_damaged_image_and_a_wrong_input_size(small_model, tmp_path_factory):
    root = gratings_folder(tmp_path_factory, train=8, val=16, name="eval_damaged")
    bad = sorted((root / "val" / "grating_2").iterdir())[0]
    bad.write_bytes(bad.read_bytes()[:60])
    base = [str(small_model), "--arch", "mobilenet_v1", "--dataset", "folder", "--data-dir", str(root)]
    line = one_error_line(run("training.evaluate", *base), "onexn-eval")
    assert "cannot be decoded as an image" in line and str(bad) in line, line
    line = one_error_line(run("training.evaluate", *base, "--input-size", "64"), "onexn-eval")
    assert "--input-size 64 does not match the model, which takes 32x32 images" in line, line
    line = one_error_line(run("training.evaluate", str(small_model.parent / "missing.keras"), "--dataset", "folder"),
                          "onexn-eval")
    assert "missing.keras: no such model file, SavedModel or onexn-train job directory" in line, line


@pytest.mark.parametrize("name, content, message", [
    ("weights.h5", b"plain text\n", "is not an HDF5 file"),
    ("model.keras", b"plain text\n", "is not a Keras model"),
    ("notes.txt", b"plain text\n", "is not a Keras model or weights file"),
])
def test_a_file_that_is_not_a_model_as_pretrained_model(name, content, message, tmp_path_factory, tmp_path):
    root = gratings_folder(tmp_path_factory, train=16, val=8, name="pretrained_data")
    path = tmp_path / name
    path.write_bytes(content)
    line = one_error_line(run("training", *SMALL, "--data-dir", str(root), "--pretrained-model", str(path),
                              "--job-dir", str(tmp_path / "job")), "onexn-train")
    assert f"--pretrained-model {path} {message}" in line, line


def test_verify_on_a_truncated_onnx_file_fails_in_one_line(small_model, tmp_path):
    out = tmp_path / "exported"
    proc = run("export", str(small_model), "--arch", "mobilenet_v1", "--n", "4", "--out", str(out), "--formats", "onnx")
    assert proc.returncode == 0, proc.stderr[-3000:]
    onnx = out / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:1000])
    line = one_error_line(run("export", str(small_model), "--arch", "mobilenet_v1", "--n", "4", "--out", str(out),
                              "--formats", "onnx", "--verify"), "onexn-export", code=1)
    assert "verification failed" in line and f"{onnx} cannot be loaded and run" in line, line

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


# Mistakes every command must reject before importing TensorFlow: (command, module, argv, what the one
# error line says). Placeholders: {tmp} a scratch dir, {file} a regular file, {foreign} a non-empty
# directory of someone else's files, {bench} an earlier onexn-bench run, {json} an earlier result file,
# {unfinished} an onexn-train job without model.keras.
BEFORE_TENSORFLOW = [
    ("onexn-train", "training", ["--job-dir", "{tmp}/j", "--N", "0"], "--N=0 is not allowed: N must be a positive"),
    ("onexn-train", "training", ["--job-dir", "{tmp}/j", "--lr", "-1"], "--lr=-1 is not allowed: it must be positive"),
    ("onexn-train", "training", ["--job-dir", "{tmp}/j", "--alpha", "0"], "--alpha=0 is not allowed"),
    ("onexn-train", "training", ["--job-dir", "{tmp}/j", "--pr-target", "1"], "--pr-target=1.0 is not allowed"),
    ("onexn-train", "training", ["--job-dir", "{tmp}/j", "--arch", "resnet50"], "argument --arch: invalid choice"),
    ("onexn-train", "training", ["--arch", "mobilenet_v1"], "the following arguments are required: --job-dir"),
    ("onexn-train", "training", ["--job-dir", "{file}/job"], "--job-dir {file}/job cannot be created: {file} is a file"),
    ("onexn-train", "training", ["--job-dir", "{foreign}"], "--job-dir {foreign} is not empty and holds no onexn-train"),
    ("onexn-train", "training", ["--job-dir", "{tmp}/none", "--resume"], "--resume: --job-dir {tmp}/none holds no "
                                                                          "onexn-train run (no config.json): nothing"),
    ("onexn-train", "training", ["--job-dir", "{tmp}/j", "--dataset", "imagenet2012", "--val-fraction", "0.2"],
     "--val-fraction needs --dataset folder"),
    ("onexn-train", "training", ["--job-dir", "{tmp}/j", "--strategy", "multiworker"],
     "--strategy multiworker needs the cluster in the TF_CONFIG environment variable"),
    ("onexn-train", "training", ["--job-dir", "{tmp}/j", "--augment", "none", "--crop-scale", "0.5", "1"],
     "--crop-scale needs --augment reference or light"),
    ("onexn-train", "training", ["--job-dir", "{tmp}/j", "--pretrained-model", "{tmp}/missing.h5"],
     "--pretrained-model {tmp}/missing.h5: no such file or directory"),
    ("onexn-train", "training", ["--job-dir", "{tmp}/j", "--pr-config", "{tmp}/none.json"],
     "--pr-config {tmp}/none.json: no such file"),
    ("onexn-train", "training", ["--job-dir", "{tmp}/j", "--pr-config", "{file}"], "--pr-config {file} is not JSON"),
    ("onexn-train", "training", ["--job-dir", "{tmp}/j", "--pr-config", "{json}"],
     "--pr-config {json} must hold a JSON object of layer rates"),
    ("onexn-train", "training", ["--job-dir", "{tmp}/j", "--pr-config", "{rates}"],
     "layer 'conv_pw_1' has rate 1.5: rates must be numbers in [0, 1)"),
    ("onexn-eval", "training.evaluate", ["{tmp}/missing.keras", "--dataset", "folder"],
     "{tmp}/missing.keras: no such model file, SavedModel or onexn-train job directory"),
    ("onexn-eval", "training.evaluate", ["{foreign}", "--dataset", "folder"], "--arch is required"),
    ("onexn-eval", "training.evaluate", ["{foreign}", "--arch", "mobilenet_v1"], "--dataset is required"),
    ("onexn-eval", "training.evaluate", ["{foreign}", "--batch-size", "0"], "--batch-size=0 is not allowed"),
    ("onexn-eval", "training.evaluate", ["{foreign}", "--arch", "mobilenet_v1", "--dataset", "folder",
                                         "--val-fraction", "2"], "--val-fraction=2 is not allowed"),
    ("onexn-eval", "training.evaluate", ["{foreign}", "--arch", "mobilenet_v1", "--dataset", "folder",
                                         "--json", "{file}/r.json"], "--json {file}/r.json cannot be created"),
    ("onexn-eval", "training.evaluate", ["{foreign}", "--arch", "mobilenet_v1", "--dataset", "folder",
                                         "--json", "{json}"], "--json {json} already exists (use --force"),
    ("onexn-eval", "training.evaluate", ["{foreign}", "--arch", "mobilenet_v1", "--dataset", "folder",
                                         "--json", "{foreign}"], "--json {foreign} is a directory"),
    ("onexn-eval", "training.evaluate", ["{unfinished}"], "has no model.keras: the run has not finished"),
    ("onexn-export", "export", ["{tmp}/missing.keras", "--out", "{tmp}/o"], "no such model file or job directory"),
    ("onexn-export", "export", ["{foreign}", "--out", "{file}/o"], "--out {file}/o cannot be created"),
    ("onexn-export", "export", ["{foreign}", "--out", "{tmp}/o", "--n", "0"], "--n=0 is not allowed"),
    ("onexn-export", "export", ["{foreign}", "--out", "{tmp}/o", "--formats", "pt"], "argument --formats: invalid"),
    ("onexn-export", "export", ["{foreign}"], "the following arguments are required: --out"),
    ("onexn-tvm", "export.tvm.cli", ["{tmp}/missing.onnx", "--out", "{tmp}/m.so"], "{tmp}/missing.onnx does not exist"),
    ("onexn-tvm", "export.tvm.cli", ["{file}", "--out", "{file}/m.so"], "--out {file}/m.so cannot be created"),
    ("onexn-tvm", "export.tvm.cli", ["{file}", "--out", "{tmp}/m.so", "--target", "iphone"], "unknown target 'iphone'"),
    ("onexn-tvm", "export.tvm.cli", ["{file}", "--out", "{tmp}/m.so", "--bsr", "3"], "bsr=3"),
    ("onexn-bench", "android_bench.cli", ["{tmp}/missing.so", "--host", "h", "--out", "{tmp}/b"],
     "module {tmp}/missing.so does not exist"),
    ("onexn-bench", "android_bench.cli", ["{file}", "--host", "h", "--out", "{file}/b"], "--out {file}/b cannot be"),
    ("onexn-bench", "android_bench.cli", ["{file}", "--host", "h", "--out", "{bench}"],
     "--out {bench} holds the results of an earlier run"),
    ("onexn-bench", "android_bench.cli", ["{file}", "--host", "h", "--repeat", "0", "--out", "{tmp}/b"],
     "--repeat=0 is not allowed"),
    ("onexn-bench", "android_bench.cli", ["{file}", "--out", "{tmp}/b"], "give either --tracker HOST:PORT"),
    ("onexn-bench", "android_bench.cli", ["{file}", "--tracker", "nohost", "--out", "{tmp}/b"], "is not HOST:PORT"),
    ("onexn-demo", "android_bench.demo", ["--out", "{file}/d"], "--out {file}/d cannot be created"),
    ("onexn-demo", "android_bench.demo", ["--out", "{foreign}"], "--out {foreign} holds files the demo does not write"),
    ("onexn-demo", "android_bench.demo", ["--out", "{tmp}/d", "--n", "0"], "--n=0 is not allowed"),
    ("onexn-demo", "android_bench.demo", ["--out", "{tmp}/d", "--sparsity", "1.5"], "--sparsity=1.5 is not allowed"),
    ("onexn-demo", "android_bench.demo", ["--out", "{tmp}/d", "--image-size", "16"], "need at least 32 pixels"),
    ("onexn-make-data", "training.synthetic", ["{file}/d"], "output directory {file}/d cannot be created"),
    ("onexn-make-data", "training.synthetic", ["{foreign}"], "{foreign} is not empty"),
    ("onexn-make-data", "training.synthetic", ["{tmp}/d", "--train", "0"], "--train=0 is not allowed"),
    ("onexn-arm-device", "android_bench.device_cli", ["boot"], "argument command: invalid choice: 'boot'"),
    ("onexn-plan", "android_bench.plan_cli", ["measure", "{tmp}/none.onnx", "--out", "{tmp}/t.json"],
     "{tmp}/none.onnx: no such ONNX file"),
    ("onexn-plan", "android_bench.plan_cli", ["measure", "{file}", "--out", "{file}/t.json"], "--out {file}/t.json cannot"),
    ("onexn-plan", "android_bench.plan_cli", ["choose", "{file}", "--table", "{tmp}/none.json", "--speedup", "2",
                                              "--out", "{tmp}/r.json"], "--table {tmp}/none.json: no such latency table"),
    ("onexn-plan", "android_bench.plan_cli", ["choose", "{file}", "--table", "{json}", "--speedup", "2", "--out",
                                              "{tmp}/r.json"], "is not a latency table"),
    ("onexn-plan", "android_bench.plan_cli", ["choose", "{file}", "--table", "{json}", "--speedup", "0", "--out",
                                              "{tmp}/r.json"], "--speedup=0 is not allowed: it must be positive"),
    ("onexn-plan", "android_bench.plan_cli", ["choose", "{file}", "--table", "{json}", "--speedup", "2",
                                              "--budget-ms", "3", "--out", "{tmp}/r.json"], "not allowed with argument"),
    ("onexn-plan", "android_bench.plan_cli", ["choose", "{file}", "--table", "{json}", "--speedup", "2", "--out",
                                              "{json}"], "--out {json} already exists"),
    ("onexn-arm-device", "android_bench.device_cli", ["serve", "--threads", "0"], "--threads=0 is not allowed"),
]

# Runs a command's module as ``python -m`` does and reports on stdout whether TensorFlow was imported.
_PROBE = ("import runpy, sys\n"
          "sys.argv = sys.argv[1:]\n"
          "try:\n"
          "    runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
          "finally:\n"
          "    print('tensorflow imported:', 'tensorflow' in sys.modules)\n")


def _tree(root: Path) -> set:
    return {(str(p.relative_to(root)), p.stat().st_size if p.is_file() else None) for p in root.rglob("*")}


@pytest.mark.parametrize("prog, module, argv, message", BEFORE_TENSORFLOW,
                         ids=[f"{case[0]}:{i}" for i, case in enumerate(BEFORE_TENSORFLOW)])
def test_mistakes_are_one_line_before_tensorflow(prog, module, argv, message, tmp_path):
    """Exit 2; stderr is exactly one line, ours, naming the flag or file; no traceback; TensorFlow
    never imported (so the answer is immediate and no foreign log line can appear); nothing written."""
    places = {"tmp": tmp_path, "file": tmp_path / "notes.txt", "foreign": tmp_path / "foreign",
              "bench": tmp_path / "bench", "json": tmp_path / "result.json", "unfinished": tmp_path / "unfinished"}
    places["file"].write_text("a regular file\n")
    (places["foreign"] / "theirs.txt").parent.mkdir()
    (places["foreign"] / "theirs.txt").write_text("someone else's file\n")
    places["bench"].mkdir()
    (places["bench"] / "results.json").write_text('{"status": "complete"}\n')
    places["json"].write_text("{}\n")
    places["rates"] = tmp_path / "rates.json"
    places["rates"].write_text('{"conv_pw_1": 1.5}\n')
    places["unfinished"].mkdir()
    (places["unfinished"] / "config.json").write_text('{"arch": "mobilenet_v1", "dataset": "folder"}\n')
    before = _tree(tmp_path)
    fill = {k: str(v) for k, v in places.items()}
    env = {k: v for k, v in ENV.items() if k != "TF_CONFIG"}
    proc = subprocess.run([sys.executable, "-c", _PROBE, module, *(a.format(**fill) for a in argv)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].split(": error: ")[0].split(" ")[0] == prog, lines[0]  # PROG or PROG SUBCOMMAND
    assert message.format(**fill) in lines[0], lines[0]
    assert "tensorflow imported: False" in proc.stdout, proc.stdout[-500:]
    assert _tree(tmp_path) == before  # no directory, temp file or half-written artifact left behind

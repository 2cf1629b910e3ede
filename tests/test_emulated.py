"""The emulated ARM device: an aarch64 build of a small pruned MobileNet runs on a TVM RPC server under
qemu (registered with a tracker) and reproduces onnxruntime on the host.

The first run prepares the device in the cache (~1 min: Debian arm64 packages, qemu-user-static, the
aarch64 TVM wheels; ~450 MB outside the checkout); later runs reuse it. The server needs ~40 s to start
under emulation.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

tvm = pytest.importorskip("tvm", reason="the tvm extra is not installed (pip install -e .[tvm])")
pytest.importorskip("tornado", reason="TVM's RPC tracker needs tornado (in the tvm extra)")
for tool, package in (("apt-get", "apt"), ("dpkg-deb", "dpkg"), ("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu")):
    if shutil.which(tool) is None:
        pytest.skip(f"the emulated device needs {tool} (Debian package {package})", allow_module_level=True)

from android_bench import cli, emulated, local, results  # noqa: E402
from android_bench.modules import write_reference  # noqa: E402
from export.tvm import compiler, onnx_graph  # noqa: E402
from test_tvm import pruned_mobilenet_onnx  # noqa: E402,F401  (the fixture)

KEY = "qemu-arm64-test"


@pytest.fixture(scope="module")
def emulated_server(tmp_path_factory):
    device = emulated.find() or emulated.prepare(log=print)  # prepared once, then cached
    log_path = tmp_path_factory.mktemp("emulated") / "server.log"
    with local.tracker(port=9900) as tracker, local.emulated_server(device, tracker, KEY, log_path, port=9960):
        yield tracker[1]


def test_prepared_device_is_aarch64_python_with_the_hosts_tvm():
    device = emulated.find()
    if device is None:
        device = emulated.prepare(log=print)
    info = device.info
    assert info["machine"] == "aarch64" and info["tvm"] == tvm.__version__
    assert device.launcher.exists() and not str(device.cache).startswith(str(emulated.Path(__file__).parents[1]))


def test_aarch64_build_runs_on_the_emulated_device_and_matches(pruned_mobilenet_onnx, emulated_server,  # noqa: F811
                                                                 tmp_path, capsys):
    path, _ = pruned_mobilenet_onnx
    arm = tmp_path / "arm.so"
    sidecar = compiler.compile_onnx(path, arm, options=compiler.Options(target="aarch64-linux", tune_kernels=False,
                                                                        progress=False), log=lambda *_: None)
    assert sidecar["layers"]  # BSR kernels in the build
    name, shape = onnx_graph.input_shape(__import__("onnx").load(str(path)))
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    y = compiler.reference_outputs(path, name, [x])[0]
    assert y.std() > 1e-2  # logits that vary
    write_reference(tmp_path / "reference.npz", x, y)
    out = tmp_path / "bench"
    code = cli.run([str(arm), "--tracker", f"127.0.0.1:{emulated_server}", "--key", KEY, "--emulated",
                    "--reference", str(tmp_path / "reference.npz"), "--repeat", "3", "--warmup", "1",
                    "--queue-timeout", "60", "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    printed = captured.out
    assert code == 0, captured.out + captured.err
    report = json.loads((out / results.JSON_NAME).read_text())
    (module,) = report["modules"]
    assert module["status"] == "ok" and module["verification"]["passed"]
    assert module["verification"]["max_rel_error"] < 1e-4
    assert module["stats"]["count"] == 3 and module["stats"]["min"] > 0
    assert report["emulated"] and "NOT device timings" in report["note"] and "NOT device timings" in printed


def test_tflite_files_run_on_the_emulated_device_with_xnnpack_and_match_keras(tmp_path):
    """The TFLite route: the aarch64 TFLite runtime (LiteRT, XNNPACK on) runs the dense file, the
    XNNPACK-ready sparse file and a stock-padding sparse file; each equals Keras on varying logits.
    Which of them took XNNPACK's sparse path shows only in their timings (benchmarks/xnnpack_arm.py)."""
    import onexn_tf
    from android_bench import tflite_emulated
    from export import tflite_format, xnnpack_sparse
    from test_xnnpack_sparse import pruned, ready_model, small_model, synthetic_batch

    device = emulated.prepare_litert(log=print)
    ready = onexn_tf.strip(pruned(ready_model("mobilenet_v2"), "mobilenet_v2", 0.75))
    stock = onexn_tf.strip(pruned(small_model("mobilenet_v2"), "mobilenet_v2", 0.75))
    files = {"dense": tmp_path / "ready.tflite", "sparse": tmp_path / "ready_sparse.tflite",
             "stock_sparse": tmp_path / "stock_sparse.tflite"}
    tflite_format.write(ready, files["dense"])
    tflite_format.write(ready, files["sparse"], sparse=True)
    tflite_format.write(stock, files["stock_sparse"], sparse=True)
    assert xnnpack_sparse.check(files["sparse"]).accepted and not xnnpack_sparse.check(files["stock_sparse"]).accepted
    x = synthetic_batch(ready, 3, seed=11, arch="mobilenet_v2")[0]
    report = tflite_emulated.run(device, files, x, rounds=2)
    assert report["xnnpack_delegate"] and report["runtime"].startswith("ai-edge-litert 2.1.2")
    for label, keras_model in (("dense", ready), ("sparse", ready), ("stock_sparse", stock)):
        want = keras_model(x, training=False).numpy()
        got = report["models"][label]["outputs"]
        scale = np.abs(want).max()
        assert want.std(axis=0).mean() > 1e-3 * scale, "logits do not vary across inputs"
        assert np.abs(got - want).max() <= 1e-4 * scale, label
        assert report["models"][label]["stats"]["count"] == 2

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

"""TVM compilation: BSR format, our TIR kernels, the Relax rewrite, tuning caches, targets, the CLI."""
from __future__ import annotations

import json
import shutil
import tarfile

import numpy as np
import pytest

tvm = pytest.importorskip("tvm", reason="the tvm extra is not installed (pip install -e .[tvm])")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import helper, numpy_helper  # noqa: E402

from export.tvm import bsr as bsr_format  # noqa: E402
from export.tvm import cli, compiler, kernels, onnx_graph, targets, tuning  # noqa: E402
from onexn_tf.errors import InvalidArgument  # noqa: E402
from onexn_tf.rpc import Rpc  # noqa: E402


def block_pruned(rng, c_out, c_in, bsr, p):
    """A [c_out, c_in] weight whose (bsr × 1) blocks are zero with probability p (last block partial)."""
    w = rng.standard_normal((c_out, c_in)).astype(np.float32)
    rows = -(-c_out // bsr)
    keep = rng.random((rows, c_in)) >= p
    return w * np.repeat(keep, bsr, axis=0)[:c_out]


# --- BSR format ----------------------------------------------------------------------------------

def test_bsr_round_trip_partial_blocks_and_empty_rows(rng):
    w = block_pruned(rng, 10, 7, 4, 0.5)
    w[4:8] = 0  # an empty block row
    m = bsr_format.to_bsr(w, 4)
    assert m.block_rows == 3 and m.indptr[2] == m.indptr[1]  # row 1 stores nothing
    np.testing.assert_array_equal(bsr_format.to_dense(m), w)
    zero_blocks = sum(not w[r * 4:(r + 1) * 4, c].any() for r in range(3) for c in range(7))
    assert m.block_sparsity == pytest.approx(zero_blocks / 21)
    assert m.nnz == 21 - zero_blocks


def test_bsr_rejects_unsupported_blocks():
    with pytest.raises(InvalidArgument, match="bsc=2"):
        bsr_format.check_block(4, 2)
    with pytest.raises(InvalidArgument, match="bsr=3"):
        bsr_format.check_block(3, 1)


# --- kernels -------------------------------------------------------------------------------------

HOST = targets.resolve("host")

KERNEL_CASES = [  # c_in, c_out, h, w, bsr, p, pixel_tile, parallel, epilogue
    (5, 7, 3, 3, 4, 0.5, 8, "rows", kernels.Epilogue(True, 0.0, 6.0)),  # partial block, tile > pixels
    (16, 30, 5, 7, 8, 0.7, 8, "pixels", kernels.Epilogue(True, 0.0, None)),  # tile does not divide 35
    (12, 33, 4, 5, 32, 0.5, 16, "none", kernels.Epilogue(False, None, None)),  # C_out < 2 blocks of 32
    (8, 9, 2, 2, 1, 0.0, 8, "rows", kernels.Epilogue(True, None, None)),  # p = 0
    (16, 24, 6, 6, 2, 1.0, 16, "pixels", kernels.Epilogue(True, 0.0, 6.0)),  # p = 1: bias only
    (24, 16, 1, 1, 16, 0.9, 8, "rows", kernels.Epilogue(True, None, None)),  # a matmul (1 pixel)
]


@pytest.mark.parametrize("case", KERNEL_CASES, ids=lambda c: f"{c[0]}x{c[1]}x{c[2]}x{c[3]}-bsr{c[4]}-p{c[5]}")
def test_kernel_matches_numpy(case, rng):
    c_in, c_out, h, w, bsr, p, tile, parallel, epilogue = case
    weight = block_pruned(rng, c_out, c_in, bsr, p)
    m = bsr_format.to_bsr(weight, bsr)
    x = rng.standard_normal((1, c_in, h, w)).astype(np.float32)
    bias = rng.standard_normal(m.block_rows * bsr).astype(np.float32)
    func = kernels.bsr_conv1x1(kernels.ConvShape(1, c_in, h, w, c_out, bsr, m.nnz), epilogue,
                               kernels.Knobs(tile, parallel))
    lib = tvm.compile(func, target=HOST.target()).jit()
    data = m.data if m.nnz else np.zeros((1, bsr), np.float32)
    indices = m.indices if m.nnz else np.zeros(1, np.int32)
    out = tvm.runtime.tensor(np.full((1, c_out, h, w), np.nan, np.float32))
    lib["bsr_conv1x1"](*[tvm.runtime.tensor(a) for a in (x, data, indices, m.indptr, bias)], out)
    expected = np.einsum("oi,nihw->nohw", weight, x)
    if epilogue.bias:
        expected += bias[:c_out, None, None]
    if epilogue.lower is not None:
        expected = np.maximum(expected, epilogue.lower)
    if epilogue.upper is not None:
        expected = np.minimum(expected, epilogue.upper)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)  # every element written (no NaN)


def test_candidate_knobs_follow_vector_width_and_cores():
    shape = kernels.ConvShape(1, 64, 14, 14, 64, 4, 100)
    assert {k.pixel_tile for k in kernels.candidate_knobs(shape, 8)} == {8, 16, 32}
    assert {k.parallel for k in kernels.candidate_knobs(shape, 4, num_cores=1)} == {"none"}
    assert {k.pixel_tile for k in kernels.candidate_knobs(kernels.ConvShape(1, 64, 1, 1, 64, 4, 100), 16)} == {16}
    assert targets.resolve("aarch64-linux").vector_lanes() == 4
    assert HOST.vector_lanes() in (4, 8, 16)


# --- ONNX preparation ----------------------------------------------------------------------------

def conv_graph(rng, *, pad=True, p=0.5, bsr=4, c_in=8, c_mid=16, c_out=12, size=9, batch=None):
    """input -> [Pad] -> 3×3 conv (stride 2) -> Relu -> 1×1 conv (1×bsr-pruned at p) + bias -> Clip(0, 6)."""
    w1 = rng.standard_normal((c_mid, c_in, 3, 3)).astype(np.float32) * 0.3
    w2 = block_pruned(rng, c_out, c_mid, bsr, p)[:, :, None, None]
    b2 = rng.standard_normal(c_out).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b2, "b2"),
             numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 0, 1, 1], np.int64), "pads"),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
    nodes = []
    first = "x"
    if pad:
        nodes.append(helper.make_node("Pad", ["x", "pads"], ["padded"], mode="constant"))
        first = "padded"
    nodes += [helper.make_node("Conv", [first, "w1"], ["c1"], strides=[2, 2], pads=[0, 0, 0, 0] if pad else [1, 1, 1, 1]),
              helper.make_node("Relu", ["c1"], ["r1"]),
              helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"]),
              helper.make_node("Clip", ["c2", "lo", "hi"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [batch, c_in, size, size])],
                              [helper.make_tensor_value_info("y", 1, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def run_ort(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_fold_pads_keeps_outputs(rng):
    model = conv_graph(rng)
    folded, count = onnx_graph.fold_pads(model)
    assert count == 1 and not [n for n in folded.graph.node if n.op_type == "Pad"]
    conv = next(n for n in folded.graph.node if n.op_type == "Conv")
    assert list(next(a for a in conv.attribute if a.name == "pads").ints) == [0, 0, 1, 1]
    x = rng.standard_normal((1, 8, 9, 9)).astype(np.float32)
    np.testing.assert_allclose(run_ort(folded, x), run_ort(model, x), rtol=1e-6, atol=1e-6)


def test_non_onnx_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_text("not a protobuf at all")
    with pytest.raises(InvalidArgument, match="not an ONNX model"):
        onnx_graph.load(bad)


# --- compile: small graphs -------------------------------------------------------------------------

def save(model, path):
    onnx.save(model, str(path))
    return path


def load_and_run(library, x):
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(library)), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def test_compile_small_graph_rewrites_and_matches_onnxruntime(tmp_path, rng):
    model_path = save(conv_graph(rng, p=0.6, batch="N"), tmp_path / "g.onnx")  # dynamic batch, a Pad
    out = tmp_path / "build" / "g.so"
    sidecar = compiler.compile_onnx(model_path, out, options=compiler.Options(tune_bsr=False, progress=False),
                                    log=lambda *_: None)
    assert [layer["kind"] for layer in sidecar["layers"]] == ["conv2d"]
    layer = sidecar["layers"][0]
    assert layer["epilogue"] == {"bias": True, "lower": 0.0, "upper": 6.0}  # bias + Clip fused
    assert sidecar["verification"]["passed"] and sidecar["verification"]["max_rel_error"] <= 1e-4
    x = rng.standard_normal((1, 8, 9, 9)).astype(np.float32)
    got, want = load_and_run(out, x), run_ort(onnx.load(str(model_path)), x)
    assert want.std() > 0.1
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert json.loads(compiler.sidecar_path(out).read_text())["layers"] == sidecar["layers"]


def test_bsr_knob_search_and_dense_tuning_reuse_their_records(tmp_path, rng):
    model_path = save(conv_graph(rng, pad=False, size=8), tmp_path / "g.onnx")
    work = tmp_path / "tuning"
    options = compiler.Options(trials=2, progress=False)
    first = compiler.compile_onnx(model_path, tmp_path / "a.so", work_dir=work, options=options, log=lambda *_: None)
    ms_first = first["tuning"]["metaschedule"]
    assert ms_first["tasks"] >= 1 and ms_first["new_trials"] >= 1 and ms_first["reused_trials"] == 0
    assert (work / tuning.MS_DIR / "database_tuning_record.json").stat().st_size > 0
    knobs = json.loads((work / tuning.KNOBS_FILE).read_text())
    assert len(knobs) == 1 and len(next(iter(knobs.values()))["candidates"]) >= 2
    assert first["layers"][0]["kernel_ms"] > 0
    second = compiler.compile_onnx(model_path, tmp_path / "b.so", work_dir=work, options=options, log=lambda *_: None)
    ms_second = second["tuning"]["metaschedule"]
    assert ms_second["new_trials"] == 0 and ms_second["reused_trials"] == ms_first["tasks"] * 2
    assert second["layers"][0]["knobs"] == first["layers"][0]["knobs"]
    assert json.loads((work / tuning.KNOBS_FILE).read_text()) == knobs  # nothing re-measured
    assert second["verification"]["passed"]


def test_dense_tuning_with_an_unnamed_handler_on_metaschedules_logger(tmp_path, rng):
    """TVM's MetaSchedule logging setup fails on a handler without a name; ours detaches it meanwhile."""
    import logging

    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    handler = logging.StreamHandler()  # no name, like pytest's capture handlers or an application's own
    logger.addHandler(handler)
    try:
        model_path = save(conv_graph(rng, pad=False, size=8), tmp_path / "g.onnx")
        sidecar = compiler.compile_onnx(model_path, tmp_path / "a.so", work_dir=tmp_path / "w",
                                        options=compiler.Options(trials=1, tune_bsr=False, progress=False),
                                        log=lambda *_: None)
        assert sidecar["tuning"]["metaschedule"]["new_trials"] >= 1
        assert handler in logger.handlers
    finally:
        logger.removeHandler(handler)


def test_bsr_knob_search_over_rpc(tmp_path, rng):
    """The knob search measures on a TVM RPC server (here a local one on loopback)."""
    from tvm import rpc

    server = rpc.Server(host="127.0.0.1", port=9391, port_end=9491)
    try:
        model_path = save(conv_graph(rng, pad=False, size=8), tmp_path / "g.onnx")
        mod, *_ = compiler.import_onnx(model_path)
        from export.tvm import rewrite

        plan = rewrite.plan_bsr(mod)
        entries = tuning.search_bsr_knobs(plan.layers, plan.matrices, HOST, tmp_path,
                                          rpc=Rpc("127.0.0.1", server.port), progress=False)
        (entry,) = entries.values()
        assert entry["ms"] > 0 and all(ms > 0 for _, ms in entry["candidates"])
    finally:
        server.terminate()


# --- compile: a pruned MobileNet ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def pruned_mobilenet_onnx(tmp_path_factory):
    """A 1×4-pruned MobileNetV2 (alpha 0.35, 32 px; NHWC ONNX) with one pointwise layer made dense
    (p = 0, below the threshold) and one made all zero (p = 1)."""
    import onexn_tf as ox
    from conftest import calibrate_pruned, small_model, synthetic_batch
    from export import onnx_format

    model = small_model("mobilenet_v2")
    pruned = ox.prune_1xn(model, n=4, sparsity=0.5, rearrange="groups")
    ox.update_masks(pruned)
    calibrate_pruned(pruned, synthetic_batch(model, 16, seed=3, arch="mobilenet_v2")[0])
    deployed, _ = ox.deployable(pruned)
    path = tmp_path_factory.mktemp("mobilenet") / "v2.onnx"
    onnx_format.write(deployed, path)
    proto = onnx.load(str(path))
    weights = {t.name: t for t in proto.graph.initializer}
    pointwise = [n for n in proto.graph.node if n.op_type == "Conv" and n.input[1] in weights
                 and tuple(weights[n.input[1]].dims[2:]) == (1, 1)
                 and next((a.i for a in n.attribute if a.name == "group"), 1) == 1]
    dense_w, zero_w = weights[pointwise[2].input[1]], weights[pointwise[5].input[1]]
    dense = numpy_helper.to_array(dense_w)
    dense = np.where(dense == 0, 0.05, dense).astype(np.float32)
    dense_w.CopyFrom(numpy_helper.from_array(dense, dense_w.name))
    zero_w.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(zero_w)), zero_w.name))
    onnx.save(proto, str(path))
    sparsities = [bsr_format.block_sparsity(numpy_helper.to_array(weights[n.input[1]]), 4) for n in pointwise]
    return path, sparsities


def test_pruned_mobilenet_every_eligible_layer_rewritten(pruned_mobilenet_onnx, tmp_path, rng):
    path, sparsities = pruned_mobilenet_onnx
    out = tmp_path / "v2.so"
    sidecar = compiler.compile_onnx(path, out, options=compiler.Options(tune_bsr=False, progress=False),
                                    log=lambda *_: None)
    convs = [layer for layer in sidecar["layers"] if layer["kind"] == "conv2d"]
    assert len(convs) == sum(s >= 0.2 for s in sparsities) == len(sparsities) - 1
    assert sorted(round(layer["block_sparsity"], 4) for layer in convs) == sorted(
        round(s, 4) for s in sparsities if s >= 0.2)
    assert any(layer["block_sparsity"] == 1.0 for layer in convs)  # the all-zero layer: bias only
    below = [s for s in sidecar["dense_pointwise"] if "below" in s["reason"]]
    assert len(below) >= 1 and any(s["weight_shape"][0] == s["weight_shape"][0] for s in below)
    assert sidecar["verification"]["passed"]
    name, shape = onnx_graph.input_shape(onnx.load(str(path)))
    x = rng.standard_normal(shape).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {name: x})[0]
    got = load_and_run(out, x)
    assert want.std() > 1e-2  # logits that vary, not a flat softmax
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_pruned_mobilenet_threshold_zero_rewrites_dense_layers_too(pruned_mobilenet_onnx, tmp_path):
    path, sparsities = pruned_mobilenet_onnx
    sidecar = compiler.compile_onnx(path, tmp_path / "all.so",
                                    options=compiler.Options(min_sparsity=0.0, tune_bsr=False, progress=False),
                                    log=lambda *_: None)
    convs = [layer for layer in sidecar["layers"] if layer["kind"] == "conv2d"]
    assert len(convs) == len(sparsities) and min(layer["block_sparsity"] for layer in convs) == 0.0
    assert [layer["kind"] for layer in sidecar["layers"]].count("matmul") == 1  # the classifier
    assert sidecar["verification"]["passed"]


def _elf_machine(blob: bytes) -> int:
    assert blob[:4] == b"\x7fELF"
    return int.from_bytes(blob[18:20], "little")


AARCH64 = 183  # ELF e_machine


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None,
                    reason="no aarch64-linux-gnu-g++ (apt install g++-aarch64-linux-gnu; .ci/run installs it)")
def test_cross_compile_for_aarch64_gives_an_aarch64_elf(pruned_mobilenet_onnx, tmp_path):
    path, _ = pruned_mobilenet_onnx
    out = tmp_path / "a72.so"
    sidecar = compiler.compile_onnx(path, out, options=compiler.Options(target="aarch64-linux", tune_bsr=False,
                                                                        progress=False), log=lambda *_: None)
    assert _elf_machine(out.read_bytes()) == AARCH64
    assert sidecar["target"]["config"]["mtriple"] == "aarch64-linux-gnu"
    assert sidecar["target"]["linker"] == "aarch64-linux-gnu-g++"
    assert sidecar["verification"]["passed"] and "host build" in sidecar["verification"]["on"]


def test_android_without_ndk_writes_a_tar_of_aarch64_objects(pruned_mobilenet_onnx, tmp_path, monkeypatch):
    monkeypatch.delenv("TVM_NDK_CC", raising=False)
    path, _ = pruned_mobilenet_onnx
    out = tmp_path / "phone.tar"
    compiler.compile_onnx(path, out, options=compiler.Options(target="android-arm64", tune_bsr=False,
                                                              progress=False), log=lambda *_: None)
    with tarfile.open(out) as tar:
        objects = [m for m in tar.getmembers() if m.name.endswith(".o")]
        assert objects
        assert all(_elf_machine(tar.extractfile(m).read()) == AARCH64 for m in objects)


# --- the command line ----------------------------------------------------------------------------

@pytest.fixture
def small_onnx(tmp_path, rng):
    return save(conv_graph(rng, pad=False, size=8), tmp_path / "g.onnx")


@pytest.mark.parametrize("extra, message", [
    (["--target", "iphone"], "unknown target 'iphone'"),
    (["--bsc", "2"], "bsc=2"),
    (["--bsr", "3"], "bsr=3"),
    (["--out-suffix", ".zip"], "must end in .so or .tar"),
    (["--target", "android-arm64"], "TVM_NDK_CC"),
])
def test_cli_usage_errors_exit_2(small_onnx, tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.delenv("TVM_NDK_CC", raising=False)
    out = tmp_path / "out" / "m.so"
    if extra[0] == "--out-suffix":
        out, extra = out.with_suffix(extra[1]), []
    assert cli.run([str(small_onnx), "--out", str(out), "--quiet", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]
    assert not out.exists() and not compiler.sidecar_path(out).exists()


def test_cli_non_onnx_file_exits_2(tmp_path, capsys):
    bad = tmp_path / "weights.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    assert cli.run([str(bad), "--out", str(tmp_path / "m.so")]) == 2
    assert "is not an ONNX model" in capsys.readouterr().err


def test_cli_missing_cross_compiler_exits_2(small_onnx, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no aarch64-linux-gnu-g++ on it
    assert cli.run([str(small_onnx), "--out", str(tmp_path / "m.so"), "--target", "aarch64-linux"]) == 2
    err = capsys.readouterr().err
    assert "cross compiler aarch64-linux-gnu-g++ not found" in err and ".tar" in err


def test_cli_compiles_and_prints_a_summary(small_onnx, tmp_path, capsys):
    out = tmp_path / "m.so"
    assert cli.run([str(small_onnx), "--out", str(out), "--quiet", "--no-tune-bsr"]) == 0
    assert "1 BSR layers" in capsys.readouterr().out
    assert out.exists() and compiler.sidecar_path(out).exists()

"""TVM compilation: BSR format, our TIR kernels, the Relax rewrite, tuning caches, targets, the CLI."""
from __future__ import annotations

import dataclasses
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
from export.tvm import cli, compiler, knob_search, onnx_graph, targets, tuning  # noqa: E402
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


# --- kernels (each against numpy: tests/test_kernels.py) ---------------------------------------------

HOST = targets.resolve("host")


def test_candidate_knobs_follow_vector_width_and_cores():
    from export.tvm.kernels import Kernel, pointwise, spatial

    shape = pointwise.PointwiseShape(1, 64, 14, 14, 64, 4, 100)
    two = Kernel("pointwise", shape).candidates(8, 2)
    assert {k.vectors for k in two} == {1, 2, 3}
    assert {k for k in two if not k.parallel} == {dataclasses.replace(k, parallel=False) for k in two if k.parallel}
    big = Kernel("pointwise", pointwise.PointwiseShape(1, 256, 28, 28, 256, 4, 8192)).candidates(8, 2)
    assert all(k.parallel for k in big)  # a parallel loop pays for a big kernel; only small ones try without
    assert all(k.workers == 2 for k in big if k.outer == "pixels")  # pixel vectors split evenly over the cores
    assert any(k.pack for k in big) and not any(k.pack for k in two)  # a slab copy only where blocks reuse it
    assert not any(k.parallel for k in Kernel("pointwise", shape).candidates(8, 1))
    three = pointwise.PointwiseShape(1, 64, 1, 3, 64, 4, 100)  # fewer pixels than a vector: vectors of 2 lanes
    assert {pointwise.tiling(3, 8, k.vectors).lanes for k in Kernel("pointwise", three).candidates(8, 2)} == {2}
    wide = Kernel("pointwise", shape).candidates(16, 1)  # AVX-512: 32 registers hold 6 vectors × 4 rows
    assert max(k.vectors for k in wide) == 6 and all(k.layout == "pixels" for k in wide)
    dense = Kernel("pointwise", pointwise.PointwiseShape(1, 64, 14, 14, 64, 4, 16 * 64)).candidates(16, 1)
    assert {k.layout for k in dense} == {"pixels", "channels"}  # a dense matrix may vectorise output channels
    dw = Kernel("depthwise", spatial.SpatialShape(1, 8, 14, 14, 8, 3, 1, (1, 1, 1, 1), True)).candidates(8, 2)
    assert {k.out_block for k in dw} == {1} and len(dw) >= 4
    assert targets.resolve("aarch64-linux").vector_lanes() == 4
    assert HOST.vector_lanes() in (4, 8, 16)


# --- ONNX preparation ----------------------------------------------------------------------------

def conv_graph(rng, *, pad=True, p=0.5, bsr=4, c_in=8, c_mid=16, c_out=12, size=9, batch=None, tail=None):
    """input -> [Pad] -> 3×3 conv (stride 2) -> Relu -> 1×1 conv (1×bsr-pruned at p) + bias -> Clip(0, 6)
    [-> ``tail`` op, e.g. Sigmoid: something none of our kernels computes, left to TVM/MetaSchedule]."""
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
              helper.make_node("Clip", ["c2", "lo", "hi"], ["y" if tail is None else "clipped"])]
    if tail is not None:
        nodes.append(helper.make_node(tail, ["clipped"], ["y"]))
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
    with pytest.raises(InvalidArgument, match="cannot be read as an ONNX model|holds no ONNX graph"):
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
    sidecar = compiler.compile_onnx(model_path, out, options=compiler.Options(tune_kernels=False, progress=False),
                                    log=lambda *_: None)
    assert [layer["role"] for layer in sidecar["layers"]] == ["pointwise"]
    assert [k["role"] for k in sidecar["kernels"]] == ["conv", "pointwise"] and sidecar["leftover_ops"] == {}
    assert sidecar["kernels"][0]["epilogue"] == "clip(0.0, None)"  # the 3×3 conv's Relu fused (no bias)
    assert sidecar["layers"][0]["epilogue"] == "bias+clip(0.0, 6.0)"  # bias + Clip fused
    assert sidecar["verification"]["passed"] and sidecar["verification"]["max_rel_error"] <= 1e-4
    x = rng.standard_normal((1, 8, 9, 9)).astype(np.float32)
    got, want = load_and_run(out, x), run_ort(onnx.load(str(model_path)), x)
    assert want.std() > 0.1
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert json.loads(compiler.sidecar_path(out).read_text())["layers"] == sidecar["layers"]


def test_compiled_and_bytecode_vm_builds_agree_and_profile_through_the_bytecode_one(tmp_path, rng):
    """The default build runs the model's main function as machine code; a ``--vm bytecode`` build of
    the same graph gives the same outputs, and only it reaches the profile's VM instrument."""
    from android_bench import profile

    model_path = save(conv_graph(rng, p=0.6, size=8), tmp_path / "g.onnx")
    x = rng.standard_normal((1, 8, 8, 8)).astype(np.float32)
    built = {}
    for vm in compiler.VM_MODES:
        out = tmp_path / vm / "g.so"
        sidecar = compiler.compile_onnx(model_path, out, options=compiler.Options(tune_kernels=False, progress=False,
                                                                                    vm=vm), log=lambda *_: None)
        assert sidecar["vm"] == vm and sidecar["verification"]["passed"]
        built[vm] = (out, sidecar, load_and_run(out, x))
    want = run_ort(onnx.load(str(model_path)), x)
    assert want.std() > 0.1
    for _, _, got in built.values():
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    compiled, sidecar, _ = built["compiled"]
    with pytest.raises(ValueError, match="no call reached the VM instrument"):
        profile.profile(compiled, sidecar, x, rounds=2, warmup=1)
    result = profile.profile(compiled, sidecar, x, rounds=2, warmup=1, traced_library=built["bytecode"][0])
    assert result["kernels_ms"] > 0 and set(result["calls_ms"]) >= {k["name"] for k in sidecar["kernels"]}


POOL_PROBE = """
import ctypes, json, os, sys
import numpy as np, tvm
from tvm import relax
library, x, other = sys.argv[1], np.load(sys.argv[2]), sys.argv[3:]
handle = ctypes.CDLL(library)  # the handle TVM's loader gets too
pool = getattr(handle, "onexn_thread_pool_threads", None)
before = pool() if pool else None
vm = relax.VirtualMachine(tvm.runtime.load_module(library), tvm.cpu())
run = lambda: vm["main"](tvm.runtime.tensor(x)).numpy()
out = run()
result = {"before": before, "threads": pool() if pool else None, "out": out.tolist(),
          "own": handle.onexn_thread_pool_is_own() if pool else None}
if other:  # a second library (another file, so another instance) used in turn in the same process
    tasks = len(os.listdir("/proc/self/task"))
    second = ctypes.CDLL(other[0])
    vm2 = relax.VirtualMachine(tvm.runtime.load_module(other[0]), tvm.cpu())
    for _ in range(3):
        same = np.array_equal(vm2["main"](tvm.runtime.tensor(x)).numpy(), out) and np.array_equal(run(), out)
    result.update(second_same=bool(same), second_own=second.onexn_thread_pool_is_own(),
                  second_threads=second.onexn_thread_pool_threads(),
                  new_threads=len(os.listdir("/proc/self/task")) - tasks)
    resize = tvm.get_global_func("onexn.thread_pool.threads")  # as onexn-bench --threads sizes it
    result["resized"] = [resize(1), bool(np.array_equal(run(), out)), pool(), resize(0), resize(),
                         bool(np.array_equal(run(), out)), pool()]
child = os.fork()  # a forked child inherits no pool threads: its pool must start again
if child == 0:
    os._exit(0 if np.array_equal(run(), out) else 3)
result["child_exit"] = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
print(json.dumps(result))
"""


def run_pool_probe(library, x, tmp_path, threads=None, other=None):
    import os
    import subprocess
    import sys

    np.save(tmp_path / "x.npy", x)
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    if threads:
        env["TVM_NUM_THREADS"] = str(threads)
    done = subprocess.run([sys.executable, "-c", POOL_PROBE, str(library), str(tmp_path / "x.npy")]
                          + ([str(other)] if other else []), env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_multi_core_libraries_run_their_parallel_loops_on_our_thread_pool(tmp_path, rng):
    """A library built for 2 cores carries our thread pool (export/tvm/thread_pool.cc) in place of TVM's:
    its first parallel loop starts it with the build's 2 threads (TVM_NUM_THREADS, when set, wins), a
    forked child starts its own, and the outputs match onnxruntime; a second library used in the same
    process runs on the first one's pool (one pool per process: no second worker); a 1-core build has no
    parallel loop and no pool."""
    import shutil

    model_path = save(conv_graph(rng, p=0.5, c_mid=32, c_out=24, size=64), tmp_path / "g.onnx")
    x = rng.standard_normal((1, 8, 64, 64)).astype(np.float32)
    want = run_ort(onnx.load(str(model_path)), x)
    assert want.std() > 0.1
    libraries = {}
    for cores in (2, 1):
        libraries[cores] = tmp_path / f"cores{cores}" / "g.so"
        sidecar = compiler.compile_onnx(model_path, libraries[cores], log=lambda *_: None,
                                        options=compiler.Options(num_cores=cores, tune_kernels=False, progress=False))
        assert sidecar["verification"]["on"] == "the exported library itself"
    for threads, expected in ((None, 2), (1, 1)):
        probe = run_pool_probe(libraries[2], x, tmp_path, threads)
        assert probe["before"] == 0 and probe["threads"] == expected and probe["child_exit"] == 0
        assert probe["own"] == 1  # the first library in the process publishes its pool
        np.testing.assert_allclose(np.array(probe["out"]), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    copy = shutil.copy(libraries[2], tmp_path / "copy.so")
    shared = run_pool_probe(libraries[2], x, tmp_path, other=copy)
    assert shared["second_same"] and shared["second_own"] == 0 and shared["second_threads"] == 2
    assert shared["new_threads"] == 0 and shared["child_exit"] == 0
    assert shared["resized"] == [1, True, 1, 2, 2, True, 2]
    one_core = run_pool_probe(libraries[1], x, tmp_path)
    assert one_core["threads"] is None and one_core["child_exit"] == 0  # TVM's runtime alone
    np.testing.assert_allclose(np.array(one_core["out"]), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_knob_search_and_dense_tuning_reuse_their_records(tmp_path, rng):
    model_path = save(conv_graph(rng, pad=False, size=8, tail="Sigmoid"), tmp_path / "g.onnx")
    work = tmp_path / "tuning"
    options = compiler.Options(trials=2, progress=False)
    first = compiler.compile_onnx(model_path, tmp_path / "a.so", work_dir=work, options=options, log=lambda *_: None)
    ms_first = first["tuning"]["metaschedule"]
    assert ms_first["tasks"] >= 1 and ms_first["new_trials"] >= 1 and ms_first["reused_trials"] == 0
    assert (work / tuning.MS_DIR / "database_tuning_record.json").stat().st_size > 0
    assert first["leftover_ops"] == {"relax.sigmoid": 1}
    knobs = json.loads((work / knob_search.KNOBS_FILE).read_text())
    assert len(knobs) == 2 and all(len(entry["candidates"]) >= 2 for entry in knobs.values())  # conv + pointwise
    assert first["layers"][0]["kernel_ms"] > 0
    second = compiler.compile_onnx(model_path, tmp_path / "b.so", work_dir=work, options=options, log=lambda *_: None)
    ms_second = second["tuning"]["metaschedule"]
    assert ms_second["new_trials"] == 0 and ms_second["reused_trials"] == ms_first["tasks"] * 2
    assert second["layers"][0]["knobs"] == first["layers"][0]["knobs"]
    assert json.loads((work / knob_search.KNOBS_FILE).read_text()) == knobs  # nothing re-measured
    assert second["verification"]["passed"]


def test_dense_tuning_with_an_unnamed_handler_on_metaschedules_logger(tmp_path, rng):
    """TVM's MetaSchedule logging setup fails on a handler without a name; ours detaches it meanwhile."""
    import logging

    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    handler = logging.StreamHandler()  # no name, like pytest's capture handlers or an application's own
    logger.addHandler(handler)
    try:
        model_path = save(conv_graph(rng, pad=False, size=8, tail="Sigmoid"), tmp_path / "g.onnx")
        sidecar = compiler.compile_onnx(model_path, tmp_path / "a.so", work_dir=tmp_path / "w",
                                        options=compiler.Options(trials=1, tune_kernels=False, progress=False),
                                        log=lambda *_: None)
        assert sidecar["tuning"]["metaschedule"]["new_trials"] >= 1
        assert handler in logger.handlers
    finally:
        logger.removeHandler(handler)


@pytest.mark.parametrize("cores", [1, 2])
def test_knob_search_over_rpc(tmp_path, rng, cores):
    """The knob search measures on a TVM RPC server (here a local one on loopback); with 2 cores its
    candidate libraries carry our thread pool to the device."""
    from tvm import rpc

    server = rpc.Server(host="127.0.0.1", port=9391, port_end=9491)
    try:
        model_path = save(conv_graph(rng, pad=False, size=8), tmp_path / "g.onnx")
        mod, *_ = compiler.import_onnx(model_path)
        from export.tvm import rewrite

        spec = targets.resolve("host", num_cores=cores)
        plan = rewrite.plan(mod, rewrite.Settings(lanes=spec.vector_lanes()))
        entries = knob_search.search(plan.ops, spec, tmp_path, rpc=Rpc("127.0.0.1", server.port), progress=False)
        assert len(entries) == 2
        for entry in entries.values():
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
    sidecar = compiler.compile_onnx(path, out, options=compiler.Options(tune_kernels=False, progress=False),
                                    log=lambda *_: None)
    convs = sidecar["layers"]  # 1×1 convs: pointwise kernels, or matrix-vector ones on the 1×1 maps at 32 px
    assert len(convs) == sum(s >= 0.2 for s in sparsities) == len(sparsities) - 1
    assert sidecar["leftover_ops"] == {}  # every operation on our kernels
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
                                    options=compiler.Options(min_sparsity=0.0, tune_kernels=False, progress=False),
                                    log=lambda *_: None)
    convs = [layer for layer in sidecar["layers"] if layer["shape"].get("spatial", True)]  # all but the MatMul
    assert len(convs) == len(sparsities) and min(layer["block_sparsity"] for layer in convs) == 0.0
    assert len(sidecar["layers"]) == len(convs) + 1  # the classifier too
    assert sidecar["verification"]["passed"]


def pruned_small_onnx(arch: str, tmp_path, nchw: bool, xnnpack: bool = False):
    """(pruned Keras model, its deployable strip, ONNX path) of a small calibrated MobileNet, 1×4 at 0.5
    (``xnnpack``: its XNNPACK-ready variant)."""
    import onexn_tf as ox
    from conftest import calibrate_pruned, small_model, synthetic_batch
    from export import onnx_format

    model = ox.xnnpack_ready.xnnpack_ready(small_model(arch)) if xnnpack else small_model(arch)
    pruned = ox.prune_1xn(model, n=4, sparsity=0.5)
    ox.update_masks(pruned)
    calibrate_pruned(pruned, synthetic_batch(model, 16, seed=3, arch=arch)[0])
    deployed, _ = ox.deployable(pruned)
    path = tmp_path / f"{arch}.onnx"
    onnx_format.write(deployed, path, nchw=nchw)
    return pruned, deployed, path


@pytest.mark.parametrize("arch, nchw, xnnpack", [("mobilenet_v1", True, False), ("mobilenet_v3_small", True, False),
                                                 ("mobilenet_v2", False, False), ("mobilenet_v1", False, True),
                                                 ("mobilenet_v3_small", True, True)])
def test_whole_pruned_mobilenet_runs_on_our_kernels(arch, nchw, xnnpack, tmp_path, rng):
    """Every operation of a pruned MobileNet (stem, depthwise, pointwise, squeeze-excite, hard-swish,
    pooling, classifier) is one of our kernels, and the build reproduces onnxruntime on varying logits;
    the XNNPACK-ready variants (symmetric padding, a reshape after the pooling) too."""
    import collections

    import onexn_tf as ox
    from onexn_tf._keras import keras

    pruned, deployed, path = pruned_small_onnx(arch, tmp_path, nchw, xnnpack)
    out = tmp_path / f"{arch}.so"
    sidecar = compiler.compile_onnx(path, out, options=compiler.Options(tune_kernels=False, progress=False),
                                    log=lambda *_: None)
    assert sidecar["leftover_ops"] == {}
    roles = collections.Counter(part["role"] for k in sidecar["kernels"] for part in k.get("parts", [k]))
    depthwise = sum(isinstance(layer, keras.layers.DepthwiseConv2D) for layer in deployed.layers)
    assert roles["depthwise"] == depthwise and roles["conv"] == 1
    assert roles["pool"] + roles["view"] >= 1  # at 32 px the last map may be 1×1: its mean is a view
    assert len(sidecar["layers"]) == len(ox.pruning_wrappers(pruned))  # every pruned layer block-sparse
    assert all(abs(layer["block_sparsity"] - 0.5) < 0.05 for layer in sidecar["layers"])
    if arch == "mobilenet_v3_small":
        assert roles["scale"] >= 1 and any("hswish" in k["epilogue"] for k in sidecar["kernels"])
    if not nchw:
        assert roles["to_nchw"] == 1
    name, shape = onnx_graph.input_shape(onnx.load(str(path)))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    xs = [rng.uniform(-1, 1, shape).astype(np.float32) * (127.5 if "v3" in arch else 1) + (127.5 if "v3" in arch else 0)
          for _ in range(4)]
    want = np.concatenate([session.run(None, {name: x})[0] for x in xs])
    got = np.concatenate([load_and_run(out, x) for x in xs])
    scale = np.abs(want).max()
    assert want.std(axis=0).mean() > 1e-3 * scale, "logits do not vary across inputs"
    assert np.abs(got - want).max() <= 1e-4 * scale


@pytest.mark.parametrize("arch", ["mobilenet_v2", "mobilenet_v1"])
def test_pointwise_depthwise_pairs_fused_end_to_end(arch, tmp_path, rng):
    """Every pointwise → depthwise pair of a pruned MobileNet planned as a fused op; with the fused
    kernels forced (not what the knob search chose) the build still reproduces onnxruntime."""
    from export.tvm import kernels, rewrite

    _, _, path = pruned_small_onnx(arch, tmp_path, nchw=True)
    mod, name, shape, _, _ = compiler.import_onnx(path)
    plan = rewrite.plan(mod, rewrite.Settings(lanes=HOST.vector_lanes()))
    fused = [op for op in plan.ops if op.parts]
    apart = rewrite.plan(mod, rewrite.Settings(lanes=HOST.vector_lanes(), fuse=False)).ops
    producers = {op.end_var: op.role for op in apart}
    pairs = [op for op in apart if op.role == "depthwise" and producers.get(op.inputs[0], "").startswith("pointwise")]
    assert len(fused) == len(pairs) >= 6  # (on 1×1 maps the producer is a matrix-vector kernel instead)
    assert all([p.role for p in op.parts] == ["pointwise", "depthwise"] for op in fused)
    assert len(plan.all_ops) == len(apart)

    def forced(op):
        if op.parts:
            options = kernels.fused.candidates(op.kernel.shape, HOST.vector_lanes(), 1)
            return options[-1] if options else op.kernel.default_knobs(HOST.vector_lanes(), 1)
        return op.kernel.default_knobs(HOST.vector_lanes(), 1)
    built = compiler.build(tuning.zero_pipeline(rewrite.apply_plan(plan, forced, HOST.vector_lanes())), HOST, tmp_path)
    assert sum(not op.knobs.split for op in fused) >= 1  # some pairs really run fused
    xs = [rng.uniform(-1, 1, shape).astype(np.float32) for _ in range(3)]
    want = np.concatenate(compiler.reference_outputs(path, name, xs))
    got = np.concatenate(compiler.run_vm(built, xs))
    assert want.std(axis=0).mean() > 1e-3 * np.abs(want).max(), "logits do not vary across inputs"
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


@pytest.mark.parametrize("arch", ["mobilenet_v2", "mobilenet_v3_small"])
def test_flattened_plane_depthwise_end_to_end(arch, tmp_path, rng):
    """With every depthwise layer that offers it on the flattened-plane kernel (in blocks of 4 vectors
    where the plane has more), a pruned MobileNet still reproduces onnxruntime on varying logits."""
    from export.tvm import rewrite

    lanes = HOST.vector_lanes()
    _, _, path = pruned_small_onnx(arch, tmp_path, nchw=True)
    mod, name, shape, _, _ = compiler.import_onnx(path)
    plan = rewrite.plan(mod, rewrite.Settings(lanes=lanes, fuse=False))

    def forced(op):
        flat = [k for k in op.kernel.candidates(lanes, 1) if getattr(k, "flat", False)]
        return max(flat, key=lambda k: k.vectors) if flat else op.kernel.default_knobs(lanes, 1)
    built = compiler.build(tuning.zero_pipeline(rewrite.apply_plan(plan, forced, lanes)), HOST, tmp_path)
    assert sum(getattr(op.knobs, "flat", False) for op in plan.ops) >= 3
    xs = [rng.uniform(-1, 1, shape).astype(np.float32) for _ in range(3)]
    want = np.concatenate(compiler.reference_outputs(path, name, xs))
    got = np.concatenate(compiler.run_vm(built, xs))
    assert want.std(axis=0).mean() > 1e-3 * np.abs(want).max(), "logits do not vary across inputs"
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


@pytest.mark.parametrize("parts_ms, fused", [(0.5, False), (5.0, True)])
def test_fusing_is_decided_against_the_parts_timed_in_the_same_rounds(parts_ms, fused, tmp_path):
    """A fused op's candidates and its two parts (with their searched knobs) are timed in one call,
    round by round, and the decision uses those times: the parts' cached times, measured minutes
    before (here 100 ms each, as in a busy spell of a shared host), do not count."""
    from export.tvm import rewrite

    lanes = HOST.vector_lanes()
    _, _, path = pruned_small_onnx("mobilenet_v2", tmp_path, nchw=True)
    mod, *_ = compiler.import_onnx(path)
    plan = rewrite.plan(mod, rewrite.Settings(lanes=lanes))
    op = next(op for op in plan.ops if op.parts and op.kernel.candidates(lanes, 1))
    cache = {knob_search.cache_key(HOST, part): {"knobs": dataclasses.asdict(part.kernel.default_knobs(lanes, 1)),
                                                 "ms": 100.0} for part in op.parts}

    class Timer:
        spec, calls = HOST, []

        def load(self, funcs):
            return sorted(funcs)

        def time(self, lib, names, arguments, rounds, repeat=None):
            assert set(names) <= set(lib) and len(arguments) == len(names)
            self.calls.append(names)
            return [2.0 if name.startswith("onexn_candidate") else parts_ms for name in names]

    key = knob_search.cache_key(HOST, op)
    knob_search._measure({key: op}, Timer(), cache, tmp_path / "knobs.json", lanes, 1, 1, _Bar())
    first, final = Timer.calls  # the finalists are timed again with the parts
    for names in (first, final):
        assert sum(name.startswith("onexn_part_") for name in names) == 2
    entry = cache[key]
    assert entry["knobs"]["split"] is not fused
    assert entry["ms"] == (2.0 if fused else 2 * parts_ms)
    assert json.loads((tmp_path / "knobs.json").read_text())[key] == entry


class _Bar:
    def update(self, n):
        pass


def test_the_finalists_timed_again_decide(tmp_path):
    """The candidates within FINALIST_SPREAD of the fastest (at most FINALISTS) are timed again, one
    run a round, and those times decide: a slow spell during the first timing does not choose."""
    from export.tvm.kernels import Epilogue, Kernel, spatial

    shape = spatial.SpatialShape(1, 3, 16, 16, 8, 3, 2, (0, 0, 1, 1), False)
    kernel = Kernel("conv", shape, Epilogue(True, 0.0, 6.0))
    op = type("Op", (), {"kernel": kernel, "parts": None,
                         "constants": [np.ones(s, np.float32) for s in kernel.constants()]})()
    candidates = op.kernel.candidates(HOST.vector_lanes(), 1)
    assert len(candidates) > knob_search.FINALISTS + 1
    first = [1.0, 1.1, 1.2] + [10.0] * (len(candidates) - 3)  # candidate 2 within the spread, the rest not
    final = {0: 1.3, 1: 0.9, 2: 1.0}

    class Timer:
        spec, calls = HOST, []

        def load(self, funcs):
            return list(funcs)

        def time(self, lib, names, arguments, rounds, repeat=None):
            index = [int(name.rsplit("_", 1)[1]) for name in names]
            self.calls.append((index, rounds, repeat))
            return [first[i] for i in index] if len(self.calls) == 1 else [final[i] for i in index]

    cache, key = {}, "k"
    knob_search._measure({key: op}, Timer(), cache, tmp_path / "knobs.json", HOST.vector_lanes(), 1, 3, _Bar())
    (everyone, rounds, _), (again, final_rounds, repeat) = Timer.calls
    assert everyone == list(range(len(candidates))) and rounds == 3
    assert again == [0, 1, 2] and final_rounds == knob_search.FINAL_ROUNDS and repeat == 1
    assert cache[key]["knobs"] == dataclasses.asdict(candidates[1]) and cache[key]["ms"] == 0.9
    assert [ms for _, ms in cache[key]["candidates"]][:4] == [1.3, 0.9, 1.0, 10.0]
    assert knob_search.finalists([5.0]) == [0]
    assert knob_search.finalists([3.0, 1.0, 2.0, 1.1, 1.2, 1.24]) == [1, 3, 4, 5]


def _elf_machine(blob: bytes) -> int:
    assert blob[:4] == b"\x7fELF"
    return int.from_bytes(blob[18:20], "little")


AARCH64 = 183  # ELF e_machine


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None,
                    reason="no aarch64-linux-gnu-g++ (apt install g++-aarch64-linux-gnu; .ci/run installs it)")
def test_cross_compile_for_aarch64_gives_an_aarch64_elf(pruned_mobilenet_onnx, tmp_path):
    path, _ = pruned_mobilenet_onnx
    out = tmp_path / "a72.so"
    sidecar = compiler.compile_onnx(path, out, options=compiler.Options(target="aarch64-linux", tune_kernels=False,
                                                                        progress=False), log=lambda *_: None)
    assert _elf_machine(out.read_bytes()) == AARCH64
    assert sidecar["target"]["config"]["mtriple"] == "aarch64-linux-gnu"
    assert sidecar["target"]["linker"] == "aarch64-linux-gnu-g++"
    assert sidecar["verification"]["passed"] and "host build" in sidecar["verification"]["on"]


def test_android_without_ndk_writes_a_tar_of_aarch64_objects(pruned_mobilenet_onnx, tmp_path, monkeypatch):
    monkeypatch.delenv("TVM_NDK_CC", raising=False)
    path, _ = pruned_mobilenet_onnx
    out = tmp_path / "phone.tar"
    compiler.compile_onnx(path, out, options=compiler.Options(target="android-arm64", tune_kernels=False,
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
    (["--vm", "jit"], "--vm=jit must be one of compiled, bytecode"),
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


def test_a_build_with_no_block_sparse_layer_says_so(rng, tmp_path):
    messages = []
    path = save(conv_graph(rng, pad=False, p=0.0, size=8), tmp_path / "dense.onnx")  # nothing pruned
    sidecar = compiler.compile_onnx(path, tmp_path / "m.so", options=compiler.Options(tune_kernels=False, progress=False),
                                    log=messages.append)
    assert not sidecar["layers"]
    assert any(m.startswith("warning: no layer of dense.onnx was rewritten to a block-sparse kernel") for m in messages)


@pytest.mark.parametrize("kind", ["hdf5", "truncated"])
def test_cli_non_onnx_file_exits_2(kind, small_onnx, tmp_path, capsys):
    bad = tmp_path / ("weights.h5" if kind == "hdf5" else "model.onnx")
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100) if kind == "hdf5" else small_onnx.read_bytes()[:300])
    assert cli.run([str(bad), "--out", str(tmp_path / "m.so")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0]
    assert ("truncated, damaged or another kind of file" in err[0] or "holds no ONNX graph" in err[0]), err
    assert not (tmp_path / "m.so").exists()


def test_cli_missing_cross_compiler_exits_2(small_onnx, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no aarch64-linux-gnu-g++ on it
    assert cli.run([str(small_onnx), "--out", str(tmp_path / "m.so"), "--target", "aarch64-linux"]) == 2
    err = capsys.readouterr().err
    assert "cross compiler aarch64-linux-gnu-g++ not found" in err and ".tar" in err


def test_cli_compiles_and_prints_a_summary(small_onnx, tmp_path, capsys):
    out = tmp_path / "m.so"
    assert cli.run([str(small_onnx), "--out", str(out), "--quiet", "--no-tune-kernels"]) == 0
    assert "1 BSR layers" in capsys.readouterr().out
    assert out.exists() and compiler.sidecar_path(out).exists()
    before = out.read_bytes()
    # A finished library is never replaced without --force (refused before any work) ...
    assert cli.run([str(small_onnx), "--out", str(out), "--quiet", "--no-tune-kernels"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"onexn-tvm: error: --out {out} already exists (use --force to overwrite)"]
    assert out.read_bytes() == before
    # ... and with it, it is.
    assert cli.run([str(small_onnx), "--out", str(out), "--quiet", "--no-tune-kernels", "--force"]) == 0

"""What is benchmarked: a compiled module, its label, its sparsity and its input, read from the
``onexn-tvm`` sidecar (``<module>.json``) when there is one."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from android_bench.stats import block_weighted_sparsity
from onexn_tf.errors import InvalidArgument

LIBRARY_SUFFIXES = (".so", ".tar")


@dataclasses.dataclass
class Module:
    label: str
    path: Path
    sparsity: float | None  # share of zero blocks in its BSR layers; None: a dense build
    input_shape: tuple[int, ...] | None
    target: str | None  # the onexn-tvm target name, when known
    expected: np.ndarray | None = None  # the output it must reproduce on the benchmark input


def load_module_spec(path, *, label: str | None = None, sparsity: float | None = None) -> Module:
    """A :class:`Module` for ``path``; the sidecar gives input shape, target and sparsity unless given."""
    path = Path(path)
    if not path.is_file():
        raise InvalidArgument(f"module {path} does not exist (give a library written by onexn-tvm)")
    if path.suffix not in LIBRARY_SUFFIXES:
        raise InvalidArgument(f"module {path} is not allowed: give a compiled library (.so or .tar)")
    sidecar = path.with_name(path.name + ".json")
    shape = target = None
    if sidecar.exists():
        meta = json.loads(sidecar.read_text())
        shape = tuple(meta["source"]["shape"])
        target = meta["target"]["name"]
        if sparsity is None and meta.get("bsr"):
            sparsity = block_weighted_sparsity(meta["layers"])
    return Module(label or path.stem, path, sparsity, shape, target)


@dataclasses.dataclass
class Reference:
    """One input, and the output every module must reproduce (e.g. onnxruntime's on the ONNX model)."""

    input: np.ndarray
    output: np.ndarray | None


def load_reference(path) -> Reference:
    """An ``.npz`` with ``input`` (and ``output``, to check results), or an ``.npy`` input only."""
    path = Path(path)
    if not path.is_file():
        raise InvalidArgument(f"--reference {path} does not exist")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise InvalidArgument(f"--reference {path} is not a numpy .npz/.npy file ({error})") from None
    if isinstance(data, np.ndarray):
        return Reference(data.astype(np.float32), None)
    if "input" not in data.files:
        raise InvalidArgument(f"--reference {path} has no 'input' array (it has: {', '.join(data.files)})")
    return Reference(data["input"].astype(np.float32), data["output"] if "output" in data.files else None)


def write_reference(path, x: np.ndarray, y: np.ndarray | None = None) -> None:
    """Write an ``.npz`` reference atomically (what ``load_reference`` reads)."""
    from onexn_tf import files

    arrays = {"input": x} if y is None else {"input": x, "output": y}
    with files.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def onnxruntime_output(onnx_path, x: np.ndarray) -> np.ndarray:
    """onnxruntime's output of ``onnx_path`` on ``x``: what every build of that model must reproduce."""
    path = Path(onnx_path)
    if not path.is_file():
        raise InvalidArgument(f"--onnx {path} does not exist")
    from android_bench.connection import message
    from android_bench.host_runtimes import onnxruntime_runner

    try:
        return onnxruntime_runner(path, x)[1]
    except Exception as error:  # onnxruntime's own message says what is wrong with the file or input
        raise InvalidArgument(f"--onnx {path} cannot run on the benchmark input: {message(error)}") from None


def input_for(modules: list[Module], reference: Reference | None, seed: int = 0) -> np.ndarray:
    """The one input all modules run on: the reference's, else random with the sidecars' shape."""
    shapes = {m.input_shape for m in modules if m.input_shape}
    if len(shapes) > 1:
        raise InvalidArgument(f"the modules take different inputs ({', '.join(map(str, sorted(shapes)))}): "
                              "benchmark builds of the same model together")
    if reference is not None:
        if shapes and tuple(reference.input.shape) not in shapes:
            raise InvalidArgument(f"--reference input has shape {tuple(reference.input.shape)}, "
                                  f"the modules take {next(iter(shapes))}")
        return reference.input
    if not shapes:
        raise InvalidArgument("no input shape: the modules have no onexn-tvm sidecar (<module>.json); "
                              "give --reference FILE.npz with an 'input' array")
    return np.random.default_rng(seed).standard_normal(next(iter(shapes))).astype(np.float32)

"""Export a 1×N-pruned model to SavedModel, ONNX and TFLite, each verified before it is kept.

Every artifact is written to a temporary name, run on random inputs (outputs vs the Keras model,
max abs and relative error), its weights checked against the Keras masks (every pruned kernel must
reappear with exactly its zero pattern, exactly 1×N, blocks contiguous), and only then moved into
place, followed by its JSON sidecar. An artifact without its sidecar is not finished. A failed check
removes the temporary files and raises :class:`VerificationError`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from export import onnx_format, savedmodel_format, tflite_format, xnnpack_sparse
from export.source import ExportSource, load_source, without_softmax
from export.verify import VerificationError, compare_outputs, match_zero_patterns, summarize
from onexn_tf import files, inspect, masks, models, provenance, rearrange
from onexn_tf.errors import InvalidArgument, first_line

from export.options import DEFAULT_FORMATS, FORMATS, check_require_xnnpack_sparse  # noqa: F401 (re-exported)


@dataclasses.dataclass
class Options:
    formats: tuple = DEFAULT_FORMATS
    opset: int = onnx_format.DEFAULT_OPSET
    nchw: bool = False
    rtol: float = 1e-4
    samples: int = 8
    seed: int = 0
    force: bool = False
    require_xnnpack_sparse: bool = False  # a tflite_sparse file XNNPACK would run dense fails verification


def artifact_name(fmt: str) -> str:
    return {"savedmodel": savedmodel_format.ARTIFACT, "onnx": onnx_format.ARTIFACT,
            "tflite": tflite_format.artifact(False), "tflite_sparse": tflite_format.artifact(True)}[fmt]


def _handlers(fmt: str, options: Options):
    """(write(model, path), check(path, x) -> (outputs, weights)) for a format."""
    if fmt == "savedmodel":
        return savedmodel_format.write, savedmodel_format.check
    if fmt == "onnx":
        return (lambda model, path: onnx_format.write(model, path, opset=options.opset, nchw=options.nchw),
                lambda path, x: onnx_format.check(path, x, nchw=options.nchw))
    sparse = fmt == "tflite_sparse"
    return lambda model, path: tflite_format.write(model, path, sparse=sparse), tflite_format.check


def random_inputs(source: ExportSource, count: int, seed: int) -> np.ndarray:
    """Random RGB pixels through the architecture's preprocessing (inputs the model is meant for)."""
    shape = (count,) + tuple(source.deployed.input_shape[1:])
    pixels = np.random.default_rng(seed).uniform(0.0, 255.0, shape).astype(np.float32)
    if source.arch:
        return np.asarray(models.preprocess_input(source.arch)(pixels), np.float32)
    return pixels / 127.5 - 1.0


def check_options(out: Path, options: Options, verify_only: bool) -> Options:
    unknown = [f for f in options.formats if f not in FORMATS]
    if unknown or not options.formats:
        raise InvalidArgument(f"formats {unknown or '[]'} are not allowed: choose from {', '.join(FORMATS)}")
    if "onnx" in options.formats:
        onnx_format.check_opset(options.opset)
    if not 0 < options.rtol < 1:
        raise InvalidArgument(f"--rtol {options.rtol} is not allowed: it must be in (0, 1)")
    if options.samples < 2:
        raise InvalidArgument(f"--samples {options.samples} is not allowed: verification needs at least 2 inputs")
    check_require_xnnpack_sparse(options.formats, options.require_xnnpack_sparse)
    files.check_writable_dir(out, "--out")
    for fmt in options.formats:
        path = out / artifact_name(fmt)
        if verify_only and not path.exists():
            raise InvalidArgument(f"--verify: {path} does not exist (export it first)")
        if not verify_only and not options.force and (path.exists() or _sidecar(path).exists()):
            raise FileExistsError(f"{path} already exists (use --force to overwrite)")
    return options


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _verify(fmt, path, source, x, reference, options, check_fn) -> dict:
    try:
        outputs, weights = check_fn(path, x)
    except Exception as error:  # any reader's failure on a damaged artifact: it does not verify
        raise VerificationError(f"{path} cannot be loaded and run ({type(error).__name__}: "
                                f"{first_line(error, 300)})") from None
    check = compare_outputs(reference, outputs, options.rtol)
    matches = match_zero_patterns(source.expected_kernels(), weights, source.spec, source.targets)
    report = {"outputs": dataclasses.asdict(check), "layers_checked": len(matches),
              "layers": [dict(dataclasses.asdict(m), passed=m.passed) for m in matches],
              "passed": check.passed and all(m.passed for m in matches)}
    if not check.passed:
        raise VerificationError(f"{fmt}: outputs differ from Keras by {check.max_rel_error:.3g} relative "
                                f"(max abs {check.max_abs_error:.3g}; allowed {options.rtol:g})")
    if not all(m.passed for m in matches):
        raise VerificationError(f"{fmt}: {summarize(matches)}")
    if fmt == "tflite_sparse":  # will XNNPACK take its sparse path? (read off the file, on any machine)
        verdict = xnnpack_sparse.check(path)
        report["xnnpack_sparse"] = verdict.to_dict()
        if options.require_xnnpack_sparse and not verdict.accepted:
            raise VerificationError(f"{fmt} (--require-xnnpack-sparse): {verdict.summary()}")
    return report


def _sidecar_data(fmt, path, source, options, verification, x) -> dict:
    layers = inspect.report(source.deployed, n=source.spec.n, criterion=source.spec.criterion,
                            partial=source.spec.partial, layers=set(source.pruned_layers))
    input_shape = [None] + list(source.deployed.input_shape[1:])
    layout = "NCHW" if fmt == "onnx" and options.nchw else "NHWC"
    if layout == "NCHW":
        input_shape = [None, input_shape[3], input_shape[1], input_shape[2]]
    return {
        "artifact": path.name, "format": fmt, "source": source.description,
        "arch": source.arch, "opset": options.opset if fmt == "onnx" else None,
        "input": {"name": "input", "shape": input_shape, "dtype": "float32", "layout": layout,
                  "preprocessing": source.preprocessing()},
        "output": {"shape": [None] + list(source.deployed.output_shape[1:]), "dtype": "float32"},
        "n": source.spec.n, "criterion": source.spec.criterion, "partial": source.spec.partial,
        "layers": [_layer_entry(r, source.targets.get(r.layer)) for r in layers],
        "permutation": source.record,
        "verification": {"inputs": int(x.shape[0]), "rtol": options.rtol, **verification},
        "size_bytes": _size(path), "versions": provenance.tool_versions(),
    }


def _layer_entry(record, target) -> dict:
    """A deployed layer's sparsity and block structure (natural channel order) against its target."""
    expected = None if target is None else masks.num_pruned(record.blocks, target)
    entry = dataclasses.asdict(record)
    entry.update(target_sparsity=target, expected_zero_blocks=expected,
                 exact=record.structured and (expected is None or record.zero_blocks == expected))
    return entry


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def export(source_path, out, *, options: Options | None = None, verify_only: bool = False, checkpoint=None,
           arch=None, n=None, criterion="block_l1", permutations=None, logits=False, progress=print) -> dict:
    """Export (or, with ``verify_only``, re-verify) the formats in ``options``; returns the report."""
    out = Path(out)
    options = check_options(out, options or Options(), verify_only)
    source = load_source(source_path, checkpoint=checkpoint, arch=arch, n=n, criterion=criterion,
                         permutations=permutations)
    progress(f"source: {source.description}")
    if logits:
        source.deployed = without_softmax(source.deployed)
    x = random_inputs(source, options.samples, options.seed)
    reference = source.deployed(x, training=False).numpy()
    out.mkdir(parents=True, exist_ok=True)
    report = {"source": source.description, "arch": source.arch, "pruned_layers": len(source.pruned_layers),
              "permuted_groups": sum(g["permuted"] for g in source.record["groups"]), "artifacts": {}}
    for fmt in options.formats:
        write, check_fn = _handlers(fmt, options)
        path = out / artifact_name(fmt)
        if verify_only:
            progress(f"verifying {path}")
            report["artifacts"][fmt] = _verify(fmt, path, source, x, reference, options, check_fn)
            continue
        progress(f"exporting {fmt} -> {path}")
        with files.atomic_path(path) as tmp:
            write(source.deployed, tmp)
            verification = _verify(fmt, tmp, source, x, reference, options, check_fn)
            sidecar = _sidecar_data(fmt, tmp, source, options, verification, x)
            sidecar["artifact"] = path.name
        files.write_json(_sidecar(path), sidecar)
        report["artifacts"][fmt] = {**verification, "size_bytes": sidecar["size_bytes"]}
        check = verification["outputs"]
        progress(f"  ok: max rel error {check['max_rel_error']:.2e}, {verification['layers_checked']} pruned "
                 f"weights exactly 1x{source.spec.n}, {sidecar['size_bytes']} bytes")
        if "xnnpack_sparse" in verification:
            progress(f"  {verification['xnnpack_sparse']['summary']}")
        if not check["outputs_vary"]:
            progress("  warning: the outputs barely vary across inputs, so their agreement proves little "
                     "(an untrained model? --logits compares the logits before the softmax)")
    if not verify_only:
        rearrange.write_record(out / "permutation.json", source.record)
        files.write_json(out / "verification.json", report)
    return report


def summary_table(report: dict) -> str:
    rows = [("format", "max rel error", "outputs vary", "pruned weights ok", "bytes")]
    for fmt, result in report["artifacts"].items():
        rows.append((fmt, f"{result['outputs']['max_rel_error']:.2e}", str(result["outputs"]["outputs_vary"]),
                     f"{sum(layer['passed'] for layer in result['layers'])}/{result['layers_checked']}",
                     str(result.get("size_bytes", "-"))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines += [f"{fmt}: {result['xnnpack_sparse']['summary']}" for fmt, result in report["artifacts"].items()
              if "xnnpack_sparse" in result]
    return "\n".join(lines)

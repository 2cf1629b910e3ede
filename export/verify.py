"""Checks that an exported artifact computes what the Keras model computes and keeps its zeros.

Pure numpy: runtimes hand in their outputs and constant weight tensors; these functions compare
outputs (max abs / relative error, and whether the outputs vary at all) and find, for every pruned
Keras kernel, a weight of the artifact with exactly its zero pattern in that runtime's layout
(ONNX conv OIHW, TFLite conv OHWI, dense [out, in] or [in, out]; batch-norm folding scales whole
output channels, so zeros survive it).
"""
from __future__ import annotations

import dataclasses

import numpy as np


class VerificationError(Exception):
    """An exported artifact does not match the Keras model."""


@dataclasses.dataclass
class OutputCheck:
    max_abs_error: float
    max_rel_error: float  # max |runtime - keras| / max |keras|
    outputs_vary: bool  # False: the outputs barely change across inputs, so agreement proves little
    passed: bool


def compare_outputs(reference: np.ndarray, actual: np.ndarray, rtol: float) -> OutputCheck:
    reference = np.asarray(reference, np.float64)
    actual = np.asarray(actual, np.float64).reshape(reference.shape)
    scale = float(np.abs(reference).max()) or 1.0
    abs_error = float(np.abs(actual - reference).max())
    varies = bool(reference.std(axis=0).mean() > 1e-3 * scale) if reference.shape[0] > 1 else False
    return OutputCheck(abs_error, abs_error / scale, varies, abs_error / scale <= rtol)


def layouts(keras_kernel_shape) -> dict:
    """Transposes mapping a Keras kernel to the layouts runtimes store it in."""
    if len(keras_kernel_shape) == 4:  # [kh, kw, C_in, C_out]
        return {"OIHW": (3, 2, 0, 1), "OHWI": (3, 0, 1, 2), "HWIO": (0, 1, 2, 3)}
    return {"[in, out]": (0, 1), "[out, in]": (1, 0)}


@dataclasses.dataclass
class PatternMatch:
    layer: str
    tensor: str | None
    layout: str | None
    zero_fraction: float
    zero_blocks: int | None
    expected_zero_blocks: int | None
    structured: bool | None

    @property
    def passed(self) -> bool:
        return self.tensor is not None and bool(self.structured) and (
            self.expected_zero_blocks is None or self.zero_blocks == self.expected_zero_blocks)


def match_zero_patterns(expected: dict, tensors: dict, spec: "masks.MaskSpec", targets: dict) -> list[PatternMatch]:
    """For each pruned layer (``expected``: name -> Keras kernel whose zeros are the mask), find an
    artifact tensor (``tensors``: name -> array) with the same zero pattern in some layout, each
    tensor used once; then check the found weight is exactly 1×N (natural order) at the target."""
    used = set()
    by_size = {}
    for name, array in tensors.items():
        by_size.setdefault(int(np.size(array)), []).append(name)
    results = []
    for layer, kernel in expected.items():
        zero = np.asarray(kernel) == 0
        found = None
        for layout, axes in layouts(zero.shape).items():
            want = np.transpose(zero, axes)
            for name in by_size.get(zero.size, []):
                if name in used:
                    continue
                array = np.asarray(tensors[name])
                candidate = array.reshape(want.shape) if array.size == want.size and array.ndim != want.ndim \
                    else array
                if candidate.shape == want.shape and np.array_equal(candidate == 0, want):
                    found = (name, layout, np.transpose(candidate, np.argsort(axes)))
                    break
            if found:
                break
        if found is None:
            results.append(PatternMatch(layer, None, None, float(zero.mean()), None, None, None))
            continue
        name, layout, as_keras = found
        used.add(name)
        from onexn_tf import masks  # imports TensorFlow: only here, so the TVM tools start without it

        counts = masks.block_counts(as_keras, spec)
        target = targets.get(layer)
        results.append(PatternMatch(layer, name, layout, float((as_keras == 0).mean()), counts.zero_blocks,
                                    None if target is None else masks.num_pruned(counts.num_blocks, target),
                                    counts.structured))
    return results


def summarize(matches: list[PatternMatch]) -> str:
    """One line naming what failed, for the error message."""
    missing = [m.layer for m in matches if m.tensor is None]
    broken = [m.layer for m in matches if m.tensor is not None and not m.passed]
    parts = []
    if missing:
        parts.append(f"no weight with the zero pattern of {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if broken:
        parts.append(f"weights not exactly 1×N at the target for {broken[:5]}")
    return "; ".join(parts)

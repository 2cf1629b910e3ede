"""Latency statistics (numpy in, numbers out), reported like TFLite's ``benchmark_model``."""
from __future__ import annotations

import numpy as np

FIELDS = ("count", "mean", "median", "min", "max", "std", "p5", "p95")


def summarize(samples_ms) -> dict:
    """Summary of per-run latencies in ms; an empty sample gives ``count`` 0 and no other field.

    Percentiles interpolate linearly (numpy's default), so min <= p5 <= median <= p95 <= max always.
    """
    x = np.asarray(samples_ms, dtype=np.float64)
    if x.size == 0:
        return {"count": 0}
    p5, median, p95 = np.percentile(x, [5, 50, 95])
    return {"count": int(x.size), "mean": float(x.mean()), "median": float(median), "min": float(x.min()),
            "max": float(x.max()), "std": float(x.std(ddof=1)) if x.size > 1 else 0.0,
            "p5": float(p5), "p95": float(p95)}


def ratio(baseline: dict, other: dict, field: str = "median") -> float | None:
    """``baseline[field] / other[field]``: > 1 means ``other`` is faster (a speedup over the baseline)."""
    if not baseline.get("count") or not other.get("count") or other[field] <= 0:
        return None
    return baseline[field] / other[field]


def block_weighted_sparsity(layers: list[dict]) -> float | None:
    """Share of zero blocks over all BSR-rewritten layers of an ``onexn-tvm`` sidecar (None: none)."""
    total = zero = 0.0
    for layer in layers:
        shape = layer["shape"]
        blocks = -(-shape["c_out"] // shape["bsr"]) * shape["c_in"]
        total += blocks
        zero += blocks * layer["block_sparsity"]
    return zero / total if total else None

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


def _by_round(samples_ms, rounds: int) -> np.ndarray:
    """``samples_ms`` as a rounds × runs array: ``rounds`` runs of equal length, in order (as
    :func:`android_bench.host_runtimes.time_in_processes` returns them)."""
    x = np.asarray(samples_ms, dtype=np.float64)
    if rounds < 1 or x.size == 0 or x.size % rounds:
        raise ValueError(f"{x.size} samples do not split into {rounds} rounds")
    return x.reshape(rounds, -1)


def round_medians(samples_ms, rounds: int) -> np.ndarray:
    """Median of each round's runs (:func:`_by_round`)."""
    return np.median(_by_round(samples_ms, rounds), axis=1)


def paired_ratio_quartiles(baseline_rounds, other_rounds) -> tuple[float, float]:
    """p25 and p75 over rounds of ``baseline / other``, each round's two medians timed seconds apart:
    a slow spell of a shared host slows both sides of a pair, so this spread shows how far the ratio
    of the whole run's medians can be trusted, which the latencies' own p5-p95 do not."""
    ratios = np.asarray(baseline_rounds, dtype=np.float64) / np.asarray(other_rounds, dtype=np.float64)
    p25, p75 = np.percentile(ratios, [25, 75])
    return float(p25), float(p75)


def far_rounds(round_trips: dict, factor: float = 4.0) -> np.ndarray | None:
    """Per round, whether any process's thread-pool round trip (µs; None where a process did not probe)
    was at least ``factor`` times the fastest of the whole run: the rounds the host ran with the cores
    far apart (:func:`android_bench.host_runtimes.pool_probe`). None when nothing was probed. Relative
    to the run's own fastest, as the near figure differs between machines: on a Zen 5 our pool's round
    trip was 0.10-0.28 µs near (so 2x would call near rounds far) and 0.9-1.3 µs far."""
    rows = [[np.nan if v is None else v for v in values] for values in round_trips.values()
            if any(v is not None for v in values)]
    if not rows:
        return None
    trips = np.asarray(rows, dtype=np.float64)  # processes × rounds
    return np.nanmax(trips, axis=0) >= factor * np.nanmin(trips)


def median_of_rounds(samples_ms, rounds: int, keep) -> float | None:
    """Median of the runs of the rounds where ``keep`` is true (None when no round is kept)."""
    kept = _by_round(samples_ms, rounds)[np.asarray(keep, dtype=bool)]
    return float(np.median(kept)) if kept.size else None


def block_weighted_sparsity(layers: list[dict]) -> float | None:
    """Share of zero blocks over all BSR-rewritten layers of an ``onexn-tvm`` sidecar (None: none)."""
    total = zero = 0.0
    for layer in layers:
        shape = layer["shape"]
        blocks = -(-shape["c_out"] // shape["bsr"]) * shape["c_in"]
        total += blocks
        zero += blocks * layer["block_sparsity"]
    return zero / total if total else None

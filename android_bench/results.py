"""Benchmark results on disk (JSON + CSV, rewritten atomically after every round, so an interrupted run
keeps what it measured), the printed table, and the latency-vs-sparsity plot."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from android_bench import stats
from onexn_tf import files

JSON_NAME, CSV_NAME, PLOT_NAME = "results.json", "results.csv", "latency_vs_sparsity.png"


def refresh(report: dict) -> dict:
    """Recompute every module's statistics and its speedup over the first module from the samples."""
    for module in report["modules"]:
        module["stats"] = stats.summarize(module["samples_ms"])
    first = report["modules"][0]["stats"] if report["modules"] else {}
    for module in report["modules"]:
        module["speedup_vs_first"] = stats.ratio(first, module["stats"])
    return report


def csv_rows(report: dict) -> list[dict]:
    rows = []
    for m in report["modules"]:
        row = {"label": m["label"], "path": m["path"], "sparsity": m["sparsity"], "status": m["status"]}
        row.update({field: m["stats"].get(field) for field in stats.FIELDS})
        row["speedup_vs_first"] = m["speedup_vs_first"]
        row["error"] = m.get("error") or ""
        rows.append(row)
    return rows


def save(report: dict, out_dir) -> None:
    """Write ``results.json`` and ``results.csv`` into ``out_dir`` (each atomically)."""
    out_dir = Path(out_dir)
    refresh(report)
    files.write_json(out_dir / JSON_NAME, report)
    rows = csv_rows(report)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["label"])
    writer.writeheader()
    writer.writerows(rows)
    files.write_text(out_dir / CSV_NAME, buffer.getvalue())


def _fmt(value, spec=".3f") -> str:
    return "-" if value is None else format(value, spec)


def format_table(report: dict) -> str:
    """A fixed-width table: one line per module, latencies in ms, speedup over the first module."""
    head = ["module", "sparsity", "runs", "mean", "median", "min", "max", "std", "p5", "p95", "vs first", "status"]
    lines = [head]
    for m in report["modules"]:
        s = m["stats"]
        speed = m["speedup_vs_first"]
        lines.append([m["label"], _fmt(m["sparsity"], ".2f"), str(s.get("count", 0)),
                      *(_fmt(s.get(f)) for f in ("mean", "median", "min", "max", "std", "p5", "p95")),
                      "-" if speed is None else f"{speed:.2f}x", m["status"]])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    text = ["  ".join(cell.ljust(w) if i in (0, 11) else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
            for row in lines]
    return "\n".join([text[0], "-" * len(text[0]), *text[1:]])


def plot_latency_vs_sparsity(report: dict, path) -> bool:
    """Median latency (p5–p95 bars) against block sparsity; dense builds as horizontal lines. Drawn
    only when at least two sparsities were measured; returns whether it was written."""
    measured = [m for m in report["modules"] if m["stats"].get("count")]
    sparse = sorted((m for m in measured if m["sparsity"] is not None), key=lambda m: m["sparsity"])
    if len({round(m["sparsity"], 4) for m in sparse}) < 2:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    x = [m["sparsity"] for m in sparse]
    y = [m["stats"]["median"] for m in sparse]
    err = [[m["stats"]["median"] - m["stats"]["p5"] for m in sparse],
           [m["stats"]["p95"] - m["stats"]["median"] for m in sparse]]
    ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label="BSR builds (median, p5–p95)")
    for m in sparse:
        ax.annotate(m["label"], (m["sparsity"], m["stats"]["median"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=7)
    for i, m in enumerate(m for m in measured if m["sparsity"] is None):
        ax.axhline(m["stats"]["median"], linestyle="--", color=f"C{i + 1}", label=f"{m['label']} (dense)")
    ax.set_xlabel("block sparsity of the 1×1 convolutions")
    ax.set_ylabel("latency per inference (ms)")
    ax.set_ylim(bottom=0)
    title = report.get("device", "")
    if report.get("emulated"):
        title += " — EMULATED, not device timings"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return True

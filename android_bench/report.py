"""The demo's report: ``report.md`` (accuracy, per-layer sparsity, export checks, builds, latency with
ratios) and its PNG plots, from numbers the run measured. Pure formatting: dicts in, text and
images out."""
from __future__ import annotations

import platform
from pathlib import Path

from android_bench import results, stats
from onexn_tf import files

LATENCY_PLOT, LAYER_PLOT = "latency_vs_sparsity.png", "layer_sparsity.png"
DENSE_RUNTIMES = ("onnxruntime", "tflite_xnnpack", "tvm_dense")


def latency_rows(measured: dict) -> list[dict]:
    """One row per runtime on this machine: statistics, speedup over TVM dense and over the fastest
    dense runtime (onnxruntime, TFLite, TVM dense), all medians."""
    modules = measured["runtimes"]["modules"] + measured["host"]["modules"]
    by_label = {m["label"]: m for m in modules}
    dense = [by_label[name]["stats"] for name in DENSE_RUNTIMES if by_label.get(name, {}).get("stats", {}).get("count")]
    best = min(dense, key=lambda s: s["median"]) if dense else {}
    tvm_dense = by_label.get("tvm_dense", {}).get("stats", {})
    rows = []
    for m in modules:
        s = m["stats"]
        rows.append({"label": m["label"], "sparsity": m["sparsity"], "status": m["status"],
                     **{k: s.get(k) for k in stats.FIELDS},
                     "speedup_vs_tvm_dense": stats.ratio(tvm_dense, s),
                     "speedup_vs_best_dense": stats.ratio(best, s)})
    return rows


def plot_layer_sparsity(layers: list[dict], target: float | None, path) -> None:
    """Zero-block fraction per pruned layer, against the target rate (None: each layer's own)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [layer["layer"] for layer in layers]
    values = [layer["zero_blocks"] / layer["blocks"] for layer in layers]
    fig, ax = plt.subplots(figsize=(max(6, 0.22 * len(names)), 4))
    ax.bar(range(len(names)), values, color="C0")
    if target is None:
        ax.scatter(range(len(names)), [layer["target_sparsity"] for layer in layers], color="C3", marker="_", s=80,
                   label="each layer's planned rate", zorder=3)
    else:
        ax.axhline(target, color="C3", linestyle="--", label=f"target p = {target:g}")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    ax.set_ylabel("zero blocks / blocks")
    ax.set_ylim(0, 1)
    ax.set_title("1×N block sparsity per pruned layer", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def plot_latency(measured: dict, path) -> bool:
    """Host latency against block sparsity, with the dense runtimes as horizontal lines."""
    combined = {"device": "this machine: TVM over local RPC, onnxruntime and TFLite in-process",
                "modules": measured["host"]["modules"] + measured["runtimes"]["modules"]}
    return results.plot_latency_vs_sparsity(combined, path)


def _f(value, spec=".2f", suffix="") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def _table(head: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(row) + " |" for row in rows])


def markdown(report: dict) -> str:
    """``report.md`` from the demo's ``report.json`` contents."""
    acc = report["accuracy"]
    plan = report.get("plan")
    rate = (f"per-layer rates planned for a predicted {plan['speedup']:g}× speedup (onexn-plan)" if plan
            else f"p = {report['sparsity']}")
    out = ["# onexn-tf demo report",
           "",
           f"{report['arch']} alpha {report['alpha']}, {report['image_size']} px, {report['classes']} classes "
           f"(synthetic data), 1×{report['n']} pruning at {rate} ({report['criterion']}, "
           f"rearrangement: {report['rearrange']}). Machine: {platform.machine()}, {report['machine']['cores']} "
           f"cores; wall time {report['wall_time_s']:.0f} s. Every number below was measured by this run.",
           "",
           "## Accuracy (validation set)",
           "",
           _table(["model", "top-1", "top-5", "examples"],
                  [[k, _f(acc[k]["top1"] * 100, ".1f", " %"), _f(acc[k]["top5"] * 100, ".1f", " %"),
                    str(acc[k]["examples"])] for k in ("dense", "pruned", "deployed")]),
           "",
           f"Every pruned layer exactly 1×{report['n']}: **{report['all_layers_exact_1xn']}**; output channels "
           f"permuted in {report['permuted_channel_groups']} channel groups so kept blocks are contiguous.",
           "",
           "## Per-layer sparsity",
           "",
           f"![per-layer sparsity]({LAYER_PLOT})",
           "",
           _table(["layer", "kernel", "zero blocks / blocks", "block sparsity", "exact 1×N"],
                  [[layer["layer"], "×".join(map(str, layer["kernel_shape"])),
                    f"{layer['zero_blocks']}/{layer['blocks']}", _f(layer["zero_blocks"] / layer["blocks"], ".3f"),
                    "yes" if layer["exact"] else "NO"] for layer in report["layers"]])]
    if plan:
        measured = (f"; the trained model's build measured {plan['measured_ms']:.3f} ms (prediction error "
                    f"{plan['prediction_error']:+.1%})" if plan.get("measured_ms") else "")
        out += ["", "## Planned rates (onexn-plan)", "",
                f"Latency table measured on this machine; budget {plan['budget_ms']:.3f} ms (the dense prediction "
                f"{plan['dense_predicted_ms']:.3f} ms / {plan['speedup']:g}); predicted {plan['predicted_ms']:.3f} ms"
                f"{measured}. Rates: " + ", ".join(f"{row['layer']} {row['rate']:g}" for row in plan["layers"]) + "."]
    export = report.get("export")
    if export:
        note = " Exported without the final softmax: the artifacts output logits." if export.get("logits") else ""
        out += ["", "## Export (each artifact checked against the Keras model)", "", note.strip(), "",
                _table(["format", "max rel error", f"pruned weights exactly 1×{report['n']}", "bytes"],
                       [[fmt, _f(a["outputs"]["max_rel_error"], ".1e"),
                         f"{sum(layer['passed'] for layer in a['layers'])}/{a['layers_checked']}",
                         str(a.get("size_bytes", "–"))] for fmt, a in export["artifacts"].items()])]
    builds = report.get("builds")
    if builds:
        out += ["", "## TVM builds (each checked against onnxruntime before it is written)", "",
                _table(["build", "target", "BSR layers", "block sparsity", "max rel error", "seconds", "model"],
                       [[b["label"], b["target"], str(b["bsr_layers"]), _f(b["sparsity"], ".3f"),
                         _f(b["max_rel_error"], ".1e"), _f(b["seconds"], ".0f"),
                         "trained" if b["trained"] else "probe (pruned post hoc)"] for b in builds])]
    latency = report.get("latency")
    if latency:
        settings = latency["settings"]
        out += ["", "## Latency on this machine", "",
                f"Batch 1, {settings['threads']} thread(s), median of {settings['repeat']} interleaved rounds after "
                f"{settings['warmup']} warm-up runs (ms). TVM builds run on a local TVM RPC server and are timed "
                "by TVM's time_evaluator; onnxruntime and TFLite in this process. Speedup = that runtime's median "
                "/ this one's.",
                "",
                _table(["runtime", "block sparsity", "median", "p5", "p95", "mean", "std", "vs TVM dense",
                        "vs best dense", "status"],
                       [[r["label"], _f(r["sparsity"], ".2f"), _f(r["median"], ".3f"), _f(r["p5"], ".3f"),
                         _f(r["p95"], ".3f"), _f(r["mean"], ".3f"), _f(r["std"], ".3f"),
                         _f(r["speedup_vs_tvm_dense"], ".2f", "×"), _f(r["speedup_vs_best_dense"], ".2f", "×"),
                         r["status"]] for r in latency["rows"]]),
                "",
                f"![latency vs sparsity]({LATENCY_PLOT})" if latency.get("plot") else "",
                ""]
        out += ["Both TVM builds run every operation on our own NCHW kernels with knobs measured on this machine "
                "(the dense build is the same kernels with every matrix dense), so *vs TVM dense* isolates what the "
                "1×N blocks buy; *vs best dense* (against the fastest of onnxruntime, TFLite and TVM dense) is the "
                "comparison that counts.", ""]
        arm = latency.get("arm")
        if arm:
            out += ["## Emulated ARM device (qemu)", "",
                    f"**{arm['note']}.** The aarch64 builds ran on a TVM RPC server under qemu-aarch64 and "
                    "reproduced onnxruntime:", "",
                    _table(["build", "max rel error vs onnxruntime", "median (ms, emulated)", "status"],
                           [[m["label"], _f((m["verification"] or {}).get("max_rel_error"), ".1e"),
                             _f(m["stats"].get("median"), ".1f"), m["status"]] for m in arm["modules"]]), ""]
        elif latency.get("arm_skipped"):
            out += ["## Emulated ARM device", "", f"Not run: {latency['arm_skipped']}", ""]
    return "\n".join(out).rstrip() + "\n"


def write(report: dict, out_dir) -> Path:
    out_dir = Path(out_dir)
    path = out_dir / "report.md"
    files.write_text(path, markdown(report))
    return path

"""Why our 2-thread builds scale worse than the dense runtimes: a layer reading what the layer before
just wrote, in CHW, at 2 threads (``probes/handover.c``; its header says what it times).

Prints the consumer's time after each kind of writer, in the CHW layout our kernels use and in a
tiled one (each core's pixel range of every plane in one contiguous region), at 2 threads, and in
CHW at 1 thread; each ratio is against the same layout's warm time of the same run. Needs a C
compiler (``cc``) and CPUs 0 and 1.

    python benchmarks/handover_probe.py [--rounds 2000]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("probes") / "handover.c"


def run(binary: Path, layout: str, threads: int, rounds: int) -> dict[str, float]:
    """Writer -> mean consumer µs (both cores, fork to join)."""
    lines = subprocess.run([str(binary), layout, str(threads), str(rounds)], check=True, capture_output=True,
                           text=True).stdout.splitlines()
    return {name: float(mean) for name, mean, *_ in (line.split("\t") for line in lines)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    if args.rounds < 1:
        print(f"handover_probe: error: --rounds={args.rounds} is not allowed: it must be at least 1", file=sys.stderr)
        return 2
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        print("handover_probe: error: no C compiler (cc or gcc) on PATH", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "handover"
        subprocess.run([compiler, "-O3", "-march=native", "-pthread", "-o", str(binary), str(SOURCE)], check=True)
        results = {("chw", 2): run(binary, "chw", 2, args.rounds), ("tiled", 2): run(binary, "tiled", 2, args.rounds),
                   ("chw", 1): run(binary, "chw", 1, args.rounds)}
    print(f"consumer: 576 -> 96 1x4 p = 0.9 on 14x14, each core its pixel range; mean of {args.rounds} rounds")
    print(f"{'input last written by':34s} {'CHW, 2 thr':>16s} {'tiled, 2 thr':>16s}")
    warm = {key: next(iter(values.values())) for key, values in results.items()}
    for name in results[("chw", 2)]:
        cells = [f"{results[key][name]:7.1f} us {results[key][name] / warm[key]:4.2f}x" for key in (("chw", 2),
                                                                                                   ("tiled", 2))]
        print(f"{name:34s} {cells[0]:>16s} {cells[1]:>16s}")
    single = results[("chw", 1)]
    print(f"CHW, 1 thread: warm {warm[('chw', 1)]:.1f} us, after its own write {single['the core itself']:.1f} us "
          f"({single['the core itself'] / warm[('chw', 1)]:.2f}x)")
    handed_over = {layout: results[(layout, 2)]["each core its own pixels"] for layout in ("chw", "tiled")}
    print(f"2 threads over 1 thread after a hand-over: CHW {warm[('chw', 1)] / handed_over['chw']:.2f}x, "
          f"tiled {warm[('chw', 1)] / handed_over['tiled']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

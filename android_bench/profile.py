"""Where a build's time goes: each call of a Relax VM run timed in place, against the end-to-end time.

TVM 0.27's Relax VM has no profiler, so this sets a VM instrument (a callback before and after every
call instruction) and timestamps both sides. Each duration then holds the kernel plus the callback's
own cost; that floor is measured on the VM's trivial built-ins (``vm.builtin.*`` calls that do next
to nothing) and subtracted. The end-to-end time comes from runs without the instrument, interleaved
with the instrumented ones, so ``overhead = end_to_end − Σ kernels`` is what the VM, allocation and
thread-pool wake-ups cost beyond our kernels. In-process only: an instrument cannot cross RPC.

Only the bytecode VM calls an instrument: a library built with the compiled VM (``onexn-tvm``'s
default) is timed end to end as it is, and its kernels through a ``--vm bytecode`` twin built from
the same work dir (the same kernels and knobs; only the VM's main function differs).
"""
from __future__ import annotations

import collections
import time

import numpy as np

VM_CALLS = "vm"  # the group of the VM's own built-ins (allocation, shape checks, …)
_TRIVIAL = ("vm.builtin.null_value", "vm.builtin.check_tensor_info", "vm.builtin.match_shape")


FUSED = "pointwise+depthwise"  # one call computing a pointwise conv and the depthwise conv it feeds
_ROLE_GROUPS = {"pointwise_dense": "pointwise", "conv": "stem", "gemv": "classifier", "gemv_dense": "classifier",
                "to_nchw": "rest", "view": "rest", "pool": "rest", "scale": "rest"}


def role_groups(sidecar: dict) -> dict:
    """Kernel name -> group (pointwise, depthwise, pointwise+depthwise, stem, classifier, rest) from a
    build's sidecar, the parts of a fused pair included."""
    groups = {}
    for kernel in sidecar.get("kernels", []):
        groups[kernel["name"]] = _ROLE_GROUPS.get(kernel["role"], kernel["role"])
        for part in kernel.get("parts", []):  # a pair the knob search kept apart runs as its two parts
            groups[part["name"]] = _ROLE_GROUPS.get(part["role"], part["role"])
    return groups


def apportion_fused(calls_ms: dict, sidecar: dict) -> dict:
    """Group -> ms with every fused pointwise → depthwise call split between ``pointwise`` and
    ``depthwise`` in the ratio of its two parts' own kernel times measured by the knob search (the
    sidecar's ``parts``): one call cannot be timed in halves, and the question "how much goes to the
    pointwise convs" still needs an answer. Calls the sidecar does not know are the VM's or ``rest``."""
    groups, kernels = role_groups(sidecar), {k["name"]: k for k in sidecar.get("kernels", [])}
    split: dict = collections.defaultdict(float)
    for symbol, ms in calls_ms.items():
        group = groups.get(symbol, VM_CALLS if symbol.startswith("vm.") else "rest")
        parts: dict = collections.defaultdict(float)
        for part in kernels.get(symbol, {}).get("parts", []):
            parts[_ROLE_GROUPS.get(part["role"], part["role"])] += part.get("kernel_ms") or 0.0
        total = sum(parts.values())
        if group == FUSED and total > 0:
            for role, part_ms in parts.items():
                split[role] += ms * part_ms / total
        else:
            split[group] += ms
    return dict(split)


def profile(library, sidecar: dict, x: np.ndarray, *, rounds: int = 20, warmup: int = 5, traced_library=None) -> dict:
    """``{"end_to_end_ms", "kernels_ms", "overhead_ms", "groups_ms": {group: ms}, "calls_ms": {name: ms},
    "instrument_floor_ms"}``, medians over ``rounds`` (each group: the median round's sum). The calls
    are timed in ``traced_library`` (default: ``library`` itself), which must run on the bytecode VM."""
    import tvm
    from tvm import relax

    lib = tvm.runtime.load_module(str(library))
    plain = relax.VirtualMachine(lib, tvm.cpu())
    traced_lib = lib if traced_library is None else tvm.runtime.load_module(str(traced_library))
    traced = relax.VirtualMachine(traced_lib, tvm.cpu())
    tensor = tvm.runtime.tensor(x)
    durations: dict = collections.defaultdict(float)
    counts: dict = collections.Counter()
    started: dict = {}
    clock = time.perf_counter

    def instrument(func, symbol, before, ret, *args):
        if before:
            started[symbol] = clock()
        else:
            durations[symbol] += clock() - started.pop(symbol)
            counts[symbol] += 1
        return 0  # VMInstrumentReturnKind.NO_OP: run the call as usual

    traced.set_instrument(tvm.runtime.convert(instrument))
    run_plain, run_traced = plain["main"], traced["main"]
    for _ in range(warmup):
        run_plain(tensor)
        run_traced(tensor)
    end_to_end, per_round = [], []
    for _ in range(rounds):
        start = clock()
        run_plain(tensor)
        end_to_end.append(clock() - start)
        durations.clear()
        counts.clear()
        run_traced(tensor)
        per_round.append((dict(durations), dict(counts)))
        if not counts:
            raise ValueError(f"{traced_library or library}: no call reached the VM instrument (a library built with "
                             "onexn-tvm --vm compiled); time its calls in a --vm bytecode build of the same model")
    floors = [d[s] / c[s] for d, c in per_round for s in _TRIVIAL if c.get(s)]
    floor = float(np.median(floors)) if floors else 0.0
    groups = role_groups(sidecar)
    calls: dict = collections.defaultdict(list)
    grouped: dict = collections.defaultdict(list)
    for d, c in per_round:
        sums: dict = collections.defaultdict(float)
        for symbol, seconds in d.items():
            ms = max(0.0, seconds - floor * c[symbol]) * 1e3
            calls[symbol].append(ms)
            sums[groups.get(symbol, VM_CALLS if symbol.startswith("vm.") else "rest")] += ms
        for group, ms in sums.items():
            grouped[group].append(ms)
    groups_ms = {g: float(np.median(v)) for g, v in grouped.items()}
    kernels_ms = sum(ms for g, ms in groups_ms.items() if g != VM_CALLS)
    e2e = float(np.median(end_to_end)) * 1e3
    return {"end_to_end_ms": e2e, "kernels_ms": kernels_ms, "overhead_ms": e2e - kernels_ms,
            "groups_ms": groups_ms, "calls_ms": {s: float(np.median(v)) for s, v in calls.items()},
            "instrument_floor_ms": floor * 1e3}

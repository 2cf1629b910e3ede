"""Per-layer sparsity and block-structure report of a pruned or stripped model."""
from __future__ import annotations

import dataclasses
import json

import numpy as np

from onexn_tf.errors import InvalidArgument
from onexn_tf import masks, schedules, selection
from onexn_tf.pruning import Prune1xN, _true_variable, permutation


@dataclasses.dataclass
class LayerRecord:
    layer: str
    kernel_shape: list[int]
    n: int
    criterion: str
    target_sparsity: float | None  # None when the model carries no schedule (stripped)
    sparsity: float  # fraction of zero kernel weights
    blocks: int
    zero_blocks: int
    expected_zero_blocks: int | None  # floor(B·p) for the target p
    structured: bool  # every block all-zero or all-non-zero
    permuted: bool  # blocks formed in a non-identity output-channel order
    partial_channels: int  # C_out % N (the size of the smaller trailing block, 0 if none)

    @property
    def exact(self) -> bool:
        """Structured and exactly floor(B·p) blocks pruned."""
        return self.structured and (self.expected_zero_blocks is None or self.zero_blocks == self.expected_zero_blocks)


def _record(name, kernel, spec, target, perm) -> LayerRecord:
    counts = masks.block_counts(kernel, spec, perm)
    c_out = masks.kernel_dims(kernel.shape)[1]
    permuted = perm is not None and not np.array_equal(perm, np.arange(c_out))
    expected = None if target is None else masks.num_pruned(counts.num_blocks, target)
    return LayerRecord(
        layer=name, kernel_shape=list(kernel.shape), n=spec.n, criterion=spec.criterion, target_sparsity=target,
        sparsity=float(np.mean(kernel == 0)), blocks=counts.num_blocks, zero_blocks=counts.zero_blocks,
        expected_zero_blocks=expected, structured=counts.structured, permuted=bool(permuted),
        partial_channels=c_out % spec.n if spec.criterion in masks.BLOCK_CRITERIA else 0)


def report(model, n: int | None = None, *, criterion: str = "block_l1", partial: str = "inside",
           permutations: dict | None = None, layers=None) -> list[LayerRecord]:
    """One record per pruned layer.

    A model with ``Prune1xN`` wrappers reports its wrapped layers (N, criterion, target and
    permutation come from the wrappers; ``n`` may be omitted). A stripped model reports every
    Conv2D/Dense layer (or ``layers``), judged as 1×N blocks of height ``n``; pass the
    ``permutations`` recorded before stripping when the masks were rearranged.
    """
    wrappers = [layer for layer in selection.leaf_layers(model) if isinstance(layer, Prune1xN)]
    records = []
    if wrappers:
        for wrapper in wrappers:
            kernel = _true_variable(wrapper.pruning_vars[0][0]).numpy() * wrapper.pruning_vars[0][1].numpy()
            records.append(_record(wrapper.layer.name, kernel, wrapper.spec,
                                   schedules.final_sparsity(wrapper.pruning_schedule), permutation(wrapper)))
        return records
    if n is None:
        raise InvalidArgument("n is required to report a model without pruning wrappers (the block height N)")
    spec = masks.MaskSpec(n=n, criterion=criterion, partial=partial)
    permutations = permutations or {}
    for layer in selection.leaf_layers(model):
        if selection.unprunable_reason(layer) or (layers is not None and layer.name not in layers):
            continue
        records.append(_record(layer.name, layer.kernel.numpy(), spec, None, permutations.get(layer.name)))
    return records


def to_dicts(records: list[LayerRecord]) -> list[dict]:
    return [dict(dataclasses.asdict(r), exact=r.exact) for r in records]


def to_json(records: list[LayerRecord]) -> str:
    return json.dumps(to_dicts(records), indent=2)


def format_table(records: list[LayerRecord]) -> str:
    """A fixed-width table for terminals and logs."""
    header = ("layer", "kernel", "N", "target", "sparsity", "zero/blocks", "1xN", "perm")
    rows = [header]
    for r in records:
        target = "-" if r.target_sparsity is None else f"{r.target_sparsity:.3f}"
        rows.append((r.layer, "x".join(map(str, r.kernel_shape)), str(r.n), target, f"{r.sparsity:.4f}",
                     f"{r.zero_blocks}/{r.blocks}", "yes" if r.exact else "NO", "yes" if r.permuted else "no"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

"""How much each layer's pruning hurts: the validation loss after pruning that layer alone.

The planner's measured importance score (``onexn-plan choose --score sensitivity``): for every layer
and rate, the layer's kernel is 1×N-masked at that rate (block L1, as training would), the loss is
taken over a few fixed validation batches, and the kernel is restored. The score of (layer, rate)
is minus the loss it adds; a layer whose pruning costs accuracy out of proportion (the last 1×1 conv
before the pooling, the SE convs) then gets the low rates it needs.
"""
from __future__ import annotations

import numpy as np

from onexn_tf import masks


def batches_of(dataset, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The first ``count`` (images, one-hot labels) batches of a dataset, as arrays (reused for every
    layer and rate, so all are judged on the same images)."""
    out = []
    for images, labels in dataset.take(count):
        out.append((images.numpy(), labels.numpy()))
    return out


def loss(model, batches) -> float:
    """Mean cross-entropy of the model's predictions (softmax applied if it outputs logits)."""
    total, count = 0.0, 0
    for images, labels in batches:
        out = model(images, training=False).numpy().astype(np.float64)
        if not np.allclose(out.sum(axis=-1), 1.0, atol=1e-3) or (out < 0).any():  # logits
            out = np.exp(out - out.max(axis=-1, keepdims=True))
            out /= out.sum(axis=-1, keepdims=True)
        total += float(-(labels * np.log(np.clip(out, 1e-12, 1.0))).sum())
        count += len(images)
    return total / count


def scores(model, layers: list[str], rates, batches, *, n: int = 4, progress=None) -> dict[str, dict[float, float]]:
    """``{layer: {rate: -(loss with the layer pruned at rate - loss of the model)}}`` (0 at rate 0)."""
    base = loss(model, batches)
    out = {}
    for name in layers:
        layer = model.get_layer(name)
        kernel = layer.kernel.numpy()
        out[name] = {}
        for rate in rates:
            if rate == 0:
                out[name][float(rate)] = 0.0
                continue
            layer.kernel.assign(kernel * masks.compute_mask(kernel, rate, n=n).mask)
            out[name][float(rate)] = base - loss(model, batches)
        layer.kernel.assign(kernel)
        if progress:
            progress(name)
    return out

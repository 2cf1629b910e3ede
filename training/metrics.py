"""Top-k accuracy as plain numpy (the same rule as Keras' TopKCategoricalAccuracy / tf.math.in_top_k).

A prediction counts as correct for k if fewer than k classes score strictly higher than the true
class, so a tie with the k-th score counts as a hit.
"""
from __future__ import annotations

import numpy as np

from onexn_tf.errors import InvalidArgument


def topk_hits(scores: np.ndarray, labels: np.ndarray, k: int) -> int:
    """Number of rows of ``scores`` [batch, classes] whose true class (``labels`` [batch]) is in the top k."""
    scores = np.asarray(scores)
    labels = np.asarray(labels).astype(np.int64)
    if scores.ndim != 2 or labels.shape != (scores.shape[0],):
        raise InvalidArgument(f"scores must be [batch, classes] and labels [batch]; got {scores.shape} and {labels.shape}")
    true = scores[np.arange(len(labels)), labels]
    higher = (scores > true[:, None]).sum(axis=1)
    return int(np.count_nonzero(higher < k))


class TopK:
    """Streaming top-1 / top-5 over batches."""

    def __init__(self, ks=(1, 5)):
        self.ks = tuple(ks)
        self.hits = dict.fromkeys(self.ks, 0)
        self.count = 0

    def update(self, scores, labels) -> None:
        for k in self.ks:
            self.hits[k] += topk_hits(scores, labels, k)
        self.count += len(labels)

    def result(self) -> dict:
        return {f"top{k}": (self.hits[k] / self.count if self.count else float("nan")) for k in self.ks}

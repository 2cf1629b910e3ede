"""Filter rearrangement that survives to deployment: policies, physical permutation, permutation record.

The reference sorts output filters by L1 norm only to choose its mask and never moves weights, so
the kept blocks stay scattered and no block-sparse kernel can use them. Here a *policy* decides one
permutation per channel group (:mod:`onexn_tf.channels`); every pruned layer of a group forms its
1×N blocks in that order; :func:`deployable` then permutes the stripped model physically (producer
kernels and biases, BatchNorm, depthwise convs, consumers' input channels; see
:func:`onexn_tf.deploy.deployable`), giving an ordinary
Keras model with the same outputs whose kept blocks are contiguous runs of N output channels.

Policies:
- ``"none"``: natural channel order everywhere.
- ``"reference"``: as the seed code: every pruned layer of a model without residual streams
  (MobileNetV1); in V2/V3 the layers whose own channels reach a depthwise conv or the final global
  pooling (expand convs and the last 1×1 conv), each by its own filter norms; projections (residual
  streams) and SE convs keep natural order. A V3 SE excitation conv, which multiplies an expand conv's
  channels, forms its blocks in the expand conv's order (the reference's natural-order mask there
  would be scattered by the physical permutation).
- ``"groups"``: every free group gets the order of its pruned producers' summed filter L1 norms, so
  residual projections are rearranged too.
Groups whose channels reach the model input/output or an unsupported layer are never permuted.
"""
from __future__ import annotations

import numpy as np

from onexn_tf.errors import InvalidArgument
from onexn_tf import channels, cloning, files, masks

from onexn_tf.options import REARRANGE_POLICIES as POLICIES  # re-exported
RECORD_FORMAT = "onexn-tf channel permutation record v1"


def resolve_policy(rearrange) -> str:
    """``True`` is the seed's ``--rearrange`` (``"reference"``); ``False``/``None`` is ``"none"``."""
    if rearrange is True:
        return "reference"
    if rearrange is False or rearrange is None:
        return "none"
    return masks.check_choice(rearrange, POLICIES, "rearrange")


def filter_l1(kernel: np.ndarray) -> np.ndarray:
    """L1 norm of every output filter (all axes but the last)."""
    kernel = np.asarray(kernel)
    return np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)


def _order(norms: np.ndarray) -> np.ndarray:
    return np.argsort(norms, kind="stable").astype(np.int32)


def policy_permutations(model, pruned, policy: str) -> dict[str, np.ndarray]:
    """Block order for each pruned layer of ``model`` under ``policy`` (layers left out: natural order).

    Computed from the weights ``model`` has now: load trained weights before pruning (as with tfmot).
    """
    policy = resolve_policy(policy)
    if policy == "none":
        return {}
    pruned = set(pruned)
    cmap = channels.analyze(model)
    kernels = {layer.name: layer.kernel.numpy() for layer in model.layers if layer.name in pruned}
    result = {}
    for group in cmap.groups:
        members = [p for p in group.producers if p in pruned]
        if not members or group.is_pinned:
            continue
        sources = members if policy == "groups" else [p for p in members if p in cmap.leads]
        if sources:
            perm = _order(sum(filter_l1(kernels[p]) for p in sources))
            result.update({p: perm for p in members})
    return result


def group_permutations(cmap: channels.ChannelMap, permutations: dict) -> dict[int, np.ndarray]:
    """Group index -> permutation, from per-layer permutations; refuses anything that breaks a group.

    Every producer of a group that gets a non-identity permutation must be given the same one.
    """
    known = {p for group in cmap.groups for p in group.producers}
    unknown = sorted(set(permutations) - known)
    if unknown:
        raise InvalidArgument(f"permutations name layers that produce no channel group of the model: {unknown}")
    result = {}
    for group in cmap.groups:
        given = {p: masks.check_permutation(permutations[p], group.channels)
                 for p in group.producers if p in permutations}
        if not given:
            continue
        distinct = {tuple(perm.tolist()) for perm in given.values()}
        if len(distinct) > 1:
            raise InvalidArgument(f"{group.describe()}: its producers {sorted(given)} have different permutations; "
                             "layers tied by a residual Add or SE Multiply must share one permutation")
        perm = next(iter(given.values()))
        if np.array_equal(perm, np.arange(group.channels)):
            continue
        missing = [p for p in group.producers if p not in given]
        if missing:
            raise InvalidArgument(f"a permutation of {sorted(given)} alone would break {group.describe()}: "
                             f"give the same permutation for {missing} too")
        if group.is_pinned:
            raise InvalidArgument(f"{group.describe()} cannot be permuted: its channels are {'; '.join(group.pinned)}")
        result[group.index] = perm
    return result


def _take(variable, perm, axis):
    if variable is not None:
        variable.assign(np.take(variable.numpy(), perm, axis=axis))


def apply_group_permutations(model, cmap: channels.ChannelMap, group_perms: dict[int, np.ndarray]):
    """A copy of ``model`` with each group's channels physically reordered (outputs unchanged)."""
    result = cloning.clone(model)
    layer = result.get_layer
    for index, perm in group_perms.items():
        group = cmap.groups[index]
        for name in group.producers:
            _take(layer(name).kernel, perm, -1)
            _take(getattr(layer(name), "bias", None), perm, 0)
        for name in group.per_channel:
            target = layer(name)
            if hasattr(target, "depthwise_kernel"):
                _take(target.depthwise_kernel, perm, 2)
                _take(target.bias if target.use_bias else None, perm, 0)
            else:
                for attr in ("gamma", "beta", "moving_mean", "moving_variance"):
                    _take(getattr(target, attr, None), perm, 0)
        for name in group.consumers:
            kernel = layer(name).kernel
            _take(kernel, perm, kernel.shape.rank - 2)  # Conv2D [kh, kw, C_in, C_out]; Dense [in, out]
    return result


def permutation_record(cmap: channels.ChannelMap, group_perms: dict[int, np.ndarray]) -> dict:
    """JSON-ready description: in the permuted model, channel j of a group holds original channel perm[j]."""
    groups = []
    for group in cmap.groups:
        perm = group_perms.get(group.index)
        groups.append({
            "index": group.index, "channels": group.channels, "producers": group.producers,
            "consumers": group.consumers, "per_channel": group.per_channel, "ties": group.ties,
            "pinned": group.pinned, "permuted": perm is not None,
            "perm": None if perm is None else perm.tolist(),
        })
    return {
        "format": RECORD_FORMAT,
        "meaning": "for each channel group, position j of the permuted model holds original channel perm[j] "
                   "(perm null: natural order); original channel c sits at argsort(perm)[c]",
        "groups": groups,
        "layer_group": {p: g["index"] for g in groups for p in g["producers"]},
    }


def permute_channels(model, permutations: dict):
    """Physically permute a (stripped) model by per-layer permutations; returns ``(model, record)``."""
    cmap = channels.analyze(model)
    group_perms = group_permutations(cmap, permutations)
    return apply_group_permutations(model, cmap, group_perms), permutation_record(cmap, group_perms)


def write_record(path, record: dict) -> None:
    files.write_json(path, record)

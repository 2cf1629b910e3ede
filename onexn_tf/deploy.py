"""From a 1×N-pruned training model to the model a deployment runs: stripped and physically permuted."""
from __future__ import annotations

from onexn_tf import channels, pruning, rearrange


def deployable(pruned_model):
    """Strip a 1×N-pruned model and permute it physically with its stored block orders.

    Returns ``(model, record)``: an ordinary Keras model with the pruned model's outputs in which
    every pruned kernel's kept blocks are contiguous runs of N output channels in natural order,
    and the permutation record. Unpruned producers of a group (e.g. a stem conv) follow its order.
    """
    stored = pruning.permutations(pruned_model)
    stripped = pruning.strip(pruned_model)
    cmap = channels.analyze(stripped)
    complete = {}
    for group in cmap.groups:
        given = {p: stored[p] for p in group.producers if p in stored}
        if not given:
            continue
        if len({tuple(perm.tolist()) for perm in given.values()}) > 1:
            raise ValueError(f"{group.describe()}: its pruned layers {sorted(given)} formed blocks in different "
                             "orders, so no single permutation makes all of them contiguous (prune with "
                             "rearrange='reference' or 'groups')")
        complete.update({p: next(iter(given.values())) for p in group.producers})
    group_perms = rearrange.group_permutations(cmap, complete)
    return (rearrange.apply_group_permutations(stripped, cmap, group_perms),
            rearrange.permutation_record(cmap, group_perms))

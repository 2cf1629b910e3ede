"""From a 1×N-pruned training model to the model a deployment runs: stripped and physically permuted."""
from __future__ import annotations

from onexn_tf import channels, pruning, rearrange
from onexn_tf.errors import InvalidArgument


def permute_by_block_orders(stripped, block_orders: dict):
    """Permute a stripped model by the block orders its pruned layers were masked in.

    ``block_orders`` maps pruned layer names to permutations (``onexn_tf.permutations(pruned)``, or
    an onexn-train job's ``permutations.json``). Pruned layers of one channel group must share their
    order; the group's other producers (e.g. an unpruned stem conv) follow it. Returns
    ``(model, record)``.
    """
    cmap = channels.analyze(stripped)
    complete = {}
    for group in cmap.groups:
        given = {p: block_orders[p] for p in group.producers if p in block_orders}
        if not given:
            continue
        if len({tuple(list(perm)) for perm in given.values()}) > 1:
            raise InvalidArgument(f"{group.describe()}: its pruned layers {sorted(given)} formed blocks in "
                                  "different orders, so no single permutation makes all of them contiguous "
                                  "(prune with rearrange='reference' or 'groups')")
        complete.update({p: next(iter(given.values())) for p in group.producers})
    group_perms = rearrange.group_permutations(cmap, complete)
    return (rearrange.apply_group_permutations(stripped, cmap, group_perms),
            rearrange.permutation_record(cmap, group_perms))


def deployable(pruned_model):
    """Strip a 1×N-pruned model and permute it physically with its stored block orders.

    Returns ``(model, record)``: an ordinary Keras model with the pruned model's outputs in which
    every pruned kernel's kept blocks are contiguous runs of N output channels in natural order,
    and the permutation record.
    """
    return permute_by_block_orders(pruning.strip(pruned_model), pruning.permutations(pruned_model))

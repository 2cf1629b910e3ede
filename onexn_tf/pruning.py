"""1×N pruning inside tfmot: a prunable wrapper, its mask logic, the public entry and strip.

The wrapper subclasses tfmot's ``PruneLowMagnitude`` so tfmot's ``UpdatePruningStep``,
``PruningSummaries`` and ``strip_pruning`` work unchanged, and swaps in a ``Pruning`` object whose
mask is 1×N-structured (tfmot's own ``block_size`` refuses conv kernels).

Unlike stock tfmot, the forward pass multiplies the kernel by the mask (as the reference does)
instead of overwriting the kernel variable every step: pruned weights get exactly zero gradient, so
no optimizer update of them can change the output, inference never writes variables, and the
kernel is also zeroed in place whenever the mask changes so checkpoints hold sparse weights.
"""
from __future__ import annotations

import inspect
import zlib
from collections.abc import Mapping

import numpy as np

from onexn_tf._keras import keras, tf  # first: TensorFlow starts there, quietly
from onexn_tf.errors import InvalidArgument
from onexn_tf import cloning, masks, rearrange as rearranging, schedules, selection
from tensorflow_model_optimization.python.core.keras import compat as tfmot_compat
from tensorflow_model_optimization.python.core.keras import utils as tfmot_utils
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_callbacks, pruning_impl, pruning_wrapper

UpdatePruningStep = pruning_callbacks.UpdatePruningStep
PruningSummaries = pruning_callbacks.PruningSummaries


def _true_variable(variable):
    """The float32 variable behind a mixed-precision ``AutoCastVariable``."""
    return getattr(variable, "_variable", variable)


class BlockPruning(pruning_impl.Pruning):
    """tfmot's ``Pruning`` with 1×N (or baseline) masks and a stored channel permutation."""

    def __init__(self, *, training_step_fn, pruning_vars, perm_vars, pruning_schedule, spec: masks.MaskSpec,
                 seed: tuple[int, int]):
        self._spec = spec
        self._seed = seed
        self._perm_vars = perm_vars
        super().__init__(training_step_fn=training_step_fn, pruning_vars=pruning_vars,
                         pruning_schedule=pruning_schedule, block_size=(1, 1), block_pooling_type="AVG")

    def _validate_block(self):
        """tfmot refuses block sizes on rank-4 kernels; our blocks are defined on conv kernels."""

    def new_masks(self, sparsity):
        """(mask, perm, threshold) for every pruned weight at ``sparsity``.

        The channel order is chosen the first time (stored permutation still unset, -1) and reused
        afterwards: blocks keep meaning the same channels, so a later update (a gradual schedule,
        or the one-shot step after :func:`update_masks`) prunes nested blocks instead of re-sorting
        filters whose pruned weights are already zero.
        """
        out = []
        for (weight, _, _), perm_var in zip(self._pruning_vars, self._perm_vars):
            kernel = tf.convert_to_tensor(_true_variable(weight))
            stored = tf.convert_to_tensor(perm_var)
            if self._spec.permutes:
                fresh = masks.filter_order_tf(kernel)
            else:
                fresh = tf.range(tf.shape(stored)[0], dtype=tf.int32)
            perm = tf.where(stored[0] >= 0, stored, fresh)
            out.append(masks.compute_mask_tf(kernel, sparsity, self._spec, perm=perm, seed=self._seed))
        return out

    def _assign_masks(self, sparsity, assign):
        ops = []
        for (weight, mask, threshold), perm_var, (new_mask, new_perm, new_threshold) in zip(
                self._pruning_vars, self._perm_vars, self.new_masks(sparsity)):
            weight = _true_variable(weight)
            ops += [assign(mask, tf.cast(new_mask, mask.dtype)),
                    assign(threshold, tf.cast(new_threshold, threshold.dtype)),
                    assign(perm_var, new_perm),
                    assign(weight, weight * tf.cast(new_mask, weight.dtype))]
        return tf.group(ops)

    @tf.autograph.experimental.do_not_convert
    def conditional_mask_update(self):
        """Recompute masks when the schedule says so (replica-safe, like tfmot's)."""
        should_prune, sparsity = self._pruning_schedule(self._step_fn())

        def update(assign):
            return tf.cond(should_prune, lambda: self._assign_masks(sparsity, assign), tf.no_op)

        context = tf.distribute.get_replica_context()
        if context is None or not tf.distribute.has_strategy():
            return update(tfmot_compat.assign)

        def cross_replica(distribution):
            return update(lambda var, value: distribution.extended.update(
                var, lambda v, x: tfmot_compat.assign(v, x), (value,)))

        return context.merge_call(cross_replica)

    def weight_mask_op(self):
        """weights *= mask on the true variables (mixed precision safe)."""
        return tf.group([tfmot_compat.assign(_true_variable(w), _true_variable(w) * tf.cast(m, w.dtype))
                         for w, m, _ in self._pruning_vars])


class _Unset(keras.initializers.Initializer):
    """-1 everywhere: no channel order chosen yet (see :meth:`BlockPruning.new_masks`)."""

    def __call__(self, shape, dtype=None, **kwargs):
        return -tf.ones(shape, dtype=dtype or tf.int32)


@keras.utils.register_keras_serializable(package="onexn_tf")
class Prune1xN(pruning_wrapper.PruneLowMagnitude):
    """tfmot pruning wrapper whose mask zeroes 1×N blocks (or a baseline pattern) of the kernel.

    Args:
      layer: a Conv2D or Dense layer.
      pruning_schedule: a tfmot ``PruningSchedule`` (default: one-shot at 50 %).
      n: block height N (output channels per block).
      criterion: ``block_l1`` | ``block_random`` | ``weight`` | ``filter``.
      partial: ``inside`` (blocks stay in one input channel; C_out % N trailing channels form a
        smaller block) or ``wrap`` (the reference's flattened blocks).
      rearrange: sort output filters by L1 norm before blocking; the order is kept in the
        ``permutation`` variable for physical permutation at deployment.
      seed: seed of ``block_random`` (combined with the layer name, so layers differ).
    """

    def __init__(self, layer, pruning_schedule=None, n=4, criterion="block_l1", partial="inside",
                 rearrange=False, seed=0, **kwargs):
        reason = selection.unprunable_reason(layer)
        if reason:
            raise InvalidArgument(reason)
        self.spec = masks.MaskSpec(n=n, criterion=criterion, partial=partial, rearrange=rearrange)
        if pruning_schedule is None:
            pruning_schedule = schedules.OneShotSparsity(0.5)
        if not isinstance(pruning_schedule, schedules.PruningSchedule):
            raise InvalidArgument(f"pruning_schedule={pruning_schedule!r} is not allowed: pass a tfmot PruningSchedule")
        for key in ("block_size", "block_pooling_type", "sparsity_m_by_n"):
            kwargs.pop(key, None)
        self.seed = int(seed)
        super().__init__(layer, pruning_schedule=pruning_schedule, **kwargs)
        self._name = f"prune_1xn_{layer.name}"

    def build(self, input_shape):
        super().build(input_shape)
        kernel = self.layer.kernel
        if len(self.prunable_weights) != 1 or self.prunable_weights[0] is not kernel:
            raise InvalidArgument(f"layer {self.layer.name!r}: expected its kernel to be its only prunable weight")
        c_in, c_out, _ = masks.kernel_dims(kernel.shape)
        if self.spec.partial == "wrap" and self.spec.criterion in masks.BLOCK_CRITERIA:
            masks.check_wrap(c_in, c_out, self.spec.n)  # fail at wrap time, not at the first mask update
        self.permutation = self.add_weight(
            "permutation", shape=[c_out], dtype=tf.int32, initializer=_Unset(), trainable=False,
            synchronization=tf.VariableSynchronization.ON_WRITE,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        seed = (self.seed, zlib.crc32(self.layer.name.encode()) & 0x7FFFFFFF)
        self.pruning_obj = BlockPruning(
            training_step_fn=lambda: self.pruning_step, pruning_vars=self.pruning_vars,
            perm_vars=[self.permutation], pruning_schedule=self.pruning_schedule, spec=self.spec, seed=seed)

    @tf.autograph.experimental.do_not_convert
    def call(self, inputs, training=None, **kwargs):
        if training is None:
            training = keras.backend.learning_phase()

        def training_updates():
            with tf.control_dependencies([tfmot_compat.assign(self.pruning_step, self.pruning_step + 1)]):
                # A bare Assert op (tfmot's assert_greater_equal builds a cond: slower to trace).
                with tf.control_dependencies([tf.raw_ops.Assert(
                        condition=self.pruning_step >= 1, data=[self._PRUNE_CALLBACK_ERROR_MSG])]):
                    return tf.group(self.pruning_obj.conditional_mask_update())

        self.add_update(tfmot_utils.smart_cond(training, training_updates, tf.no_op))

        weight, mask, _ = self.pruning_vars[0]
        dtype = self.layer.compute_dtype
        masked = tf.cast(_true_variable(weight), dtype) * tf.cast(mask, dtype)
        # Let the wrapped layer's own call() see the masked kernel; restore the variable afterwards.
        object.__setattr__(self.layer, "kernel", masked)
        try:
            if "training" in inspect.getfullargspec(self.layer.call).args:
                return self.layer.call(inputs, training=training, **kwargs)
            return self.layer.call(inputs, **kwargs)
        finally:
            object.__setattr__(self.layer, "kernel", weight)

    def get_config(self):
        config = super().get_config()
        for key in ("block_size", "block_pooling_type"):
            config.pop(key, None)
        config.update(n=self.spec.n, criterion=self.spec.criterion, partial=self.spec.partial,
                      rearrange=self.spec.rearrange, seed=self.seed)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["pruning_schedule"] = schedules.deserialize(config["pruning_schedule"])
        config["layer"] = keras.layers.deserialize(config.pop("layer"))
        return cls(**config)

    # -- eager helpers -------------------------------------------------------------------------
    def update_mask(self, sparsity=None):
        """Recompute the mask now (eagerly), at ``sparsity`` or the schedule's final sparsity."""
        if sparsity is None:
            sparsity = schedules.final_sparsity(self.pruning_schedule)
        sparsity = masks.check_sparsity(sparsity)
        self.pruning_obj._assign_masks(tf.constant(sparsity, tf.float32), tfmot_compat.assign)



def masked_weights(wrapper: pruning_wrapper.PruneLowMagnitude) -> list[np.ndarray]:
    """A tfmot wrapper's inner-layer weights with each pruned weight multiplied by its mask."""
    mask_of = {id(_true_variable(w)): m.numpy() for w, m, _ in wrapper.pruning_vars}
    return [w.numpy() * mask_of[id(w)] if id(w) in mask_of else w.numpy()
            for w in map(_true_variable, wrapper.layer.weights)]


def pruning_wrappers(model) -> list[Prune1xN]:
    """Every ``Prune1xN`` in ``model`` (nested models included), in model order."""
    return [layer for layer in pruning_wrapper.collect_prunable_layers(model) if isinstance(layer, Prune1xN)]


def _checked_schedule(schedule, what: str):
    if not isinstance(schedule, schedules.PruningSchedule):
        raise InvalidArgument(f"{what}={schedule!r} is not allowed: pass a tfmot PruningSchedule "
                              "(ConstantSparsity, PolynomialDecay, OneShotSparsity)")
    return schedule


def _per_layer(value) -> bool:
    return isinstance(value, Mapping) or (callable(value) and not isinstance(value, schedules.PruningSchedule))


def _layer_schedules(layers: dict, chosen: list[str], sparsity, pruning_schedule) -> dict:
    """Each chosen layer's schedule (a layer whose rate is 0 or None is left out): ``sparsity`` or
    ``pruning_schedule`` given once for all, per layer name (a mapping), or per layer (a callable)."""
    if sparsity is not None and pruning_schedule is not None:
        raise InvalidArgument("give either sparsity or pruning_schedule, not both")
    given, what = (pruning_schedule, "pruning_schedule") if pruning_schedule is not None else (sparsity, "sparsity")
    out = {}
    for name in chosen:
        if isinstance(given, Mapping):
            value = given.get(name)
        elif _per_layer(given):
            value = given(layers[name])
        else:
            value = given
        if what == "pruning_schedule":
            if value is not None:
                out[name] = _checked_schedule(value, f"pruning_schedule[{name!r}]" if _per_layer(given) else what)
            continue
        if value is None and given is None:
            value = 0.5
        if value is None:
            continue
        rate = masks.check_sparsity(value, f"sparsity[{name!r}]" if _per_layer(given) else "sparsity")
        if rate > 0:
            out[name] = schedules.OneShotSparsity(rate)
    return out


def _mapping_layers(model, mapping: Mapping, what: str, layer_filter) -> list[str]:
    """The layers a per-layer mapping names, checked against the model (every one must exist and be
    prunable)."""
    if layer_filter is not None:
        raise InvalidArgument(f"give the layers either as {what}'s keys or as layer_filter, not both")
    known = {layer.name for layer in selection.leaf_layers(model)}
    unknown = [name for name in mapping if name not in known]
    if unknown:
        prunable = selection.default_selection(model, full=True)
        raise InvalidArgument(f"{what} names layers that are not in model {model.name!r}: {unknown} (its prunable "
                              f"layers: {', '.join(prunable[:6])}{', ...' if len(prunable) > 6 else ''})")
    return list(mapping)


def prune_1xn(to_prune, *, n: int = 4, sparsity=None, pruning_schedule=None,
              criterion: str = "block_l1", rearrange: bool | str = False, partial: str = "inside",
              full: bool = False, layer_filter: selection.LayerFilter = None, seed: int = 0):
    """Wrap a model's (or one layer's) prunable layers for 1×N pruning during ``model.fit``.

    Give either ``sparsity`` (one-shot: the mask is computed at the first training step from the
    current weights and kept, as the reference does; default 0.5) or a tfmot ``pruning_schedule``
    (``ConstantSparsity``, ``PolynomialDecay``, :class:`OneShotSparsity`). Train with tfmot's
    ``UpdatePruningStep`` callback; finish with :func:`strip` (or :func:`onexn_tf.deploy.deployable`).

    Per-layer rates: ``sparsity={"layer": p, ...}`` prunes exactly the named layers, each at its own
    rate (the seed's ``pr_cfg``; a rate of 0 leaves a layer dense), and ``pruning_schedule`` takes a
    mapping of schedules the same way; either may also be a callable ``layer -> rate | schedule |
    None`` asked for each layer of the selection (None: not pruned).

    ``rearrange``: ``"none"`` (or False), ``"reference"`` (or True: the seed's ``--rearrange``) or
    ``"groups"`` (see :mod:`onexn_tf.rearrange`); block orders come from the weights the model has
    now, so load trained weights first. A single layer with ``rearrange`` sorts by its own filters.

    Layers: by default the reference's choice (every 1×1 conv, the classifier only with ``full``);
    ``layer_filter`` (callable or names) replaces it. A model is cloned with its weights copied; a
    single layer is wrapped in place.
    """
    spec = masks.MaskSpec(n=n, criterion=criterion, partial=partial)
    policy = rearranging.resolve_policy(rearrange)

    def wrap(layer, ordered, schedule):
        return Prune1xN(layer, pruning_schedule=schedule, n=spec.n, criterion=spec.criterion,
                        partial=spec.partial, rearrange=ordered, seed=seed)

    if isinstance(to_prune, keras.Model):
        cloning.check_graph_model(to_prune)
        if pruning_wrappers(to_prune):
            raise InvalidArgument(f"model {to_prune.name!r} is already pruned: strip it first")
        for given, what in ((sparsity, "sparsity"), (pruning_schedule, "pruning_schedule")):
            if isinstance(given, Mapping):
                layer_filter = _mapping_layers(to_prune, given, what, layer_filter)
        layers = {layer.name: layer for layer in selection.leaf_layers(to_prune)}
        selected = selection.select_layers(to_prune, full=full, layer_filter=layer_filter)
        schedule_of = _layer_schedules(layers, selected, sparsity, pruning_schedule)
        if not schedule_of:
            raise InvalidArgument(f"no layer of model {to_prune.name!r} is left to prune: every selected layer's rate "
                                  "is 0 or None")
        chosen = set(schedule_of)
        orders = {}
        if spec.criterion in masks.BLOCK_CRITERIA:
            orders = rearranging.policy_permutations(to_prune, chosen, policy)
        pruned = cloning.clone(to_prune, lambda layer: (
            layer.get_weights(),
            (lambda: wrap(cloning.fresh(layer), layer.name in orders, schedule_of[layer.name])) if layer.name in chosen
            else (lambda: cloning.fresh(layer))))
        for wrapper in pruning_wrappers(pruned):
            if wrapper.layer.name in orders:
                wrapper.permutation.assign(orders[wrapper.layer.name])
        return pruned
    if isinstance(to_prune, keras.layers.Layer):
        schedule_of = _layer_schedules({to_prune.name: to_prune}, [to_prune.name], sparsity, pruning_schedule)
        if to_prune.name not in schedule_of:
            raise InvalidArgument(f"layer {to_prune.name!r} gets no rate (0 or None, or missing from the mapping): "
                                  "nothing to prune")
        return wrap(to_prune, policy != "none", schedule_of[to_prune.name])
    raise InvalidArgument(f"to_prune={to_prune!r} is not allowed: pass a functional/Sequential keras.Model or a layer")


def strip(model):
    """An ordinary Keras model: masks applied to the kernels, wrappers removed, nothing shared."""
    if not isinstance(model, keras.Model):
        raise InvalidArgument(f"model={model!r} is not allowed: strip takes a keras.Model")

    def transform(layer):
        if isinstance(layer, pruning_wrapper.PruneLowMagnitude):
            return masked_weights(layer), lambda: cloning.fresh(layer.layer)
        return cloning.copy_layer(layer)

    return cloning.clone(model, transform)


def update_masks(model, sparsity: float | None = None) -> None:
    """Compute every wrapper's mask now (e.g. to evaluate or export a pruned model before training)."""
    wrappers = pruning_wrappers(model)
    if not wrappers:
        raise InvalidArgument(f"model {model.name!r} has no 1×N pruning wrappers: call prune_1xn first")
    for wrapper in wrappers:
        wrapper.update_mask(sparsity)


def permutation(wrapper: Prune1xN) -> np.ndarray:
    """Output-channel order the wrapper's blocks are formed in (identity before any mask)."""
    perm = wrapper.permutation.numpy()
    return np.arange(perm.size, dtype=perm.dtype) if perm[0] < 0 else perm


def permutations(model) -> dict[str, np.ndarray]:
    """Output-channel order each pruned layer's blocks were formed in, by wrapped layer name."""
    return {w.layer.name: permutation(w) for w in pruning_wrappers(model)}


def layer_masks(model) -> dict[str, np.ndarray]:
    """Current mask of every pruned layer, by wrapped layer name."""
    return {w.layer.name: w.pruning_vars[0][1].numpy() for w in pruning_wrappers(model)}

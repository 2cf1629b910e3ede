"""How much filter L1 survives 1×N pruning under each rearrangement policy ("none", "reference", "groups").

Rearranging groups filters of similar norm into one block, so pruning the lowest blocks throws away
less weight; the gain depends on how much filter norms differ. Each model is first trained briefly
(dense) on the bundled synthetic data; brief training leaves the norms nearly uniform (ImageNet-
trained nets differ far more), so each model is also measured after a function-preserving
reparametrisation: every pruned conv followed by a BatchNorm has its output filters scaled by
log-normal factors (sigma = --spread) and the BatchNorm statistics compensated, outputs unchanged.

Prints, per architecture, spread and policy: "norm CV" (mean coefficient of variation of the pruned
layers' filter L1 norms), the fraction of the pruned layers' total L1 the masks keep, the change
against "none", and how many layers keep more L1 than with "none".

    python benchmarks/rearrangement_l1.py [--archs mobilenet_v1 mobilenet_v2 ...] [--spread 0 0.5]
"""
from __future__ import annotations

import argparse

import numpy as np

import onexn_tf
from onexn_tf._keras import keras
from training.synthetic import make_images


def train_briefly(arch, args):
    keras.utils.set_random_seed(args.seed)
    model = onexn_tf.models.build(arch, alpha=args.alpha, input_shape=(args.size, args.size, 3), classes=4)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    x, y = make_images(args.samples, classes=4, size=args.size, seed=args.seed)
    x = onexn_tf.models.preprocess_input(arch)(x.astype("float32"))
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(x, y, batch_size=32, epochs=args.epochs, verbose=0)
    return model, history.history["accuracy"][-1]


def spread_filter_norms(model, sigma, seed):
    """A copy of ``model`` with each BN-followed pruned conv's filters scaled by exp(N(0, sigma)) and the
    BatchNorm compensated (mean * s, var * s^2 + (s^2 - 1) eps): the same function, varied norms."""
    copy = onexn_tf.cloning.clone(model)
    if sigma == 0:
        return copy
    rng = np.random.default_rng(seed)
    for name in onexn_tf.models.prunable_layers(copy):
        conv = copy.get_layer(name)
        after = [node.outbound_layer for node in conv._outbound_nodes]
        if len(after) != 1 or not isinstance(after[0], keras.layers.BatchNormalization):
            continue
        bn = after[0]
        scale = np.exp(rng.normal(0.0, sigma, conv.kernel.shape[-1])).astype("float32")
        conv.kernel.assign(conv.kernel.numpy() * scale)
        if conv.use_bias:
            conv.bias.assign(conv.bias.numpy() * scale)
        bn.moving_mean.assign(bn.moving_mean.numpy() * scale)
        bn.moving_variance.assign(bn.moving_variance.numpy() * scale**2 + (scale**2 - 1) * bn.epsilon)
    return copy


def filter_norm_spread(model, names):
    """Mean over layers of the coefficient of variation of output-filter L1 norms."""
    cvs = []
    for name in names:
        norms = onexn_tf.rearrange.filter_l1(model.get_layer(name).kernel.numpy())
        cvs.append(norms.std() / norms.mean())
    return float(np.mean(cvs))


def kept_l1(model, policy, args):
    pruned = onexn_tf.prune_1xn(model, n=args.n, sparsity=args.sparsity, rearrange=policy)
    onexn_tf.update_masks(pruned)
    per_layer, kept_total, total = {}, 0.0, 0.0
    for wrapper in onexn_tf.pruning_wrappers(pruned):
        kernel = np.abs(wrapper.layer.kernel.numpy())  # zeroed in place by the mask
        original = np.abs(model.get_layer(wrapper.layer.name).kernel.numpy())
        per_layer[wrapper.layer.name] = kernel.sum() / original.sum()
        kept_total += kernel.sum()
        total += original.sum()
    return kept_total / total, per_layer


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="+", default=list(onexn_tf.models.ARCHITECTURES))
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--spread", type=float, nargs="+", default=[0.0, 0.5],
                   help="sigma of the log-normal filter rescaling (0: as trained)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    print(f"1x{args.n} at p={args.sparsity}, alpha={args.alpha}, {args.size}px, dense-trained {args.epochs} epochs "
          f"on {args.samples} synthetic images")
    print(f"{'architecture':20s} {'acc':>5s} {'sigma':>5s} {'norm CV':>7s} {'policy':>10s} {'kept L1':>8s} "
          f"{'vs none':>8s} {'layers better':>14s}")
    for arch in args.archs:
        trained, accuracy = train_briefly(arch, args)
        for sigma in args.spread:
            model = spread_filter_norms(trained, sigma, args.seed)
            base_total, base_layers = kept_l1(model, "none", args)
            spread = filter_norm_spread(model, base_layers)
            for policy in onexn_tf.rearrange.POLICIES:
                total, layers = (base_total, base_layers) if policy == "none" else kept_l1(model, policy, args)
                better = sum(layers[name] > base_layers[name] + 1e-9 for name in layers)
                print(f"{arch:20s} {accuracy:5.3f} {sigma:5.2f} {spread:7.3f} {policy:>10s} {total:8.4f} "
                      f"{total - base_total:+8.4f} {better:>6d}/{len(layers):<7d}", flush=True)


if __name__ == "__main__":
    main()

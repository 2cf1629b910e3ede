"""Training-step cost of the 1×N pruning wrapper: pruned / dense `model.fit` step time.

One process, models interleaved round by round (dense, mask update every step, every 100 steps) so
machine noise hits all of them alike. Per-step wall times come from a Keras callback; the first
epoch of each model (tracing) is discarded. Prints medians, means and the ratios to dense.

    python benchmarks/train_step_overhead.py [--arch mobilenet_v2 --alpha 0.35 --size 96 ...]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

import onexn_tf
from onexn_tf._keras import keras, tf


class StepTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []
        self._start = None

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def make_model(args, frequency):
    keras.utils.set_random_seed(0)
    model = onexn_tf.models.build(args.arch, alpha=args.alpha, input_shape=(args.size, args.size, 3), classes=10)
    if frequency:
        model = onexn_tf.prune_1xn(model, n=args.n, rearrange=True, pruning_schedule=onexn_tf.ConstantSparsity(
            args.sparsity, begin_step=0, frequency=frequency))
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy())
    optimizer.build(model.trainable_variables)
    return model


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="mobilenet_v2", choices=onexn_tf.models.ARCHITECTURES)
    p.add_argument("--alpha", type=float, default=0.35)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--steps", type=int, default=50, help="steps per model per round")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (args.batch * 8, args.size, args.size, 3)).astype("float32")
    y = rng.integers(0, 10, args.batch * 8)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(args.batch).repeat().prefetch(2)
    variants = {"dense": 0, "pruned, mask update every step": 1, "pruned, mask update every 100 steps": 100}
    models = {name: make_model(args, freq) for name, freq in variants.items()}
    timers = {name: StepTimer() for name in variants}
    callbacks = {name: [timers[name]] + ([onexn_tf.UpdatePruningStep()] if variants[name] else [])
                 for name in variants}
    for name, model in models.items():  # warm-up: tracing and the first mask update
        model.fit(data, steps_per_epoch=5, epochs=1, verbose=0, callbacks=callbacks[name])
        timers[name].times.clear()
    for r in range(args.rounds):
        for name, model in models.items():
            model.fit(data, steps_per_epoch=args.steps, epochs=1, verbose=0, callbacks=callbacks[name])
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    dense = statistics.median(timers["dense"].times)
    dense_mean = statistics.mean(timers["dense"].times)
    rows = []
    print(f"\n{args.arch} alpha={args.alpha} {args.size}px batch={args.batch}, 1x{args.n} p={args.sparsity}, "
          f"{args.rounds}x{args.steps} steps per model, {len(tf.config.list_logical_devices('CPU'))} CPU device(s)")
    print(f"{'variant':38s} {'median ms':>10s} {'mean ms':>9s} {'median ratio':>13s} {'mean ratio':>11s}")
    for name, timer in timers.items():
        med, mean = statistics.median(timer.times), statistics.mean(timer.times)
        rows.append({"variant": name, "median_ms": med * 1e3, "mean_ms": mean * 1e3,
                     "median_ratio": med / dense, "mean_ratio": mean / dense_mean, "steps": len(timer.times)})
        print(f"{name:38s} {med * 1e3:10.1f} {mean * 1e3:9.1f} {med / dense:13.3f} {mean / dense_mean:11.3f}")
    if args.json:
        onexn_tf.files.write_json(args.json, {"config": vars(args), "results": rows})


if __name__ == "__main__":
    main()

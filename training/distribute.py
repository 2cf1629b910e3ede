"""Choosing a tf.distribute strategy: one device, MirroredStrategy on one machine, or MultiWorkerMirrored.

Multi-worker training reads the cluster from ``TF_CONFIG`` (set on every machine before starting the
same ``onexn-train`` command), e.g. on worker 0 of two:

    TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'

Worker 0 is the chief: it alone writes the job's final artifacts; Keras' checkpoint callbacks handle
the other workers. ``--train-batch-size`` is the global batch, split across all replicas.
"""
from __future__ import annotations

from onexn_tf._keras import tf
from onexn_tf.cli import UsageError
from training.options import STRATEGIES, check_cluster  # noqa: F401 (re-exported)


def _split_cpu(count: int) -> None:
    """Expose the CPU as ``count`` logical devices (tests of distribution on a machine without GPUs)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError as error:
        raise UsageError(f"cannot split the CPU into {count} devices after TensorFlow started: {error}") from None


def make_strategy(name: str = "auto", *, gpus=None, logical_cpus: int = 0):
    if logical_cpus > 1:
        _split_cpu(logical_cpus)
    available = tf.config.list_physical_devices("GPU")
    if gpus:
        missing = [g for g in gpus if g >= len(available)]
        if missing:
            raise UsageError(f"--gpus {' '.join(map(str, gpus))}: this machine has {len(available)} GPU(s); "
                             f"no GPU {missing}")
    if name == "auto":
        name = "mirrored" if (gpus and len(gpus) > 1) or len(available) > 1 else "default"
    if name == "default":
        if gpus:
            return tf.distribute.OneDeviceStrategy(f"/gpu:{gpus[0]}")
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if gpus:
            devices = [f"/gpu:{g}" for g in gpus]
        elif available:
            devices = None  # all GPUs
        else:
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    check_cluster()
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy) -> bool:
    """True where the job's final artifacts are written: single-machine runs, the chief task, or worker 0
    of a cluster without a chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief
